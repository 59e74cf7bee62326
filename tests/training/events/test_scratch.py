"""--factorized-from-scratch: the run factorizes before its first step with fresh factors (no
decomposition of the dense init), trains them, resumes exactly, and refuses rank rules that read
trained weights before anything is written."""
import json
import re
import shutil

import pytest
import torch

import factorch as fc
from factorch.cli.main import run
from factorch.layers.base import FactorizedLayer
from factorch.training import TrainConfig, train
from factorch.training.events import Decompose, FromScratch

BASE = dict(model="lenet5", dataset="digits", subset=160, batch_size=32, lr=0.05)


def _factorized(model):
    return {n: (type(m).__name__, m.ranks) for n, m in model.named_modules() if isinstance(m, FactorizedLayer)}


@pytest.mark.parametrize("methods", [(fc.Tucker2((4, 3)), fc.SVD(8)), (fc.Tucker3(0.3), fc.TT(4)),
                                     (fc.CP(6), fc.SVD(fc.Budget(params=0.3)))],
                         ids=["tucker2-svd", "tucker3-tt", "cp-budget"])
def test_run_is_factorized_before_the_first_step(tmp_path, methods):
    cfg = TrainConfig(**BASE, epochs=2, events=(FromScratch(methods=methods),))
    history = train(cfg, tmp_path / "run", log=lambda s: None)
    assert history[0]["event"]["kind"] == "decompose" and history[1]["event"] is None
    model = fc.load(tmp_path / "run" / "model.pt")
    layers = _factorized(model)
    # every layer but the first conv (left dense by default) is factorized, at the same ranks as a
    # from-scratch decompose_ of a new model gives
    expected = fc.models.create("lenet5", 10, 1)
    report = fc.decompose_(expected, list(methods), filter_fn=lambda m, n: n != "conv1",
                           example_input=torch.zeros(1, 1, 16, 16), from_scratch=True)
    assert history[0]["event"]["layers"] == [r.name for r in report.decomposed] == list(layers)
    assert layers == _factorized(expected)
    assert history[0]["params"] == sum(p.numel() for p in expected.parameters())
    assert all(r["params"] == history[0]["params"] for r in history)


def test_fresh_factors_are_not_a_decomposition_of_the_dense_init(tmp_path):
    """The same seed with decompose_at=0 decomposes the dense init; from scratch initialises the
    factors directly: different weights, both factorized at the same ranks."""
    methods = (fc.Tucker2((4, 3)), fc.SVD(8))
    scratch = train(TrainConfig(**BASE, epochs=1, events=(FromScratch(methods=methods),)), tmp_path / "a",
                    log=lambda s: None)
    decomposed = train(TrainConfig(**BASE, epochs=1, events=(Decompose(0, methods=methods),)), tmp_path / "b",
                       log=lambda s: None)
    a, b = fc.load(tmp_path / "a" / "model.pt"), fc.load(tmp_path / "b" / "model.pt")
    assert _factorized(a) == _factorized(b) and scratch[0]["params"] == decomposed[0]["params"]
    assert scratch[0]["train_loss"] != decomposed[0]["train_loss"]


def test_cli_trains_from_scratch(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["train", "--model", "lenet5", "--subset", "96", "--batch-size", "32", "--method", "tucker3,svd",
                "--rank", "0.25", "--factorized-from-scratch", "--epochs", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["event"]["kind"] == "decompose"
    kinds = {t for t, _ in _factorized(fc.load(out / "model.pt")).values()}
    assert kinds == {"Tucker3Conv", "SVDLinear"}
    assert "fresh" in capsys.readouterr().out  # the report: no approximation error for fresh layers


def test_resume_after_the_first_epoch_is_exact(tmp_path, monkeypatch, kept_checkpoints):
    cfg = TrainConfig(**BASE, epochs=2, events=(FromScratch(methods=(fc.Tucker2(0.3), fc.SVD(0.3))),))
    clean = train(cfg, tmp_path / "clean", log=lambda s: None)
    monkeypatch.undo()
    (tmp_path / "resumed").mkdir()
    shutil.copy(kept_checkpoints / "epoch1.pt", tmp_path / "resumed" / "checkpoint.pt")
    resumed = train(cfg, tmp_path / "resumed", resume=True, log=lambda s: None)
    drop = ("epoch_seconds", "train_seconds", "event_seconds", "eval_seconds", "time")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in drop} for r in clean]
    a = fc.load(tmp_path / "clean" / "model.pt").state_dict()
    b = fc.load(tmp_path / "resumed" / "model.pt").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("rank", ["evbmf", "energy:0.9", "tol:0.1"])
def test_rules_that_read_trained_weights_are_refused(tmp_path, capsys, rank):
    out = tmp_path / "run"
    code = run(["train", "--model", "lenet5", "--subset", "32", "--epochs", "1", "--rank", rank,
                "--factorized-from-scratch", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.match(r"error: factorized from scratch: .*trained weights", err[0]), err
    assert not out.exists()


def test_one_change_before_epoch_0():
    with pytest.raises(ValueError, match="both change the architecture before epoch 1"):
        TrainConfig(**BASE, epochs=2, events=(Decompose(0, methods=(fc.SVD(4),)), FromScratch(methods=(fc.SVD(4),))))
