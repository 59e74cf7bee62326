"""ADMM as a training event: --admm-until, admm@K, exact resume (in process at every epoch
boundary, and after kill -9), events' validation, and the event contract for a new event."""
import csv
import json
import re
import shutil

import pytest
import torch

import factorch as fc
from tests.conftest import kill_after_epochs
from factorch.cli.main import run
from factorch.training import TrainConfig, train
from factorch.training.checkpoint import load_run
from factorch.training.events import ADMMPhase, Decompose, Reconstruct
from tests.conftest import needs_gloo, torchrun
from factorch.training.scenarios import Scenario, parse_scenarios

TIMES = ("epoch_seconds", "train_seconds", "event_seconds", "eval_seconds", "time")
METHODS = (fc.Tucker2(0.5), fc.SVD(0.5))


def _rows(run_dir):
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _results(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in _rows(run_dir)]


def _same_weights(a, b):
    sa, sb = fc.load(a / "model.pt").state_dict(), fc.load(b / "model.pt").state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


BASE = dict(model="lenet5", dataset="digits", subset=160, batch_size=32, lr=0.05)


def test_admm_run_penalty_then_decomposition_at_the_fixed_ranks(tmp_path):
    cfg = TrainConfig(**BASE, epochs=4, events=(ADMMPhase(until=2, rho=0.05, methods=METHODS),))
    history = train(cfg, tmp_path / "run", log=lambda s: None)
    expected = {r.name: r.ranks for r in fc.plan(fc.models.create("lenet5", 10, 1), list(METHODS),
                                                 filter_fn=lambda m, n: n != "conv1").decomposed}
    assert [set(r.get("admm_distance", {})) for r in history] == [{"mean", *expected}] * 2 + [set()] * 2
    assert all(r["admm_rho"] == 0.05 for r in history[:2])
    assert [r["event"]["kind"] if r["event"] else None for r in history] == [None, None, "decompose", None]
    assert history[2]["event"]["layers"] == list(expected) and history[2]["params"] < history[1]["params"]
    model = fc.load(tmp_path / "run" / "model.pt")
    assert {n: m.ranks for n, m in model.named_modules() if isinstance(m, fc.layers.base.FactorizedLayer)} == expected
    # the penalty acted: the same run without ADMM trains differently from its first epoch on
    dense = train(TrainConfig(**BASE, epochs=1), tmp_path / "dense", log=lambda s: None)
    assert dense[0]["test_acc"] == history[0]["test_acc"] or dense[0]["train_loss"] != history[0]["train_loss"]
    assert dense[0]["train_loss"] != history[0]["train_loss"]
    saved = load_run(tmp_path / "run" / "checkpoint.pt")["config"]
    assert saved["events"] == [{"kind": "admm", "methods": [repr(m) for m in METHODS], "first_conv": False,
                                "exclude": [], "until": 2, "rho": 0.05, "update_every": None, "rho_growth": 1.0,
                                "calibration_batches": 0, "first_epoch": 0}]


def test_resume_at_every_epoch_boundary_is_exact(tmp_path, monkeypatch, kept_checkpoints):
    """Resumed from the checkpoint of each epoch (in the ADMM phase, at its end, after the
    decomposition), the run gives the uninterrupted run's metrics and weights, bit for bit; here
    with updates every 3 steps and a growing rho (step count and rho are state too; the per-epoch
    update resumes in the kill -9 test below)."""
    cfg = TrainConfig(**BASE, epochs=4, events=(ADMMPhase(until=2, rho=0.05, update_every=3, rho_growth=1.5, methods=METHODS),))
    clean = tmp_path / "clean"
    train(cfg, clean, log=lambda s: None)
    monkeypatch.undo()
    for k in (1, 2, 3):
        d = tmp_path / f"from{k}"
        d.mkdir()
        shutil.copy(kept_checkpoints / f"epoch{k}.pt", d / "checkpoint.pt")
        train(cfg, d, resume=True, log=lambda s: None)
        assert _results(d) == _results(clean), k
        assert _same_weights(d, clean), k


