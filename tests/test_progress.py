"""Progress lines: "layer i of n", the layer, the time left from a cost model calibrated on the
layers done, on a (fake) terminal only; nothing off a terminal or inside another track."""
import io
import sys

import pytest
import torch
from torch import nn

import factorch as fc
from factorch import progress
from factorch.progress import Step, duration, track


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def terminal(monkeypatch):
    """A fake terminal on stderr and a fake clock. Called in the test body: pytest puts its own
    capture back on ``sys.stderr`` between a fixture's setup and the test."""
    def install():
        screen, clock = Terminal(), Clock()
        monkeypatch.setattr(sys, "stderr", screen)
        monkeypatch.setattr(progress, "clock", clock)
        monkeypatch.setattr(progress, "REFRESH", 0.0)  # draw when a step starts (the ticker is a thread)
        return screen, clock

    return install


def _lines(screen: Terminal) -> list[str]:
    return [part for part in screen.getvalue().split("\r\x1b[K") if part]


def test_layer_i_of_n_with_time_left_scaled_by_the_layers_done(terminal):
    screen, clock = terminal()
    steps = {"a": Step("a (gram SVD, rank 4)", 10.0), "skip": None, "b": Step("b (CP-ALS, rank 8)", 30.0),
             "c": Step("c (TT-SVD, rank 2)", 60.0)}
    for name in track(list(steps), "decompose", work=steps.get):
        clock.now += {"a": 20.0, "b": 60.0}.get(name, 0.0)  # twice their estimates: the later ones scale by 2
    lines = _lines(screen)
    assert len(lines) == 3  # one per counted step; the skipped item draws nothing
    assert lines[0].startswith("decompose: layer 1 of 3, a (gram SVD, rank 4): 0 s of ~")
    assert lines[1] == "decompose: layer 2 of 3, b (CP-ALS, rank 8): 0 s of ~1 min; about 3 min left"
    assert lines[2] == "decompose: layer 3 of 3, c (TT-SVD, rank 2): 0 s of ~2 min; about 2 min left"
    assert screen.getvalue().endswith("\r\x1b[K")  # the line is cleared at the end


def test_a_running_step_shows_its_elapsed_time_against_its_estimate(terminal, monkeypatch):
    """The line a ticker redraws while one huge layer runs: before any layer finished, the
    estimates are one-thread seconds over torch's threads."""
    _, clock = terminal()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    steps = {"big": Step("fc (randomized SVD, rank 4096)", 1200.0), "next": Step("out (gram SVD, rank 8)", 120.0)}
    for name in track(list(steps), "decompose", work=steps.get):
        if name == "big":
            clock.now += 130.0
            assert progress._active[-1].line() == ("decompose: layer 1 of 2, fc (randomized SVD, rank 4096): "
                                                   "2 min 10 s of ~10 min; about 8 min 50 s left")
    assert not progress._active


def test_nothing_is_drawn_off_a_terminal_or_inside_another_track(terminal, monkeypatch):
    screen, _ = terminal()
    items = [1, 2, 3]
    for _ in track(items, "outer", work=lambda i: Step(str(i), 1.0)):
        inner = track(["x"], "inner", work=lambda i: Step(i, 1.0))
        assert inner == ["x"]  # returned as it is: no second line under the first
    assert "inner" not in screen.getvalue()
    quiet = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", quiet)
    assert track(items, "decompose", work=lambda i: Step(str(i), 1.0)) is items
    assert quiet.getvalue() == ""


def test_decompose_shows_each_layer_on_a_terminal_and_nothing_off_it(terminal, monkeypatch):
    screen, _ = terminal()
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32))
    fc.decompose_(model, fc.SVD(0.5), min_share=0)
    text = screen.getvalue()
    assert "decompose: layer 1 of 2, 0 (" in text and "decompose: layer 2 of 2, 2 (" in text
    assert "SVD, rank 13)" in text and "left" in text
    log = io.StringIO()  # not a terminal: a CI log
    monkeypatch.setattr(sys, "stderr", log)
    fc.decompose_(nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32)), fc.SVD(0.5), min_share=0)
    assert log.getvalue() == ""


@pytest.mark.parametrize("seconds,text", [(0.4, "0 s"), (59, "59 s"), (130, "2 min 10 s"), (600, "10 min"),
                                          (3725, "1 h 2 min"), (7200, "2 h")])
def test_duration(seconds, text):
    assert duration(seconds) == text
