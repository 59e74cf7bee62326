"""Rank sweeps: every column filled, errors name the valid choices, the PNG is written."""
import math
from dataclasses import asdict, fields

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.layers.base import FactorizedLayer
from factorch.measure.plots import sweep_panels
from factorch.measure.sweep import SweepRow, check_sweep, sweep

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1),
                                      nn.ReLU())
        self.classifier = nn.Linear(24, 4)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def fake_clock(module, run):
    run()
    return 1e-3 if isinstance(module, FactorizedLayer) else 3e-3


def test_sweep_fills_every_column():
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(32, 3, 8, 8)
    y = model(x).argmax(1)  # labels the dense model gets right: accuracy 1.0
    evaluate = lambda m: float((m.eval()(x).argmax(1) == y).float().mean())
    tuned = []
    rows = sweep(model, ["features.2"], ["cp", "tucker2"], [2, 4, 8], example_input=x[:1], evaluate=evaluate,
                 finetune=lambda m: tuned.append(m), finetune_epochs=1,
                 profiler=fc.Profiler(warmup=0, runs=1, batch=4, timer=fake_clock), calibration=list(x.split(8)))
    assert [(r.method, r.rank) for r in rows] == [(m, r) for m in ("cp", "tucker2") for r in (2, 4, 8)]
    assert len(tuned) == 6 and all(m is not model for m in tuned)  # fine-tuned copies, one per point
    assert isinstance(model.features[2], nn.Conv2d)  # the model itself is untouched
    for r in rows:
        for f in fields(SweepRow):
            v = getattr(r, f.name)
            assert v is not None and not (isinstance(v, float) and math.isnan(v)), (r, f.name)
        assert r.note == "" and r.accuracy_dense == 1.0 and r.speedup == pytest.approx(3.0) and r.batch == 4
        assert r.param_reduction == pytest.approx(r.params_dense / r.params_factorized)
        assert r.params_dense == 16 * 24 * 9 + 24 and 0 < r.error < 1
        assert r.factors in ("data-aware", "weight-only")  # which one: tests/calibration/test_safety.py
        assert r.accuracy_drop_data_aware == pytest.approx(1.0 - r.accuracy_data_aware)
    for method in ("cp", "tucker2"):  # the error falls as the rank grows
        errs = [r.error for r in rows if r.method == method]
        assert errs == sorted(errs, reverse=True)
    tucker8 = rows[-1]
    assert tucker8.ranks == "8x8" and tucker8.params_factorized == 16 * 8 + 9 * 8 * 8 + 8 * 24 + 24


def test_point_that_would_not_reduce_macs_is_noted_not_measured():
    model = Tiny()
    rows = sweep(model, ["features.0"], ["tucker2", "cp"], {"tucker2": [16], "cp": [27]},
                 example_input=torch.zeros(1, 3, 8, 8), evaluate=lambda m: 0.5,
                 profiler=fc.Profiler(warmup=0, runs=1, timer=fake_clock))
    tucker, cp = rows
    assert tucker.note.startswith("not decomposed: ranks (16, 3) do not reduce MACs: 27,648 -> 44,608")
    assert cp.note.startswith("not decomposed: rank 27 is above 16, the largest worth computing here")
    assert math.isnan(tucker.speedup) and math.isnan(cp.speedup)


@pytest.mark.parametrize("layers,methods,ranks,match", [
    (["features.9"], ["cp"], [2], "has no layer 'features.9'; conv/linear layers: features.0, features.2, classifier"),
    (["features.1"], ["cp"], [2], "ReLU, not a conv/linear"),
    (["features.2"], ["cp"], [], "rank list for cp is empty"),
    (["features.2"], ["cp", "tucker2"], {"cp": [2]}, "rank list for tucker2 is empty"),
    (["features.2"], ["cp"], {"cp": [2], "tucker2": [2]}, "ranks are given for method 'tucker2', which is not swept"),
    ([], ["cp"], [2], "no layer"),
    (["features.2"], [], [2], "choose from " + ", ".join(sorted(fc.Method.by_name))),
    (["features.2"], ["tt9"], [2], "unknown method 'tt9'; choose from " + ", ".join(sorted(fc.Method.by_name))),
    (["features.2"], ["cp"], [0], ">= 1"),
    (["features.2"], ["svd"], [2], "svd cannot decompose layer 'features.2': 3x3 conv: SVD handles 1x1 convs only"),
])
def test_bad_grid_is_one_clear_error(layers, methods, ranks, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        check_sweep(Tiny(), layers, methods, ranks)


def test_sweep_panels_png(tmp_path):
    model = Tiny()
    rows = sweep(model, ["features.2"], ["cp"], [2, 4], example_input=torch.zeros(1, 3, 8, 8),
                 evaluate=lambda m: 0.5, profiler=fc.Profiler(warmup=0, runs=1, timer=fake_clock))
    out = sweep_panels([asdict(r) for r in rows], tmp_path / "s.png", title="tiny")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="does not exist"):
        sweep_panels([asdict(r) for r in rows], tmp_path / "no" / "s.png")
    assert not list(tmp_path.glob(".*tmp*"))


