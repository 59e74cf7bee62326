"""The event protocol: a new event is one class and its registration, defined here in the test file
alone; the loop, the scenario parser, the CLI, TrainConfig and checkpoints take it unchanged."""
import json
import shutil
from dataclasses import dataclass
from typing import ClassVar, Optional

import pytest

from factorch.cli.main import run
from factorch.training import TrainConfig, train
from factorch.training.checkpoint import load_run
from factorch.training.events import EVENTS, Event, Option, register
from factorch.training.scenarios import parse_scenarios

BASE = dict(model="lenet5", dataset="digits", subset=160, batch_size=32, lr=0.05)
TIMES = ("epoch_seconds", "train_seconds", "event_seconds", "eval_seconds", "time")


@dataclass
class CountSteps(Event):
    """A new event, defined outside factorch: from epoch ``start`` on, an L2 term of ``weight`` on
    the loss and a step count (its state) in every epoch's metrics."""

    start: int = 0
    weight: float = 0.0
    kind: ClassVar[str] = "count"
    token: ClassVar[str] = "count"
    flag: ClassVar[str] = "--count-from"
    flag_help: ClassVar[str] = "count steps from epoch K"
    options = (Option("weight", "--count-weight", "the L2 term's weight", type=float, metavar="W"),)

    def __post_init__(self):
        self._steps, self._model, self._on = 0, None, False

    def validate(self, epochs, events):
        if not 0 <= self.start < epochs:
            raise ValueError(f"count_from must be in [0, {epochs - 1}], got {self.start}")

    def begin(self, run, first_epoch):
        self._model = run.model

    def before_epoch(self, epoch, run) -> Optional[object]:
        self._on = epoch >= self.start
        return None

    def loss(self, batch):
        return self.weight * sum(p.square().sum() for p in self._model.parameters()) if self._on else None

    def after_step(self):
        self._steps += self._on

    def metrics(self):
        return {"steps": self._steps}

    def state_dict(self):
        return {"steps": self._steps}

    def load_state_dict(self, state):
        self._steps = state["steps"]


@pytest.fixture
def counting(monkeypatch):
    """``CountSteps`` registered for one test (the registry is restored after it)."""
    monkeypatch.setitem(EVENTS, CountSteps.token, CountSteps)
    return CountSteps


def _results(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def test_a_new_event_needs_no_change_to_the_loop(tmp_path, monkeypatch, kept_checkpoints):
    cfg = TrainConfig(**BASE, epochs=3, events=(CountSteps(weight=1e-3),))
    history = train(cfg, tmp_path / "clean", log=lambda s: None)
    monkeypatch.undo()
    assert [r["steps"] for r in history] == [5, 10, 15]  # 160 examples, batch 32
    plain = train(TrainConfig(**BASE, epochs=1), tmp_path / "plain", log=lambda s: None)
    assert plain[0]["train_loss"] != history[0]["train_loss"]  # its loss term acted
    d = tmp_path / "resumed"
    d.mkdir()
    shutil.copy(kept_checkpoints / "epoch1.pt", d / "checkpoint.pt")
    assert load_run(d / "checkpoint.pt")["events"] == [{"steps": 5}]
    assert load_run(d / "checkpoint.pt")["config"]["events"] == [{"kind": "count", "start": 0, "weight": 0.001,
                                                                   "first_epoch": 0}]
    train(cfg, d, resume=True, log=lambda s: None)
    assert _results(d) == _results(tmp_path / "clean")


def test_a_registered_event_is_spelled_in_scenarios_and_on_the_command_line(counting, tmp_path, capsys):
    got = parse_scenarios("original,count@1,dec@1+count@2", 3, {"weight": 1e-3})
    assert got[1].events == (CountSteps(1, weight=1e-3),) and got[2].events[1] == CountSteps(2, weight=1e-3)
    with pytest.raises(ValueError, match=r"scenario 'count@3': count_from must be in \[0, 2\]"):
        parse_scenarios("count@3", 3)
    with pytest.raises(ValueError, match="not understood; use original, dec@K, rec@K, admm@K, scratch, distill, count@K"):
        parse_scenarios("tally@1", 3)

    argv = ["train", "--model", "lenet5", "--subset", "160", "--epochs", "3", "--batch-size", "32", "--lr", "0.05"]
    assert run([*argv, "--count-from", "1", "--count-weight", "0.001", "--out", str(tmp_path / "cli")]) == 0
    direct = train(TrainConfig(**BASE, epochs=3, events=(CountSteps(1, weight=1e-3),)), tmp_path / "api",
                   log=lambda s: None)
    assert [r["steps"] for r in direct] == [0, 5, 10]
    assert _results(tmp_path / "cli") == _results(tmp_path / "api")  # the flag built the same event
    capsys.readouterr()
    assert run([*argv, "--count-weight", "0.001", "--out", str(tmp_path / "x")]) == 2
    assert "--count-weight need(s) --count-from K" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["experiment", "--help"])
    assert "--count-weight W" in capsys.readouterr().out

    exp = tmp_path / "exp"
    assert run(["experiment", *argv[1:], "--scenarios", "original,count@1", "--count-weight", "0.001",
                "--out", str(exp)]) == 0
    assert _results(exp / "count1") == _results(tmp_path / "api")


def test_register_refuses_a_taken_token(counting):
    @dataclass
    class Other(Event):
        token: ClassVar[str] = "count"

    with pytest.raises(ValueError, match="event token 'count' is taken by CountSteps"):
        register(Other)
    assert register(CountSteps) is CountSteps  # registering the same class again is harmless
    with pytest.raises(ValueError, match="has no token"):
        register(Event)
