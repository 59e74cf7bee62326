"""save/load: round trips, no pickled code, clear errors, nothing half-written."""
import os
import re

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.io import CheckpointError
from factorch.layers import TuckerConv2d

pytestmark = pytest.mark.usefixtures("one_thread")  # HOOI on random weights: many small LAPACK calls


def _decomposed(name="resnet20"):
    model = fc.models.create(name).eval()
    fc.decompose_(model, [fc.Tucker2(0.4), fc.SVD(0.5)])
    return model


def test_round_trip_registry_model(tmp_path):
    model = _decomposed()
    path = tmp_path / "small.pt"
    fc.save(model, path)
    loaded = fc.load(path).eval()
    x = torch.randn(2, 3, 32, 32)
    assert isinstance(loaded.layer1[0].conv1, TuckerConv2d)
    assert loaded.layer1[0].conv1.ranks == model.layer1[0].conv1.ranks
    assert torch.equal(loaded(x), model(x))


def test_round_trip_custom_model_into_fresh_copy(tmp_path):
    def make():
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.Flatten(), nn.LazyLinear(4))

    model = make()
    model(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
    fc.decompose_(model, fc.Tucker2((8, 8)), filter_fn=lambda m, n: n == "2")
    path = tmp_path / "custom.pt"
    fc.save(model, path)
    with pytest.raises(CheckpointError, match=r"stores no architecture .*pass --model NAME\|pkg.module:function"):
        fc.load(path)
    fresh = make()
    fresh(torch.zeros(1, 3, 8, 8))
    loaded = fc.load(path, model=fresh)
    assert isinstance(loaded[2], TuckerConv2d) and isinstance(fresh[2], nn.Conv2d)  # fresh untouched
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), model(x))


def test_pickled_module_is_refused_without_running_code(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError, match="needs code to load"):
        fc.load(path)


class Boom:
    """Unpickling this would run code; the loader must never get that far."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "factorch", "x": Boom()}, path)
    with pytest.raises(CheckpointError, match="needs code to load"):
        fc.load(path)


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    (b"not a checkpoint", "not a torch checkpoint"),
])
def test_missing_and_corrupt(tmp_path, content, match):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        fc.load(path)


def test_truncated_and_foreign(tmp_path):
    good = tmp_path / "good.pt"
    fc.save(_decomposed(), good)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        fc.load(bad)
    foreign = tmp_path / "sd.pt"
    torch.save(fc.models.create("resnet20").state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a factorch checkpoint"):
        fc.load(foreign)


def test_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "m.pt"
    fc.save(_decomposed(), path)
    with pytest.raises(CheckpointError, match="does not have"):
        fc.load(path, model=fc.models.create("vgg11"))
    with pytest.raises(CheckpointError, match="does not match"):
        fc.load(path, model=fc.models.create("resnet20", num_classes=5))


def test_failed_save_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "out.pt"
    path.write_bytes(b"old")

    def broken(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        fc.save(_decomposed(), path)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt"]
    with pytest.raises(ValueError, match="does not exist"):
        fc.save(_decomposed(), tmp_path / "no" / "dir.pt")


CRAFT = """
import resource, sys, torch
import factorch as fc

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

good, classes, features = sys.argv[1:4]
fc.load(good)  # the legitimate load sets the baseline of the peak
for path, model in ((classes, None), (features, None), (features, fc.models.create("lenet5", in_channels=1))):
    before = peak_mb()
    try:
        fc.load(path, model=model)
    except fc.CheckpointError as e:
        print(f"{peak_mb() - before:.0f}|{e}")
    else:
        print("loaded")
"""


def test_crafted_sizes_are_refused_before_allocating(tmp_path):
    """A small file declaring 4M classes, or a factorized layer of 25M input features, is refused
    by comparing the declared structure (built on the meta device) with the tensors present:
    the peak memory does not grow by the 1 GB that building it would take."""
    import subprocess
    import sys

    model = fc.models.create("lenet5", in_channels=1)
    fc.decompose_(model, fc.SVD(5), filter_fn=lambda m, name: name == "fc1")
    good = tmp_path / "good.pt"
    fc.save(model, good)
    ckpt = torch.load(good, weights_only=True)
    ckpt["arch"]["num_classes"] = 4_000_000  # an 84 x 4M classifier: 1.3 GB
    torch.save(ckpt, tmp_path / "classes.pt")
    ckpt = torch.load(good, weights_only=True)
    assert ckpt["factorized"][0]["class"] == "SVDLinear"
    ckpt["factorized"][0]["config"]["in_features"] = 25_000_000  # a 5 x 25M factor: 500 MB
    torch.save(ckpt, tmp_path / "features.pt")
    assert (tmp_path / "classes.pt").stat().st_size < 400_000
    proc = subprocess.run([sys.executable, "-c", CRAFT, str(good), str(tmp_path / "classes.pt"),
                           str(tmp_path / "features.pt")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3 and all("|" in line for line in lines), lines
    for line, match in zip(lines, [r"fc3\.\S+ \(10, 84\) vs \(4000000, 84\)", "does not match the checkpoint's SVDLinear",
                                   "does not match the checkpoint's SVDLinear"]):
        grown, message = line.split("|", 1)
        assert int(grown) < 100, line  # MB
        assert re.search(match, message), message


def test_malformed_architecture_and_ranks(tmp_path):
    model = fc.models.create("lenet5", in_channels=1)
    fc.decompose_(model, fc.SVD(5), filter_fn=lambda m, name: name == "fc1")
    path = tmp_path / "m.pt"
    fc.save(model, path)
    for key, value, match in (("arch", {"name": "resnet20", "num_classes": 4e6, "in_channels": 3}, "class and channel counts"),
                              ("arch", {"name": "resnet20"}, "malformed architecture"),
                              ("arch", {"name": "nope", "num_classes": 10, "in_channels": 1}, "unknown model")):
        ckpt = torch.load(path, weights_only=True)
        ckpt[key] = value
        torch.save(ckpt, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match=match):
            fc.load(tmp_path / "bad.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["factorized"][0]["rank"] = 7
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="malformed ranks 7"):
        fc.load(tmp_path / "bad.pt")
