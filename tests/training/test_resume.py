"""Robust runs: a run killed with SIGKILL in the middle of an epoch resumes to the same result."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import factorch as fc
from tests.conftest import kill_after_epochs
from factorch.cli.main import run
from factorch.training.checkpoint import load_run

ARGS = ["train", "--model", "lenet5", "--dataset", "digits", "--subset", "600", "--epochs", "5",
        "--batch-size", "16", "--lr", "0.05", "--decompose-at", "2", "--method", "tucker2,svd", "--rank", "0.5",
        "--no-keep-if-faster"]  # a decision by this machine's clock is not part of what must replay
TIMES = ("epoch_seconds", "train_seconds", "event_seconds", "eval_seconds", "time")


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


def _results(run_dir):
    rows = [json.loads(line) for line in _lines(run_dir / "metrics.jsonl")]
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def test_kill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    # 3 finished epochs: the checkpoint holds the decomposed structure; epoch 4 is under way
    kill_after_epochs(ARGS, killed, 3)
    done = load_run(killed / "checkpoint.pt")["epoch"]
    assert 3 <= done < 5 and not (killed / "model.pt").exists()
    assert run([*ARGS, "--out", str(killed), "--resume"]) == 0
    assert run([*ARGS, "--out", str(clean)]) == 0

    assert _results(killed) == _results(clean)  # every metric of every epoch, bit for bit
    assert [r["epoch"] for r in _results(killed)] == [1, 2, 3, 4, 5]
    a, b = fc.load(killed / "model.pt"), fc.load(clean / "model.pt")
    assert isinstance(a.conv2, fc.layers.TuckerConv2d)  # the factorized structure was restored
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_existing_run_needs_resume_and_same_settings(tmp_path, capsys):
    out = tmp_path / "r"
    small = ["train", "--model", "lenet5", "--subset", "64", "--epochs", "1", "--batch-size", "32", "--out", str(out)]
    assert run(small) == 0
    assert run(small) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert run([*small[:-2], "--lr", "0.5", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "settings differ" in err[0] and "lr: checkpoint 0.1, now 0.5" in err[0]
    assert run([*small, "--resume"]) == 0  # finished: nothing left to do, same result
    assert len(_lines(out / "metrics.jsonl")) == 1


@pytest.mark.parametrize("argv,match", [
    (["--decompose-at", "9"], "decompose_at must be an epoch in [0, 2]"),
    (["--reconstruct-at", "1"], "needs decompose_at"),
    (["--dataset", "nope"], "unknown dataset"),
    (["--model", "nope"], "unknown model"),
    (["--rank", "lots"], "not understood"),
    (["--decompose-at", "1", "--exclude", "("], "regex"),
    (["--exclude", "conv2"], "--exclude need(s) --decompose-at K or --admm-until K or --factorized-from-scratch"),
    (["--calibration-batches", "2"], "--calibration-batches need(s) --decompose-at K or --admm-until K"),
    (["--factorized-from-scratch", "--rank", "0.5", "--calibration-batches", "2"],  # fresh factors fit no data
     "--calibration-batches need(s) --decompose-at K or --admm-until K"),
])
def test_train_bad_input_is_one_error_line(tmp_path, capsys, argv, match):
    base = ["train", "--model", "lenet5", "--subset", "32", "--epochs", "3", "--out", str(tmp_path / "r")]
    assert run(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0]
    assert not (tmp_path / "r").exists()


def test_decomposition_settings_do_not_bind_a_run_that_never_decomposes(tmp_path, capsys):
    """A finished dense run resumes under another --rank (nothing retrained); a run that did
    decompose still refuses a different rank."""
    base = ["train", "--model", "lenet5", "--subset", "64", "--epochs", "2", "--batch-size", "32"]
    dense, dec = tmp_path / "dense", tmp_path / "dec"
    assert run([*base, "--rank", "evbmf", "--out", str(dense)]) == 0
    assert run([*base, "--rank", "0.25", "--out", str(dense), "--resume"]) == 0
    assert len(_lines(dense / "metrics.jsonl")) == 2  # nothing retrained
    assert run([*base, "--decompose-at", "1", "--rank", "0.5", "--out", str(dec)]) == 0
    capsys.readouterr()
    assert run([*base, "--decompose-at", "1", "--rank", "0.25", "--out", str(dec), "--resume"]) == 2
    assert "settings differ (events[0].methods: checkpoint ['Tucker2(rank=0.5)'], now ['Tucker2(rank=0.25)'])" \
        in capsys.readouterr().err


OLD = json.loads((Path(__file__).parent / "fixtures" / "old_run_configs.json").read_text())


@pytest.mark.parametrize("name", sorted(OLD))
def test_checkpoints_from_before_events_owned_their_settings_keep_resuming(name, tmp_path, monkeypatch,
                                                                             kept_checkpoints):
    """The configs of run checkpoints written when ``TrainConfig`` held ``decompose_at`` and the
    decomposition settings (recorded from real runs of that code, ``fixtures/old_run_configs.json``)
    resume under today's events: same command line, same result; another rank is still refused."""
    argv, old = OLD[name]["argv"], OLD[name]["config"]
    clean = tmp_path / "clean"
    assert run([*argv, "--out", str(clean)]) == 0
    monkeypatch.undo()
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    ckpt = torch.load(kept_checkpoints / "epoch1.pt", weights_only=True)
    torch.save({**ckpt, "config": old}, resumed / "checkpoint.pt")
    assert run([*argv, "--out", str(resumed), "--resume"]) == 0
    timed = old.get("keep_if_faster") and old.get("decompose_at") is not None  # the clock chose the layers
    assert len(_results(resumed)) == old["epochs"]
    if not timed:
        assert _results(resumed) == _results(clean)
    if "--rank" in argv:  # after every event acted, another rank is refused
        other = tmp_path / "other"
        other.mkdir()
        after = torch.load(kept_checkpoints / "epoch2.pt", weights_only=True)
        torch.save({**after, "config": old}, other / "checkpoint.pt")
        changed = [*argv[:argv.index("--rank") + 1], "0.25", *argv[argv.index("--rank") + 2:]]
        assert run([*changed, "--out", str(other), "--resume"]) == 2


def test_a_run_stopped_before_its_event_resumes_with_corrected_settings(tmp_path, capsys, monkeypatch,
                                                                        kept_checkpoints):
    """Settings of an event that has not acted yet may change on resume (a wrong rank found late
    costs no epochs); an event that acted may not change."""
    base = ["train", "--model", "lenet5", "--subset", "64", "--epochs", "3", "--batch-size", "32",
            "--method", "tucker2,svd", "--no-keep-if-faster", "--decompose-at", "2"]
    first = tmp_path / "first"
    assert run([*base, "--rank", "0.5", "--out", str(first)]) == 0
    monkeypatch.undo()
    partial, clean = tmp_path / "partial", tmp_path / "clean"
    partial.mkdir()
    shutil.copy(kept_checkpoints / "epoch1.pt", partial / "checkpoint.pt")  # before the decomposition
    assert run([*base, "--rank", "0.25", "--out", str(partial), "--resume"]) == 0
    assert run([*base, "--rank", "0.25", "--out", str(clean)]) == 0
    assert _results(partial) == _results(clean)
    capsys.readouterr()
    assert run([*base, "--rank", "0.25", "--out", str(first), "--resume"]) == 2  # it acted: its settings bind
    assert "settings differ (events[0].methods" in capsys.readouterr().err
