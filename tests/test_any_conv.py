"""Any conv in: 1-D, 2-D, 3-D and transposed convs through the whole path (labels, nominal shapes, the
first-conv rule, memory format, decompose_/reconstruct_ on audio, video and UNet-like models, the
report's costs against fc.count) and checkpoints that name the 2-D-only classes of before."""
import copy

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.io import read_checkpoint
from factorch.layers.conv_spec import CONVS
from factorch.registry import candidate, layer_label, nominal_shape
from factorch.selection import layer_filter
from factorch.surgery import swap, walk
from factorch.training.loop import uses_channels_last

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("module,label", [
    (nn.Conv2d(16, 32, 3, stride=2, groups=4), "conv3x3 16->32 s2 g4"),
    (nn.Conv2d(16, 32, (3, 1), stride=(2, 1)), "conv3x1 16->32 s(2,1)"),
    (nn.Conv1d(16, 32, 5), "conv1d k5 16->32"),
    (nn.Conv3d(16, 32, 3, stride=(1, 2, 2)), "conv3d 3x3x3 16->32 s(1,2,2)"),
    (nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), "convT2d 4x4 64->32 s2"),
    (nn.ConvTranspose1d(8, 4, 1, groups=2), "convT1d k1 8->4 g2"),
    (nn.ConvTranspose3d(8, 4, 2, stride=2), "convT3d 2x2x2 8->4 s2"),
    (nn.Linear(512, 10), "linear 512->10"),
])
def test_layer_labels_name_every_conv(module, label):
    assert layer_label(module) == label


def test_nominal_shapes_follow_the_dimensionality():
    assert nominal_shape(nn.Conv1d(4, 8, 3)) == (4, 32)
    assert nominal_shape(nn.Conv2d(4, 8, 3)) == (4, 32, 32)
    assert nominal_shape(nn.ConvTranspose3d(4, 8, 3)) == (4, 32, 32, 32)
    assert nominal_shape(nn.Conv1d(4, 8, 9, dilation=5)) == (4, 41)


@pytest.mark.parametrize("first", [nn.Conv1d(3, 8, 3), nn.Conv3d(3, 8, 3), nn.ConvTranspose2d(3, 8, 3)],
                         ids=lambda m: type(m).__name__)
def test_the_first_conv_of_any_dimensionality_is_left_dense(first):
    model = nn.Sequential(nn.Linear(3, 3), first, nn.Conv2d(8, 8, 3))
    keep = layer_filter(False, (), model)
    assert [name for name, m in walk(model) if keep(m, name)] == ["0", "2"]
    assert all(keep(m, name) for name, m in walk(model)) is False and layer_filter(True, (), model)(first, "1")


def test_channels_last_stays_for_2d_convs_only():
    assert uses_channels_last(None, nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 3, 2)), "cpu")
    for model in (nn.Sequential(nn.Conv1d(3, 8, 3)), nn.Sequential(nn.Conv3d(3, 8, 3)),
                  nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv3d(8, 8, 1))):  # 5-D weights: no channels_last layout
        assert not uses_channels_last(None, model, "cpu")


def audio_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(1, 16, 9, stride=4, padding=4), nn.ReLU(), nn.Conv1d(16, 32, 5, padding="same"),
                         nn.ReLU(), nn.Conv1d(32, 32, 3, stride=2, padding=1, groups=2), nn.ReLU(),
                         nn.Conv1d(32, 48, 1), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(48, 10))


def video_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(3, 16, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3)), nn.ReLU(),
                         nn.Conv3d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv3d(16, 32, (1, 3, 3), stride=(1, 2, 2),
                                                                              padding=(0, 1, 1)),
                         nn.ReLU(), nn.Conv3d(32, 24, 1), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(24, 5))


def unet_like() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.ReLU(),
                         nn.ConvTranspose2d(16, 16, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
                         nn.ConvTranspose2d(16, 8, 1), nn.Conv2d(8, 2, 1))


MODELS = [(audio_net, (1, 256)), (video_net, (3, 4, 16, 16)), (unet_like, (3, 12, 10))]


@pytest.mark.parametrize("make,shape", MODELS, ids=["audio-conv1d", "video-conv3d", "unet-convT2d"])
def test_any_model_decomposes_counts_and_reconstructs(make, shape):
    """Tucker-2 + SVD at half the parameters: every conv but the first (and the head) is decomposed; the report's
    MACs are fc.count's; at full rank the model's output is unchanged (fp64, 1e-10); reconstruct_
    gives dense convs of the original types back, lossless."""
    torch.manual_seed(0)
    dense = make().double().eval()
    x = torch.randn(2, *shape, dtype=torch.float64)
    methods = [fc.Tucker2(0.5), fc.SVD(0.5)]
    model = copy.deepcopy(dense)
    report = fc.decompose_(model, methods, filter_fn=layer_filter(False, (), model), example_input=x, min_share=0)
    weighted = [n for n, m in walk(dense) if isinstance(m, (*CONVS, nn.Linear))]
    assert [r.name for r in report.decomposed] == weighted[1:]
    counted = fc.count(model, x)
    for row in report.decomposed:
        assert counted.under(row.name)[1] == row.macs_after
    full = copy.deepcopy(dense)  # the same classes at full rank, built directly (decompose_ skips no-saving ranks)
    replacements = {}
    for row in report.decomposed:
        module = full.get_submodule(row.name)
        found = candidate(next(m for m in methods if m.name == row.method), module)
        replacements[row.name] = found.layer_cls.from_dense_at(module, found.space(module).full, **found.options)
    swap(full, replacements)
    with torch.no_grad():
        ref = dense(x)
        assert float((full(x) - ref).abs().max() / ref.abs().max()) < 1e-10
        out = model(x)
        fc.reconstruct_(model)
        assert [type(m) for m in model.modules()] == [type(m) for m in dense.modules()]
        assert float((model(x) - out).abs().max()) < 1e-10


def test_checkpoints_naming_the_2d_classes_load(tmp_path):
    """A checkpoint written before the layers were N-d names ``TuckerConv2d``, ``Tucker3Conv2d``,
    ``CPConv2d``, ``SVDConv2d``, ``TTConv2d``, with the same configs and tensor names (CP's
    ``vertical``/``horizontal``): it loads into the N-d classes, outputs unchanged."""
    torch.manual_seed(0)

    def make():
        return nn.Sequential(*(nn.Conv2d(8, 8, k, padding=k // 2) for k in (3, 3, 3, 1, 3, 3)))

    model = make().eval()
    fc.decompose_(model, {"0": fc.Tucker2(2), "1": fc.Tucker3(2), "2": fc.CP(2), "3": fc.SVD(2), "4": fc.TT(2),
                          "5": fc.TT(2, conv_order="conventional")}, min_share=0)
    fc.save(model, tmp_path / "new.pt")
    ckpt = read_checkpoint(tmp_path / "new.pt")
    old_keys = {"in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
                "padding_mode"}
    for entry in ckpt["factorized"]:
        assert set(entry["config"]) - {"in_shape", "out_shape", "order"} == old_keys
        entry["class"] += "2d"  # TuckerConv -> TuckerConv2d, ...
    assert {"2.vertical.weight", "2.horizontal.weight"} <= set(ckpt["state_dict"])
    torch.save(ckpt, tmp_path / "old.pt")
    loaded = fc.load(tmp_path / "old.pt", model=make()).eval()
    assert [type(m) for m in loaded] == [type(m) for m in model]
    x = torch.randn(2, 8, 6, 5)
    assert torch.equal(loaded(x), model(x))