ARGS = ["train", "--model", "lenet5", "--dataset", "digits", "--subset", "600", "--epochs", "3", "--batch-size", "16",
        "--lr", "0.05", "--admm-until", "2", "--admm-rho", "0.05", "--method", "tucker2,svd", "--rank", "0.5"]


def test_kill_during_admm_then_resume_equals_uninterrupted(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    kill_after_epochs(ARGS, killed, 1)  # one finished ADMM epoch in the checkpoint (Z, U), the second under way
    done = load_run(killed / "checkpoint.pt")["epoch"]
    assert 1 <= done < 2, "killed outside the ADMM phase: the machine is too fast for this test's timing"
    assert load_run(killed / "checkpoint.pt")["events"][0]["admm"]["layers"]
    assert run([*ARGS, "--out", str(killed), "--resume"]) == 0  # through the rest of ADMM and the decomposition
    assert run([*ARGS, "--out", str(clean)]) == 0
    assert _results(killed) == _results(clean)
    assert [r["event"]["kind"] if r["event"] else None for r in _results(clean)] == [None, None, "decompose"]
    assert _same_weights(killed, clean)


@pytest.mark.parametrize("argv,match", [
    (["--admm-until", "2", "--admm-rho", "0"], "ADMM rho must be a positive number, got 0.0"),
    (["--admm-until", "2", "--admm-rho", "-1"], "ADMM rho must be a positive number"),
    (["--admm-until", "3"], r"ADMM until epoch 3 is outside the run: it must be in \[1, 2\]"),
    (["--admm-until", "0"], r"ADMM until epoch 0 is outside the run"),
    (["--admm-until", "2", "--method", "svd", "--exclude", "fc.*"], r"fc\.ADMM: SVD\(rank=0\.5\) handles no layer of LeNet5 \(conv2: 5x5 conv: SVD handles 1x1"),
    (["--admm-until", "2", "--decompose-at", "1"], r"decompose_at=1 comes before the ADMM end \(admm_until=2\)"),
    (["--admm-until", "2", "--decompose-at", "2"], "decompose_at=2 comes before the ADMM end"),
    (["--admm-rho", "0.1"], r"--admm-rho need\(s\) --admm-until K"),
    (["--admm-until", "1", "--admm-update-every", "0"], "update_every must be a number of steps >= 1"),
    (["--admm-until", "1", "--exclude", "fcx"], "exclude regex 'fcx' matches no layer of the model"),
    (["--decompose-at", "1", "--exclude", "fcx"], "exclude regex 'fcx' matches no layer of the model"),
])
def test_admm_bad_input_is_one_error_line(tmp_path, capsys, argv, match):
    base = ["train", "--model", "lenet5", "--subset", "32", "--epochs", "3", "--rank", "0.5", "--out", str(tmp_path / "r")]
    assert run(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(match, err[0]), err[0]
    assert not (tmp_path / "r").exists()


def test_event_rules_in_the_config():
    admm = ADMMPhase(until=2)
    TrainConfig(epochs=5, events=(admm, Reconstruct(3)))  # ADMM's decomposition can be reconstructed
    TrainConfig(epochs=5, events=(admm, Decompose(3)))    # later: the layers ADMM left dense
    with pytest.raises(ValueError, match=r"reconstruct_at must be an epoch in \[3, 4\]"):
        TrainConfig(epochs=5, events=(Reconstruct(2), admm))
    with pytest.raises(ValueError, match="events must be a tuple of training events"):
        TrainConfig(events=[admm])
    cfg = TrainConfig(epochs=5, events=(admm,))
    a, b = cfg.build_events()[0], cfg.build_events()[0]
    assert a == admm and a is not admm and a is not b  # a run's events are fresh copies


def test_resume_refuses_other_admm_settings(tmp_path, capsys):
    base = ["train", "--model", "lenet5", "--subset", "32", "--epochs", "2", "--batch-size", "16", "--rank", "0.5",
            "--admm-until", "1", "--out", str(tmp_path / "r")]
    assert run(base) == 0
    capsys.readouterr()
    assert run([*base, "--admm-rho", "0.01", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "settings differ (events[0].rho: checkpoint 0.001, now 0.01)" in err


def test_admm_scenarios():
    got = parse_scenarios("original,dec@3,admm@3", 5)
    assert got[2] == Scenario("admm@3", events=(ADMMPhase(3),))
    cfg = got[2].config(TrainConfig(epochs=5, events=(Decompose(1),)))
    assert cfg.events == (ADMMPhase(3),)  # the scenario's events replace the base's
    for text, match in (("admm@0", r"scenario 'admm@0': ADMM until epoch 0 is outside the run: it must be in \[1, 4\]"),
                        ("admm@5", "ADMM until epoch 5"), ("admm@", "not understood; use original, dec@K, rec@K, admm@K"),
                        ("admm@40%", r"ADMMPhase\(.*until=2")):  # a fraction of the epochs, like dec@P%
        if text.endswith("%"):
            assert repr(parse_scenarios(text, 5)[0].events[0]).count("until=2") == 1
            continue
        with pytest.raises(ValueError, match=match):
            parse_scenarios(text, 5)


def test_experiment_with_admm_table_and_figure(tmp_path, capsys):
    out = tmp_path / "exp"
    argv = ["experiment", "--model", "lenet5", "--subset", "96", "--epochs", "3", "--batch-size", "32",
            "--method", "tucker2,svd", "--rank", "0.5", "--admm-rho", "0.01",
            "--scenarios", "dec@2,admm@2", "--no-keep-if-faster", "--out", str(out)]  # same layers in both
    assert run(argv) == 0
    rows = {r["scenario"]: r for r in csv.DictReader((out / "results.csv").open())}
    dec, admm = rows["dec@2"], rows["admm@2"]
    history = {name: _rows(out / name) for name in ("dec2", "admm2")}
    for row, h in ((dec, history["dec2"]), (admm, history["admm2"])):
        assert float(row["acc_before_dec"]) == h[1]["test_acc"] and float(row["acc_after_dec"]) == h[2]["event_test_acc"]
    assert admm["params"] == dec["params"] and admm["decomposed_layers"] == dec["decomposed_layers"] == "4"
    md = (out / "results.md").read_text()
    assert "admm@2: ADMMPhase(methods=(Tucker2(rank=0.5), SVD(rank=0.5)), first_conv=False, exclude=(), until=2, " \
           "rho=0.01, update_every=None, rho_growth=1.0, calibration_batches=0)" in md
    assert "| admm@2 | " in md and "% -> " in md
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert run(["experiment", "--model", "lenet5", "--epochs", "3", "--admm-rho", "0.1", "--scenarios",
                "original,dec@1", "--out", str(tmp_path / "x")]) == 2
    assert "--admm-rho apply to admm@K scenarios; none given" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "experiment"])
def test_help_names_every_rank_form_method_and_option(command, capsys):
    with pytest.raises(SystemExit):
        run([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for form in ("evbmf:WEAKEN", "energy:T", "tol:EPS", "budget:macs=F", "budget:params=F", "OUT,IN"):
        assert form in text
    assert "choices: " + ", ".join(sorted(fc.Method.by_name)) in text  # every registered method
    for option in ("--momentum MOMENTUM SGD momentum", "--weight-decay WEIGHT_DECAY SGD weight decay",
                   "--seed SEED seeds", "--admm-rho RHO penalty weight"):
        assert option in text
    assert ("--admm-until K" in text) == (command == "train")


@needs_gloo
def test_torchrun_train_with_admm(tmp_path):
    out = tmp_path / "run"
    proc = torchrun(["-m", "factorch", "train", "--model", "lenet5", "--subset", "128", "--epochs", "3",
                      "--batch-size", "32", "--admm-until", "2", "--method", "tucker2,svd", "--rank", "0.5",
                      "--device", "cpu", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [bool(r.get("admm_distance")) for r in rows] == [True, True, False]
    assert rows[2]["event"]["kind"] == "decompose" and rows[2]["params"] < rows[1]["params"]
    assert proc.stdout.count("epoch 3/3") == 1  # only rank 0 prints
    assert isinstance(fc.load(out / "model.pt").conv2, fc.layers.TuckerConv2d)
