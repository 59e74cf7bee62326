"""fc.Budget(latency=f): ranks from per-layer latency tables, corrected by whole-model measurements,
against fake clocks (a test never asserts a wall-clock time)."""
import pytest
import torch
from torch import nn

import factorch as fc
from factorch import latency_budget
from factorch.cli.main import run
from factorch.layers import FactorizedLayer

pytestmark = pytest.mark.usefixtures("one_thread")


class MacClock:
    """1 ns per MAC of each conv and linear a call runs, plus ``overhead`` per kernel; factorized
    layers run ``slowdown`` times slower inside a whole model than alone (as when their inputs no
    longer sit in cache). Counts the calls it timed per kind of module."""

    def __init__(self, overhead=20e-6, slowdown=1.0):
        self.overhead, self.slowdown, self.calls = overhead, slowdown, {"model": 0, "layer": 0}

    def __call__(self, module, run):
        total = [0.0]
        whole = any(True for m in module.children() if any(True for _ in m.children()))
        self.calls["model" if whole else "layer"] += 1

        def hook(m, args, out):
            inside = any(m in list(layer.modules()) for layer in factorized)
            cin = m.in_channels // m.groups if isinstance(m, nn.Conv2d) else m.in_features
            k = m.kernel_size[0] * m.kernel_size[1] if isinstance(m, nn.Conv2d) else 1
            cost = out.numel() * cin * k * 1e-9 + self.overhead
            total[0] += cost * (self.slowdown if inside and whole else 1.0)

        factorized = [m for m in module.modules() if isinstance(m, FactorizedLayer)]
        hooks = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        try:
            run()
        finally:
            for h in hooks:
                h.remove()
        return total[0]


def measured(model, x, clock):
    """The model's latency under ``clock`` (one timed call)."""
    return fc.measure.latency.measure(model, tuple(x.shape[1:]), fc.Profiler(warmup=0, runs=1, timer=clock)).forward


def budget(fraction, clock):
    return fc.Budget(latency=fraction, profiler=fc.Profiler(batch=1, warmup=0, runs=1, timer=clock))


@pytest.mark.parametrize("slowdown", [1.0, 1.25])
def test_the_allocation_meets_a_fake_latency_target_and_reports_it(slowdown):
    """With ``slowdown`` 1.25 the per-layer tables underestimate the model: the correction rounds
    move the target until the whole-model measurement lands on it (within 0.45-0.55: the round
    closest to the target is kept, one over it counting double)."""
    torch.manual_seed(0)
    model = fc.models.create("resnet20").eval()
    dense = fc.models.create("resnet20").eval()
    x = torch.zeros(1, 3, 32, 32)
    clock = MacClock(slowdown=slowdown)
    b = budget(0.5, clock)
    report = fc.decompose_(model, [fc.Tucker2(b), fc.SVD(b)], example_input=x)
    (result,) = report.budgets
    assert result.kind == "latency" and result.target == 0.5 and result.layers == 19
    assert 0.45 <= result.fraction <= 0.55
    after = measured(model, x, clock) / measured(dense, x, clock)  # measured after the fact, the same clock
    assert after == pytest.approx(result.fraction, rel=1e-9)
    line = str(report).splitlines()[-1]
    assert line.startswith(f"budget:latency=0.5: the model runs in {result.fraction:.4f} of the dense model's time, "
                           "measured (") and "19 layers governed; batch 1; allocation rounds measured" in line
    assert len(report.decomposed) == 19
    rounds = line.split("allocation rounds measured ")[1].rstrip(")").split(", ")
    assert (len(rounds) > 1) == (slowdown > 1)  # the tables alone were right: one round; else corrected


def test_a_latency_budget_on_a_rank_grid_times_and_chooses_ranks_on_it():
    """``multiple=8``: the tables are timed at ranks on the grid (the clock sees only such factor
    convs) and the allocation lands on it, still near the target."""
    latency_budget.CACHE.clear()
    torch.manual_seed(0)
    model = fc.models.create("resnet20").eval()
    x = torch.zeros(1, 3, 32, 32)
    clock = MacClock()
    widths = set()

    def recording(module, run):
        widths.update(m.out_channels for layer in module.modules() if isinstance(layer, FactorizedLayer)
                      for m in layer.modules() if isinstance(m, nn.Conv2d))
        return clock(module, run)

    b = budget(0.6, recording)
    report = fc.decompose_(model, [fc.Tucker2(b, multiple=8), fc.SVD(b, multiple=8)], example_input=x)
    (result,) = report.budgets
    assert 0.54 <= result.fraction <= 0.66
    assert widths and all(w % 8 == 0 or w == 3 for w in widths), widths  # 3: the stem's full input rank
    assert report.decomposed and all(r % 8 == 0 or r == 3 for row in report.decomposed for r in row.ranks)