def test_capped_rank_is_swept_at_the_capped_ranks_and_noted():
    """An int rank above a mode's full rank follows the resolver: capped there and noted, never an
    error. Two ints that cap to the same ranks are both kept (one row per requested point), each noted."""
    model = Tiny()
    assert [r for _, _, r in check_sweep(model, ["features.0"], ["tucker2"], [4, 5, 40, 80])] == [4, 5, 40, 80]
    rows = sweep(model, ["features.0"], ["tucker2"], [2, 4, 40, 80], example_input=torch.randn(1, 3, 8, 8),
                 evaluate=lambda m: 0.5, profiler=fc.Profiler(warmup=0, runs=1, timer=fake_clock))
    assert [(r.rank, r.ranks) for r in rows] == [(2, "2x2"), (4, "4x3"), (40, "16x3"), (80, "16x3")]
    assert rows[0].note == "" and rows[0].params_factorized is not None
    capped = rows[1]  # conv 3->16: in has full rank 3; (4, 3) still reduces MACs, so it is measured
    assert capped.params_factorized == 3 * 3 + 9 * 3 * 4 + 4 * 16 + 16 and capped.speedup == pytest.approx(3.0)
    assert capped.note == "rank 4 capped at the full ranks (out 16, in 3)"
    for r in rows[2:]:  # full ranks: no fewer MACs, so not measured; both rows kept, each noting its cap
        assert r.note.startswith("not decomposed: ranks (16, 3) do not reduce MACs") and math.isnan(r.speedup)
        assert r.note.endswith(f"rank {r.rank} capped at the full ranks (out 16, in 3)")


def test_rank_list_per_method():
    points = check_sweep(Tiny(), ["features.2"], ["cp", "tucker2"], {"cp": [8, 64], "tucker2": [2, 4]})
    assert [(m.name, m.rank, r) for _, m, r in points] == [("cp", 8, 8), ("cp", 64, 64), ("tucker2", 2, 2),
                                                            ("tucker2", 4, 4)]


def test_cli_sweep_on_a_tiny_model_writes_every_column(tmp_path, capsys):
    """End to end on scikit-learn's bundled digits: 64 test / 64 training examples, one epoch."""
    import csv

    from factorch.cli.main import run

    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    fc.save(fc.models.create("resnet20", num_classes=10, in_channels=1), ckpt)
    out = tmp_path / "sweep"
    assert run(["sweep", "--checkpoint", str(ckpt), "--dataset", "digits", "--layers", "layer3.0.conv2",
                "--method", "cp,tucker2", "--ranks", "cp=4,8", "--ranks", "tucker2=4,8", "--finetune-epochs", "1",
                "--test-subset", "64", "--train-subset", "64", "--data-batch", "32", "--batch", "2", "--runs", "1",
                "--warmup", "0", "--threads", "1", "--calibration-batches", "2", "--calibration-batch-size", "16",
                "-o", str(out)]) == 0
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["method"], r["rank"]) for r in rows] == [("cp", "4"), ("cp", "8"), ("tucker2", "4"), ("tucker2", "8")]
    for r in rows:
        empty = [k for k, v in r.items() if v in ("", "nan") and k != "note"]
        assert not empty, empty
        assert r["finetune_epochs"] == "1" and r["device"].startswith("cpu")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "sweep.md").read_text()
    assert "- command: `factorch sweep --checkpoint" in md and "| layer3.0.conv2 | tucker2 | 8 | 8x8 |" in md
    assert "acc data-aware %" in md and "calibration: 1 batch(es) (16 samples) fitted, 1 (16) held out" in md
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--layers", "layer9.conv1", "--method", "cp", "--ranks", "4"], "has no layer 'layer9.conv1'; conv/linear layers: conv1"),
    (["--layers", "conv1", "--method", "cp", "--ranks", ","], "rank list for cp is empty"),
    (["--layers", "layer1.0.conv1", "--method", "tucker2", "--ranks", "8,0"], ">= 1"),
    (["--layers", "layer1.0.conv1", "--method", "cpx", "--ranks", "4"], "unknown method 'cpx'; choose from"),
    (["--layers", "layer1.0.conv1", "--method", "cp", "--ranks", "svd=4"], "ranks are given for method 'svd'"),
    (["--layers", "conv1", "--method", "cp", "--ranks", "4", "-o", "{tmp}/no/s"], "does not exist"),
    (["--layers", "conv1", "--method", "cp", "--ranks", "4", "--dataset", "nope"], "unknown dataset"),
])
def test_cli_sweep_bad_input(tmp_path, capsys, argv, match):
    from factorch.cli.main import run

    base = ["sweep", "--model", "resnet20", "--dataset", "digits", "-o", str(tmp_path / "s")]
    assert run(base + [a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert not list(tmp_path.iterdir())
