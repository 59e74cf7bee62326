"""The ImageNet zoo models have torchvision's state_dict: every key and shape, written here from the
architectures' definitions (He et al. 2016; Sandler et al. 2018; Simonyan and Zisserman 2015), the
parameter counts of torchvision's model cards, and a forward pass at 224x224."""
import math

import pytest
import torch

import factorch as fc
from factorch.io import load_into


def bn(name, c):
    return [(f"{name}.weight", (c,)), (f"{name}.bias", (c,)), (f"{name}.running_mean", (c,)),
            (f"{name}.running_var", (c,)), (f"{name}.num_batches_tracked", ())]


def resnet_table(blocks, bottleneck, classes=1000):
    """torchvision's ResNet: stem, four stages of blocks (widths 64..512), projection shortcuts on
    the first block of a stage whose shape changes, the head."""
    rows = [("conv1.weight", (64, 3, 7, 7)), *bn("bn1", 64)]
    c = 64
    for stage, (width, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for j in range(n):
            p = f"layer{stage}.{j}"
            convs = [(1, c, width), (3, width, width), (1, width, 4 * width)] if bottleneck else \
                [(3, c, width), (3, width, width)]
            for k, (size, c_in, c_out) in enumerate(convs, start=1):
                rows += [(f"{p}.conv{k}.weight", (c_out, c_in, size, size)), *bn(f"{p}.bn{k}", c_out)]
            out = convs[-1][2]
            if j == 0 and (stage > 1 or c != out):
                rows += [(f"{p}.downsample.0.weight", (out, c, 1, 1)), *bn(f"{p}.downsample.1", out)]
            c = out
    return rows + [("fc.weight", (classes, c)), ("fc.bias", (classes,))]


def mobilenet_v2_table(classes=1000):
    """torchvision's MobileNet-V2: Sandler et al. 2018, Table 2, with torchvision's module indices."""
    rows = [("features.0.0.weight", (32, 3, 3, 3)), *bn("features.0.1", 32)]
    c, i = 32, 1
    for t, width, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                           (6, 160, 3, 2), (6, 320, 1, 1)):
        for _ in range(n):
            p, hidden = f"features.{i}.conv", c * t
            if t == 1:
                rows += [(f"{p}.0.0.weight", (hidden, 1, 3, 3)), *bn(f"{p}.0.1", hidden),
                         (f"{p}.1.weight", (width, hidden, 1, 1)), *bn(f"{p}.2", width)]
            else:
                rows += [(f"{p}.0.0.weight", (hidden, c, 1, 1)), *bn(f"{p}.0.1", hidden),
                         (f"{p}.1.0.weight", (hidden, 1, 3, 3)), *bn(f"{p}.1.1", hidden),
                         (f"{p}.2.weight", (width, hidden, 1, 1)), *bn(f"{p}.3", width)]
            c, i = width, i + 1
    rows += [("features.18.0.weight", (1280, 320, 1, 1)), *bn("features.18.1", 1280)]
    return rows + [("classifier.1.weight", (classes, 1280)), ("classifier.1.bias", (classes,))]


def vgg16_table(batch_norm, classes=1000):
    """torchvision's VGG-16 (configuration D): a conv takes 2 indices of ``features`` (3 with BN), a pool 1."""
    rows, c, i = [], 3, 0
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            i += 1
            continue
        rows += [(f"features.{i}.weight", (v, c, 3, 3)), (f"features.{i}.bias", (v,))]
        if batch_norm:
            rows += bn(f"features.{i + 1}", v)
        c, i = v, i + (3 if batch_norm else 2)
    for k, (c_in, c_out) in zip((0, 3, 6), ((25088, 4096), (4096, 4096), (4096, classes))):
        rows += [(f"classifier.{k}.weight", (c_out, c_in)), (f"classifier.{k}.bias", (c_out,))]
    return rows


TABLES = {
    "resnet18": (lambda: resnet_table((2, 2, 2, 2), False), 11_689_512),
    "resnet50": (lambda: resnet_table((3, 4, 6, 3), True), 25_557_032),
    "mobilenet_v2": (mobilenet_v2_table, 3_504_872),
    "vgg16_imagenet": (lambda: vgg16_table(False), 138_357_544),
    "vgg16_bn_imagenet": (lambda: vgg16_table(True), 138_365_992),
}


@pytest.mark.parametrize("name", list(TABLES))
def test_state_dict_keys_shapes_and_parameter_counts_are_torchvisions(name):
    table, params = TABLES[name]
    with torch.device("meta"):  # shapes only: no memory for VGG-16's 138M parameters
        model = fc.models.create(name, num_classes=1000)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == table()
    assert sum(p.numel() for p in model.parameters()) == params
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(math.prod(shape) for k, shape in table() if not k.endswith(buffers)) == params


@pytest.mark.parametrize("name,macs", [("resnet18", 1_814_073_344), ("resnet50", 4_089_184_256),
                                       ("mobilenet_v2", 300_774_272)])
def test_forward_at_224_and_macs(name, macs):
    model = fc.models.create(name, num_classes=1000).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)
    assert fc.count(model, x).macs == macs  # torchvision's model cards: 1.81, 4.09, 0.30 GMACs (v1.5 ResNet-50)


def test_other_classes_and_channels():
    model = fc.models.create("resnet18", num_classes=7, in_channels=1).eval()
    assert model.conv1.weight.shape == (64, 1, 7, 7) and model.fc.weight.shape == (7, 512)
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 7)  # global pooling: any size from 32x32


def test_a_torchvision_state_dict_file_loads(tmp_path):
    """A state_dict laid out as torchvision's (here: built from the table) loads with --weights' loader."""
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(shape, generator=generator) if shape else torch.tensor(3))
             for k, shape in mobilenet_v2_table()}
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(state, path)
    model, _ = load_into(fc.models.create("mobilenet_v2", num_classes=1000), str(path))
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())


def test_the_zoo_resnet50_needs_no_torchvision(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` raises ImportError now
    assert {"resnet18", "resnet50", "mobilenet_v2"} <= set(fc.models.list_models())
    assert sum(p.numel() for p in fc.models.create("resnet50", num_classes=1000).parameters()) == 25_557_032
