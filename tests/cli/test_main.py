"""The factorch command line: the round trip, and one clear error line (exit 2) for bad input."""
import subprocess
import sys

import pytest
import torch

import factorch as fc
from factorch.cli.main import run

pytestmark = pytest.mark.usefixtures("one_thread")  # decompositions: LAPACK on a shared machine


def test_decompose_count_reconstruct_round_trip(tmp_path, capsys):
    small, dense = tmp_path / "small.pt", tmp_path / "dense.pt"
    assert run(["decompose", "--model", "resnet20", "--rank", "0.5", "--exclude", "conv1", "-o", str(small)]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "excluded by filter_fn" in out and "wrote" in out
    assert run(["count", str(small), "--total"]) == 0
    params_small = sum(p.numel() for p in fc.load(small).parameters())
    assert f"{params_small:,} params" in capsys.readouterr().out
    assert run(["reconstruct", str(small), "-o", str(dense)]) == 0
    a, b = fc.load(small).eval(), fc.load(dense).eval()
    x = torch.randn(2, 3, 32, 32)
    assert (a(x) - b(x)).abs().max() < 1e-4
    assert sum(p.numel() for p in b.parameters()) == 269_722


def test_rank_multiple_puts_budget_ranks_on_the_grid(tmp_path, capsys):
    out = tmp_path / "small.pt"
    assert run(["decompose", "--model", "resnet20", "--rank", "budget:macs=0.5", "--rank-multiple", "8",
                "-o", str(out)]) == 0
    layers = [m for m in fc.load(out).modules() if isinstance(m, fc.layers.FactorizedLayer)]
    assert len(layers) >= 6
    channels = [m.out_channels for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Conv2d)]
    # every factor's channel count (resnet20: 16-64 channels); 3: the stem's full input rank
    assert all(c % 8 == 0 or c == 3 for c in channels) and channels.count(3) <= 1, channels


def test_model_with_weights(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    torch.save(fc.models.create("resnet20").state_dict(), weights)
    out = tmp_path / "o.pt"
    assert run(["decompose", "--model", "resnet20", "--weights", str(weights), "--method", "cp,svd",
                "--rank", "0.2", "-o", str(out)]) == 0
    assert isinstance(fc.load(out).layer1[0].conv1, fc.layers.CPConv2d)


@pytest.mark.parametrize("argv,match", [
    (["decompose", "--model", "nope", "-o", "{tmp}/x.pt"], "unknown model"),
    (["decompose", "--model", "resnet20", "--method", "foo", "-o", "{tmp}/x.pt"], "unknown method"),
    (["decompose", "--model", "resnet20", "--rank", "0", "-o", "{tmp}/x.pt"], ">= 1"),
    (["decompose", "--model", "resnet20", "--rank", "-3", "-o", "{tmp}/x.pt"], ">= 1"),
    (["decompose", "--model", "resnet20", "--method", "tucker2", "--rank", "999,999", "-o", "{tmp}/x.pt"],
     "exceeds the full rank"),
    (["decompose", "--model", "resnet20", "--rank", "lots", "-o", "{tmp}/x.pt"], "not understood"),
    (["decompose", "--model", "resnet20", "--rank", "energy:2", "-o", "{tmp}/x.pt"], "threshold"),
    (["decompose", "--model", "resnet20", "--rank-multiple", "0", "-o", "{tmp}/x.pt"],
     "Tucker2 multiple must be an int >= 1"),
    (["decompose", "--model", "resnet20", "-o", "{tmp}/no/dir/x.pt"], "does not exist"),
    (["count", "{tmp}/missing.pt"], "does not exist"),
    (["count", "{tmp}/corrupt.pt"], "not a torch checkpoint"),
    (["count", "{tmp}/pickled.pt"], "needs code"),
    (["count", "{tmp}/foreign.pt"], "not a factorch checkpoint"),
    (["count", "--model", "resnet20", "--weights", "{tmp}/foreign.pt"], "do not fit"),
    (["count"], "give a CHECKPOINT or --model"),
    (["decompose", "--model", "vgg-small", "--calibration", "nope", "-o", "{tmp}/x.pt"], "unknown dataset 'nope'"),
    (["decompose", "--model", "vgg-small", "--calibration", "digits", "--calibration-batches", "0", "-o", "{tmp}/x.pt"],
     "--calibration-batches must be >= 1, got 0"),
    (["decompose", "--model", "vgg-small", "--calibration", "digits", "--in-channels", "3", "-o", "{tmp}/x.pt"],
     "calibration batch 0 has shape (128, 1, 16, 16); expected (B, 3, 16, 16) like example_input"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, argv, match):
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "foreign.pt")
    assert run([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0]
    assert not (tmp_path / "x.pt").exists()


def test_decompose_with_calibration_data(tmp_path, capsys):
    """--calibration DATASET: data-aware factors checked on held-out batches; --model takes the data
    set's channels and size (digits: 1 x 16 x 16)."""
    torch.manual_seed(0)
    out = tmp_path / "small.pt"
    assert run(["decompose", "--model", "vgg-small", "--method", "tucker2,svd", "--rank", "0.25",
                "--calibration", "digits", "--calibration-batches", "4", "--calibration-batch-size", "16",
                "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "out.err data-aware/weight-only" in text and "calibration: 3 batch(es) (48 samples) fitted, 1 (16) held out, " \
        "sequential" in text
    model = fc.load(out)
    assert model.features[0].in_channels == 1 and model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)


def test_nan_weights_write_nothing(tmp_path, capsys):
    state = fc.models.create("resnet20").state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    out = tmp_path / "out.pt"
    assert run(["decompose", "--model", "resnet20", "--weights", str(tmp_path / "nan.pt"),
                "--rank", "0.5", "-o", str(out)]) == 2
    assert "NaN" in capsys.readouterr().err and not out.exists()


def test_entry_point_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "factorch", "count", str(tmp_path / "nope.pt")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
