"""Calibration statistics and bad calibration input: streaming equals one-shot, the positions a conv
reads, no labels needed, damping instead of NaN, one clear error with the model untouched."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import factorch as fc
from factorch.calibration import Calibration, Whitening, collect
from factorch.decompositions.whitening import damped_cholesky

pytestmark = pytest.mark.usefixtures("one_thread")


def _model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 1, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(12, 12, 3, groups=3), nn.Flatten(), nn.LazyLinear(6))


def _built():
    model = _model()
    model(torch.zeros(1, 3, 9, 9))  # materialise the lazy Linear
    return model.double()


def _snapshot(model):
    return {n: t.clone() for n, t in model.state_dict().items()}, [type(m) for m in model.modules()]


def _same(model, snap):
    state, types = snap
    return types == [type(m) for m in model.modules()] and all(
        torch.equal(model.state_dict()[n], t) or torch.isnan(t).any() for n, t in state.items())


def test_streaming_statistics_equal_one_shot_and_read_the_right_vectors():
    """Summed batch by batch == over one concatenated batch; a 1x1 conv's vectors are exactly the
    pixels it reads (padding, stride: an identity 1x1 conv reads them); a grouped conv's blocks
    are its groups'; a Linear's are its input rows."""
    torch.manual_seed(0)
    model = _built()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    xs = [torch.randn(b, 3, 9, 9, dtype=torch.float64) for b in (3, 1, 4)]
    streamed, order = collect(model, xs, layers)
    once, _ = collect(model, [torch.cat(xs)], layers)
    assert order == ["0", "2", "4", "6"]
    for name in layers:
        assert streamed[name].rows == once[name].rows
        assert torch.allclose(streamed[name].total, once[name].total, rtol=1e-12, atol=1e-12)
    x = torch.cat(xs)
    inputs = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: inputs.__setitem__(n, a[0])) for n, m in layers.items()]
    model(x)
    for h in hooks:
        h.remove()
    ident = nn.Conv2d(8, 8, 1, stride=2, padding=1, bias=False).double()
    with torch.no_grad():
        ident.weight.copy_(torch.eye(8)[:, :, None, None])
    read = ident(inputs["2"]).permute(0, 2, 3, 1).reshape(-1, 8)  # the pixels the strided, padded 1x1 reads
    assert once["2"].rows == len(read) and torch.allclose(once["2"].total[0], read.T @ read, rtol=1e-12)
    grouped = inputs["4"].permute(0, 2, 3, 1).reshape(-1, 3, 4)  # (pixels, group, channel)
    for k in range(3):
        assert torch.allclose(once["4"].total[k], grouped[:, k].T @ grouped[:, k], rtol=1e-12)
    rows = inputs["6"]
    assert torch.allclose(once["6"].total[0], rows.T @ rows, rtol=1e-12)
    assert once["6"].total.shape == (1, rows.shape[1], rows.shape[1])  # bounded by the layer, not the batches


def test_no_labels_needed():
    """(x, y) tuples give exactly what plain inputs give; y is never read."""
    torch.manual_seed(0)
    state = _built().state_dict()
    xs = [torch.randn(6, 3, 9, 9, dtype=torch.float64) for _ in range(4)]
    reports = []
    for batches in (xs, [(x, "not a label") for x in xs], [[x, None, {"extra": 1}] for x in xs]):
        model = _built()
        model.load_state_dict(state)
        reports.append(fc.decompose_(model, [fc.Tucker2(2), fc.SVD(2)], calibration=batches))
    for r in reports[1:]:
        assert [(x.factors, x.output_error_data_aware, x.error) for x in r.rows] == \
            [(x.factors, x.output_error_data_aware, x.error) for x in reports[0].rows]


def test_dead_channels_and_few_samples_are_damped_and_reported_never_nan():
    torch.manual_seed(0)
    c = torch.randn(5, 8, dtype=torch.float64)
    c = c.T @ c  # rank 5 of 8: fewer samples than channels
    c[2, :] = c[:, 2] = 0.0  # a dead channel
    s, lam = damped_cholesky(c, 0.0)
    assert lam > 0 and bool(torch.isfinite(s).all())
    assert torch.allclose(s @ s.T, c + lam * c.diagonal().mean() * torch.eye(8, dtype=c.dtype), atol=1e-12)
    s0, lam0 = damped_cholesky(c + torch.eye(8, dtype=c.dtype), 0.0)  # positive definite: not damped
    assert lam0 == 0.0 and torch.allclose(s0 @ s0.T, c + torch.eye(8, dtype=c.dtype))
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    xs = [torch.randn(3, 8, dtype=torch.float64) * torch.tensor([1.0, 1, 0, 1, 1, 1, 1, 1]) for _ in range(2)]
    report = fc.decompose_(model, fc.SVD(2), calibration=Calibration(xs, damping=0.0))
    first = report.rows[0]
    assert "1 dead input channel(s)" in first.note and "3 calibration vectors < 8 inputs" in first.note
    assert "damping raised" in first.note
    for row in report.rows:
        assert row.output_error_data_aware == row.output_error_data_aware  # not NaN
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_a_layer_whose_inputs_are_all_zero_keeps_weight_only_factors_with_a_note():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3)).double()
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.fill_(-1.0)
    xs = [torch.rand(4, 8, dtype=torch.float64) for _ in range(4)]  # positive: ReLU gives all zeros
    report = fc.plan(model, fc.SVD(2), calibration=xs)
    row = report.rows[1]
    assert row.factors == "weight-only" and row.output_error_data_aware is None
    assert "all-zero inputs on the calibration batches; weight-only factors" in row.note


@pytest.mark.parametrize("calibration,match", [
    ([], "calibration is an empty list"),
    ({"x": 1}, "calibration takes a list of batches, got a dict"),
    ([torch.randn(4, 3, 9, 9), "x"], "calibration batch 1 is a str"),
    ([torch.randn(1, 3, 9, 9)], "at least 2 samples"),
    ([torch.randn(4, 3, 9, 9), torch.randn(4, 3, 8, 9)], r"batch 1 has shape \(4, 3, 8, 9\); expected \(B, 3, 9, 9\)"),
    ([torch.randn(4, 3, 9, 9), torch.full((2, 3, 9, 9), float("nan"))], "batch 1 has NaN or Inf"),
    ([torch.randn(4, 5, 9, 9)] * 2, r"calibration examples of shape \(5, 9, 9\) \(batch dimension aside\) do "
                                    r"not fit the model"),
    ([torch.randn(8, 5, 9, 9)], r"calibration examples of shape \(5, 9, 9\)"),  # split 6 + 2: the user's shape
    ([torch.empty(4, 4, 8, 8, device="meta")] * 2, "calibration batch 0 is on the meta device: it holds no values"),
])
def test_bad_calibration_is_one_error_and_the_model_is_untouched(calibration, match):
    model = _built()
    snap = _snapshot(model)
    for verb in (fc.decompose_, fc.plan):
        with pytest.raises(ValueError, match=match) as e:
            verb(model, [fc.Tucker2(2), fc.SVD(2)], calibration=calibration)
        assert "\n" not in str(e.value)
        assert _same(model, snap)


def test_shapes_are_checked_against_example_input():
    model = _built()
    with pytest.raises(ValueError, match=r"batch 0 has shape \(4, 3, 8, 8\); expected \(B, 3, 9, 9\) like example_input"):
        fc.plan(model, fc.SVD(2), example_input=torch.zeros(1, 3, 9, 9, dtype=torch.float64),
                calibration=[torch.randn(4, 3, 8, 8)] * 2)


def test_nan_activations_name_the_layer_and_leave_the_model_untouched():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        model[0].bias[3] = float("inf")
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="the inputs of layer '2' have NaN or Inf values"):
        fc.decompose_(model, fc.SVD(2), filter_fn=lambda m, n: n == "2", calibration=[torch.randn(4, 4)] * 3)
    assert _same(model, snap)


@pytest.mark.parametrize("kwargs,match", [
    (dict(damping=-1e-3), "damping must be a number in"), (dict(damping=1.0), "damping must be a number in"),
    (dict(sequential="yes"), "sequential must be True or False"),
])
def test_calibration_config_is_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Calibration([torch.zeros(2, 3)], **kwargs)


def test_from_scratch_and_calibration_exclude_each_other():
    with pytest.raises(ValueError, match="from_scratch layers are freshly initialised"):
        fc.plan(_built(), fc.SVD(2), from_scratch=True, calibration=[torch.randn(4, 3, 9, 9)] * 2)


def test_split_holds_out_the_last_quarter_or_a_quarter_of_one_batch():
    xs = [torch.full((2, 1), float(i)) for i in range(9)]
    fit, held = Calibration(xs).split()
    assert [int(x[0, 0]) for x in held] == [7, 8] and len(fit) == 7
    fit, held = Calibration(xs[:3]).split()
    assert len(held) == 1 and len(fit) == 2
    fit, held = Calibration(torch.arange(10.0)[:, None]).split()  # one tensor = one batch, split by samples
    assert held[0].flatten().tolist() == [8.0, 9.0] and len(fit[0]) == 8


def test_whitening_of_a_group_with_zero_inputs_is_the_identity():
    stats = collect(nn.Sequential(conv := nn.Conv2d(4, 4, 3, groups=2).double()),
                    [torch.cat([torch.randn(3, 2, 5, 5), torch.zeros(3, 2, 5, 5)], 1).double()], {"0": conv})[0]
    w = Whitening.of(stats["0"], 1e-6)
    assert torch.equal(w.factor[1], torch.eye(2, dtype=torch.float64)) and "group 1 has all-zero inputs" in w.note


def test_one_1x1_conv_reads_its_padding_mode():
    """A reflect-padded 1x1 conv reads real pixel copies at the border: they are counted."""
    conv = nn.Conv2d(2, 2, 1, padding=1, padding_mode="reflect").double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    stats = collect(nn.Sequential(conv), [x], {"0": conv})[0]["0"]
    read = F.pad(x, (1, 1, 1, 1), mode="reflect").permute(0, 2, 3, 1).reshape(-1, 2)
    assert stats.rows == 36 and torch.allclose(stats.total[0], read.T @ read)


@pytest.mark.parametrize("conv,shape", [
    (nn.Conv1d(4, 6, 1, stride=2, padding=1), (4, 9)),
    (nn.Conv3d(4, 6, 1, stride=(1, 2, 2), padding=(0, 1, 1), groups=2), (4, 3, 5, 4)),
    (nn.Conv1d(4, 6, 3, groups=2), (4, 9)),
    (nn.Conv3d(4, 6, 3, padding=1), (4, 3, 5, 4)),
    (nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1), (4, 9)),
    (nn.ConvTranspose3d(4, 6, 1, stride=2, groups=2), (4, 3, 2, 4)),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "x".join(map(str, v)))
def test_a_conv_of_any_dimensionality_reads_its_input_pixels(conv, shape):
    """A plain pointwise conv: the pixels it reads (padded, at its stride), as an identity pointwise
    conv of the same geometry reads them; any other conv, transposed ones included: every input pixel;
    per group."""
    torch.manual_seed(0)
    conv = conv.double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    stats, _ = collect(nn.Sequential(conv), [x], {"0": conv})
    if math.prod(conv.kernel_size) == 1 and not conv.transposed:
        ident = type(conv)(4, 4, 1, conv.stride, conv.padding, bias=False).double()
        with torch.no_grad():
            ident.weight.copy_(torch.eye(4).reshape(4, 4, *(1,) * len(conv.kernel_size)))
        x = ident(x)
    vectors = x.movedim(1, -1).reshape(-1, conv.groups, 4 // conv.groups)  # (pixels, group, channel)
    assert stats["0"].rows == len(vectors)
    for k in range(conv.groups):
        assert torch.allclose(stats["0"].total[k], vectors[:, k].T @ vectors[:, k], rtol=1e-12)
