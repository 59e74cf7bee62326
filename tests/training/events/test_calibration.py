"""Calibration in training: the decomposition event and ADMM's final
decomposition fit their factors to training batches (``calibration_batches``), drawn without
moving the run's RNG, so a resumed run decomposes exactly as an uninterrupted one."""
import re
import shutil

import torch

import factorch as fc
import factorch.training.run as run_module
from factorch.cli.main import run
from factorch.training import TrainConfig, train
from factorch.training.events import ADMMPhase, Decompose, RunContext
from factorch.distributed import Distributed

BASE = dict(model="lenet5", dataset="digits", subset=192, batch_size=32, lr=0.05)
METHODS = (fc.Tucker2(0.4), fc.SVD(0.3))
DROP = ("epoch_seconds", "train_seconds", "event_seconds", "eval_seconds", "time")


def _plain(rows):
    return [{k: v for k, v in r.items() if k not in DROP} for r in rows]


def _reports(monkeypatch):
    """Every decomposition report the run's events make, as they make them."""
    seen = []
    log_change = run_module._log_change

    def logging(log, epoch, change, acc, params):
        seen.append(change.report)
        return log_change(log, epoch, change, acc, params)

    monkeypatch.setattr(run_module, "_log_change", logging)
    return seen


def test_decompose_event_fits_to_training_batches(tmp_path, monkeypatch):
    seen = _reports(monkeypatch)
    aware = train(TrainConfig(**BASE, epochs=2, events=(Decompose(1, methods=METHODS, calibration_batches=2),)), tmp_path / "a", log=lambda s: None)
    plain = train(TrainConfig(**BASE, epochs=2, events=(Decompose(1, methods=METHODS),)), tmp_path / "b", log=lambda s: None)
    calibrated, weight_only = seen
    assert {r.factors for r in calibrated.decomposed} <= {"data-aware", "weight-only"}
    assert any(r.factors == "data-aware" for r in calibrated.decomposed)
    assert all(r.factors is None for r in weight_only.decomposed)
    assert "1 batch(es) (32 samples) fitted, 1 (32) held out" in calibrated.calibration  # what it used
    # the first (dense) epoch is untouched by drawing the calibration batches: same data, same RNG
    assert _plain(aware)[0] == _plain(plain)[0]
    assert aware[1]["train_loss"] != plain[1]["train_loss"]


def test_calibration_batches_are_the_same_whenever_drawn():
    data = fc.data.load("digits", train=True, subset=192, augment=True, seed=0)
    ctx = RunContext(torch.nn.Identity(), torch.zeros(1, 1, 8, 8), Distributed(), print, data, batch_size=32)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = ctx.calibration(3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG did not move
    torch.manual_seed(2)
    second = ctx.calibration(3)
    assert [b.shape for b in first] == [torch.Size([32, 1, 16, 16])] * 3
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert ctx.calibration(0) is None


def test_resume_after_a_calibrated_decomposition_is_exact(tmp_path, monkeypatch, kept_checkpoints):
    cfg = TrainConfig(**BASE, epochs=3, events=(Decompose(1, methods=METHODS, calibration_batches=2),))
    kept = kept_checkpoints
    clean = train(cfg, tmp_path / "clean", log=lambda s: None)
    monkeypatch.undo()
    for k in (1, 2):  # before the decomposition (it runs again) and after it
        d = tmp_path / f"from{k}"
        d.mkdir()
        shutil.copy(kept / f"epoch{k}.pt", d / "checkpoint.pt")
        assert _plain(train(cfg, d, resume=True, log=lambda s: None)) == _plain(clean), k
        a, b = (fc.load(p / "model.pt").state_dict() for p in (tmp_path / "clean", d))
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), k


def test_admm_final_decomposition_is_calibrated_at_the_fixed_ranks(tmp_path, monkeypatch):
    seen = _reports(monkeypatch)
    cfg = TrainConfig(**BASE, epochs=3, events=(ADMMPhase(until=2, rho=0.05, methods=METHODS, calibration_batches=2),))
    train(cfg, tmp_path / "run", log=lambda s: None)
    (report,) = seen
    expected = {r.name: r.ranks for r in fc.plan(fc.models.create("lenet5", 10, 1), list(METHODS),
                                                 filter_fn=lambda m, n: n != "conv1").decomposed}
    assert {r.name: r.ranks for r in report.decomposed} == expected
    assert any(r.factors == "data-aware" for r in report.decomposed)


def test_bad_calibration_batches_is_one_error_line(tmp_path, capsys):
    code = run(["train", "--model", "lenet5", "--subset", "32", "--epochs", "2", "--decompose-at", "1",
                "--calibration-batches", "-1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(r"calibration.batches", err[-1]), err
    assert not (tmp_path / "r").exists()
