"""One run per directory: ``factorch train``/``experiment`` hold their ``--out`` (``lock_dir``) and a
second run there is one ``error:`` line that writes nothing; torchrun workers die with their
launcher (a ``kill -9`` of torchrun leaves no rank writing); a run that diverges stops with its last
good checkpoint, and one that fails before its first checkpoint leaves nothing."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from factorch.cli.main import run
from factorch.files import DirectoryLocked, lock_dir
from factorch.training import TrainConfig, train
from factorch.training.checkpoint import load_run
from factorch.training.events import Event
from factorch.training.experiment import run_experiment
from factorch.training.scenarios import parse_scenarios

QUICK = ["--model", "lenet5", "--subset", "64", "--epochs", "2", "--batch-size", "32", "--device", "cpu"]


def _tree(directory):
    return sorted((p.relative_to(directory), p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*"))


@pytest.mark.parametrize("command", [["train"], ["experiment", "--scenarios", "original,dec@1"]])
def test_a_second_run_into_a_held_directory_is_one_line_and_writes_nothing(tmp_path, capsys, command):
    out = tmp_path / "run"
    with lock_dir(out):  # the first run, still writing
        before = _tree(out)
        assert run([*command, *QUICK, "--out", str(out)]) == 2
        assert _tree(out) == before
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: another factorch process (pid {os.getpid()}) is writing into '{out}'; "
                   "wait for it to finish or choose another directory"]


def test_a_run_holds_its_directory_until_it_ends(tmp_path):
    out = tmp_path / "run"
    seen = []

    def log(line):  # called during the run: a second writer must be refused then
        with pytest.raises(DirectoryLocked):
            with lock_dir(out):
                pass
        seen.append(line)

    train(TrainConfig(model="lenet5", dataset="digits", epochs=1, subset=32, batch_size=32), out, log=log)
    assert seen
    with lock_dir(out):  # released at the end
        pass


def test_an_experiment_holds_its_directory_and_each_run_its_own(tmp_path):
    out = tmp_path / "exp"
    refused = []

    def log(line):
        for d in (out, out / "original"):
            if d.exists():
                try:
                    with lock_dir(d):
                        pass
                except DirectoryLocked:
                    refused.append(d.name)

    run_experiment(TrainConfig(model="lenet5", dataset="digits", epochs=1, subset=32, batch_size=32),
                   parse_scenarios("original", 1), out, log=log)
    assert "exp" in refused and "original" in refused
    with lock_dir(out):
        pass


WORKER = textwrap.dedent('''
    import os, sys, time
    from factorch.distributed import Distributed
    dist = Distributed.from_env("cpu")
    open(os.path.join(sys.argv[1], f"rank{dist.rank}.pid"), "w").write(str(os.getpid()))
    while True:  # a rank that would go on writing for ever
        time.sleep(0.2)
''')


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (dead, not yet reaped by its new parent) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.skipif(os.name != "posix" or not torch.distributed.is_gloo_available(),
                    reason="POSIX signals and torch.distributed with Gloo needed")
def test_torchrun_workers_exit_when_the_launcher_is_killed(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 str(tmp_path / "worker.py"), str(tmp_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = []
    try:
        deadline = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline and launcher.poll() is None:
            pids = [int(p.read_text()) for p in tmp_path.glob("rank*.pid") if p.read_text()]
            time.sleep(0.2)
        assert len(pids) == 2, "the workers did not start"
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids), "a worker outlived its launcher"
    finally:
        launcher.kill()
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class NaNAt(Event):
    """A loss term that is NaN at one step (counted over the run): a divergence on cue."""

    step: int = 1
    kind: ClassVar[str] = "nan"

    def __post_init__(self):
        self._steps = 0

    def loss(self, batch):
        self._steps += 1
        return torch.tensor(float("nan")) if self._steps == self.step else None


def test_a_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(model="lenet5", dataset="digits", epochs=4, subset=64, batch_size=32, events=(NaNAt(step=6),))
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"the training loss is NaN or infinite at epoch 3, step 2: training stopped; "
                                           r".*checkpoint\.pt \(after epoch 2\) is kept"):
        train(cfg, out, log=lambda s: None)
    assert load_run(out / "checkpoint.pt")["epoch"] == 2  # 2 steps per epoch: step 6 is epoch 3's second
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2 and not (out / "model.pt").exists()
    assert all(torch.isfinite(t).all() for t in load_run(out / "checkpoint.pt")["model"].values())


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, capsys):
    first = TrainConfig(model="lenet5", dataset="digits", epochs=2, subset=64, batch_size=32, events=(NaNAt(step=1),))
    with pytest.raises(RuntimeError, match="at epoch 1, step 1: .*no epoch finished, so no checkpoint was written"):
        train(first, tmp_path / "run", log=lambda s: None)
    assert not (tmp_path / "run").exists()  # no lock file, no empty metrics log, no directory
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    with pytest.raises(RuntimeError):
        train(first, tmp_path / "mine", log=lambda s: None)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]  # what was there stays
    # settings that no epoch can fix are refused before anything is written
    base = ["train", "--model", "lenet5", "--dataset", "digits", "--subset", "64", "--epochs", "2"]
    for argv, message in (
            (["--decompose-at", "1", "--method", "tucker2", "--rank", "64,64"],
             "error: layer 'conv2' (conv5x5 6->16): rank (64, 64) exceeds the full rank of mode 'out' (16)"),
            (["--factorized-from-scratch", "--method", "cp", "--rank", "4", "--exclude", "conv2"],
             "error: no layer was decomposed (3 x CP does not handle Linear; 2 x excluded by filter_fn), so training "
             "from scratch would train the dense model; nothing was written")):
        assert run([*base, *argv, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(message), err
        assert not (tmp_path / "bad").exists()