def test_layer_tables_are_measured_once_per_geometry_and_settings():
    latency_budget.CACHE.clear()
    x = torch.zeros(1, 3, 32, 32)
    clock = MacClock()
    fc.plan(fc.models.create("resnet20").eval(), fc.Tucker2(budget(0.6, clock)), example_input=x)
    first = clock.calls["layer"]
    fc.plan(fc.models.create("resnet20").eval(), fc.Tucker2(budget(0.6, clock)), example_input=x)
    assert first > 0 and clock.calls["layer"] == first  # the second plan times only whole models
    other = MacClock()  # another clock is another measurement
    fc.plan(fc.models.create("resnet20").eval(), fc.Tucker2(budget(0.6, other)), example_input=x)
    assert other.calls["layer"] == first
    # ResNet-20's 19 3x3 convs have 6 geometries (3->16, 16->16, 16->32 s2, 32->32, 32->64 s2, 64->64):
    # each timed once, dense and at rank 1 and the SAMPLES
    assert first == 6 * (1 + 1 + len(latency_budget.SAMPLES))


def test_an_unreachable_latency_is_one_error_with_the_reachable_fraction():
    model = fc.models.create("resnet20").eval()
    clock = MacClock(overhead=1e-3)  # per-kernel costs dominate: a chain of 3 kernels is never much faster
    with pytest.raises(ValueError, match=r"Budget\(latency=0.1, profiler=.*\) cannot be met here: the \d+ layers it "
                                         r"governs still take .* ms at their smallest ranks .*the lowest reachable "
                                         r"fraction is about"):
        fc.decompose_(model, fc.Tucker2(budget(0.1, clock)), example_input=torch.zeros(1, 3, 32, 32))
    assert not any(isinstance(m, FactorizedLayer) for m in model.modules())


def test_a_layer_never_faster_factorized_stays_dense():
    """Kernel overhead larger than any MAC saving: no rank makes the layer faster, so the method
    passes it over (as a MACs budget does where no rank makes it cheaper)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    report = fc.plan(model, fc.Tucker2(budget(0.9, MacClock(overhead=1.0))), example_input=torch.zeros(1, 3, 8, 8),
                     min_share=0)
    assert not report.decomposed and all("cheaper than dense" in r.skipped for r in report.rows)


def test_budget_latency_validation():
    with pytest.raises(ValueError, match="latency=F, macs=F or params=F"):
        fc.Budget(latency=0.5, macs=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        fc.Budget(latency=1.5)
    with pytest.raises(ValueError, match="a macs budget is counted, not timed"):
        fc.Budget(macs=0.5, profiler=fc.Profiler())
    with pytest.raises(ValueError, match="must be a fc.Profiler"):
        fc.Budget(latency=0.5, profiler="fast")
    assert str(fc.Budget(latency=0.5)) == "budget:latency=0.5" and repr(fc.Budget(latency=0.5)) == "Budget(latency=0.5)"
    with pytest.raises(ValueError, match="needs example_input"):
        fc.plan(fc.models.create("resnet20"), fc.Tucker2(fc.Budget(latency=0.5)))


def test_cli_rank_budget_latency_is_timed_with_the_commands_options(tmp_path, capsys, monkeypatch):
    seen = []
    real = latency_budget.allocate_latency

    def spy(budget, *args):
        seen.append(budget)
        return real(fc.Budget(latency=budget.latency, profiler=budget.profiler.__class__(
            batch=budget.profiler.batch, threads=budget.profiler.threads, warmup=0, runs=1, timer=MacClock())), *args)

    monkeypatch.setattr(latency_budget, "allocate_latency", spy)
    out = tmp_path / "m.pt"
    assert run(["decompose", "--model", "resnet20", "--method", "tucker2", "--rank", "budget:latency=0.6",
                "--batch", "4", "--threads", "1", "-o", str(out)]) == 0
    (b,) = seen
    assert b.latency == 0.6 and b.profiler.batch == 4 and b.profiler.threads == 1 and b.profiler.device == "cpu"
    assert "budget:latency=0.6: the model runs in" in capsys.readouterr().out and out.exists()


def test_the_correction_stays_between_rounds_on_both_sides_of_the_target():
    """Rounds measured 0.55 and 0.549 of dense at governed targets 10 and 9 (ms, T_dense 100): the
    secant of two rounds above 0.5 is nearly flat and would move the target by 49, so the step is
    capped at twice the miss (2 x 0.049 x 100); once a round lies below (0.40 at 5), the next target
    lies between the closest round on each side."""
    from factorch.latency_budget import _next_target

    above = [(0.55, {}, 0.0, 10.0), (0.549, {}, 0.0, 9.0)]
    assert _next_target(above, 0.5, 100.0) == pytest.approx(9.0 - 2 * 0.049 * 100.0)
    bracketed = above + [(0.40, {}, 0.0, 5.0)]
    expected = 5.0 + (0.5 - 0.40) * (9.0 - 5.0) / (0.549 - 0.40)
    assert _next_target(bracketed, 0.5, 100.0) == pytest.approx(expected) and 5.0 < expected < 9.0
