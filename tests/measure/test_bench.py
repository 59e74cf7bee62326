"""bench: dense / factorized / rebuilt per layer and whole model; theoretical vs measured speed-up."""
import pytest
import torch
from torch import nn

import factorch as fc
from factorch.measure.bench import MODEL, bench, format_table
from factorch.layers.base import FactorizedLayer

pytestmark = pytest.mark.usefixtures("one_thread")


def clock(module, run):
    """Factorized layers 2 ms, anything holding one 4 ms, plain dense 5 ms (per call)."""
    run()
    if isinstance(module, FactorizedLayer):
        return 2e-3
    return 4e-3 if any(isinstance(m, FactorizedLayer) for m in module.modules()) else 5e-3


def test_bench_rows_and_ratios():
    torch.manual_seed(0)
    model = fc.models.create("resnet20").eval()
    x = torch.zeros(1, 3, 32, 32)
    report, rows = bench(model, fc.Tucker2(0.25), x, fc.Profiler(warmup=0, runs=1, batch=2, backward=True, timer=clock),
                         filter_fn=lambda m, name: name.startswith("layer3"))
    assert [r.layer for r in rows] == [r.name for r in report.decomposed] + [MODEL]
    assert len(rows) == 7 and all(isinstance(m, nn.Conv2d) for m in [model.layer3[0].conv1])  # model untouched
    for r, rep in zip(rows, report.decomposed):
        assert r.mac_speedup == pytest.approx(rep.macs_before / rep.macs_after)
        assert (r.dense_ms, r.factorized_ms, r.rebuilt_ms) == pytest.approx((5.0, 2.0, 5.0))
        assert r.speedup == pytest.approx(2.5) and r.train_speedup == pytest.approx(2.5) and r.batch == 2
    whole = rows[-1]
    counted = fc.count(model, x).macs
    assert whole.macs_dense == counted and whole.macs_factorized < counted
    assert whole.speedup == pytest.approx(5 / 4)
    text = format_table(rows)
    assert "MACs x" in text and "train x" in text and MODEL in text
    assert format_table(rows, markdown=True).startswith("| layer |")


def test_bench_forward_only_and_nothing_decomposed():
    model = fc.models.create("resnet20")
    _, rows = bench(model, fc.Tucker2(0.25), torch.zeros(1, 3, 32, 32),
                    fc.Profiler(warmup=0, runs=1, timer=clock), filter_fn=lambda m, n: n == "layer3.2.conv2")
    assert rows[0].train_speedup is None and "train x" not in format_table(rows)
    with pytest.raises(ValueError, match="random-init weights give EVBMF rank 0"):
        bench(model, fc.Tucker2(fc.EVBMF()), torch.zeros(1, 3, 32, 32), fc.Profiler(warmup=0, runs=1, timer=clock))


def test_cli_bench_writes_results(tmp_path, capsys):
    from factorch.cli.main import run

    out = tmp_path / "b"
    assert run(["bench", "--model", "resnet20", "--method", "tucker2", "--rank", "0.25", "--exclude", "layer[12].*|conv1",
                "--batch", "2", "--runs", "1", "--warmup", "0", "--threads", "1", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(whole model)" in text and "fwd x" in text
    csv = (tmp_path / "b.csv").read_text().splitlines()
    assert csv[0].startswith("layer,kind,ranks,batch,macs_dense") and csv[0].endswith("device,torch")
    assert len(csv) == 1 + 6 + 1
    md = (tmp_path / "b.md").read_text()
    assert "- command: `factorch bench --model resnet20" in md and "- torch: " in md


@pytest.mark.parametrize("argv,match", [
    (["bench", "--model", "resnet20"], "random-init weights give EVBMF rank 0"),
    (["bench"], "give --model NAME"),
    (["bench", "--model", "nope", "--rank", "0.5"], "unknown model"),
    (["bench", "--model", "resnet20", "--rank", "0.5", "--runs", "0"], "runs"),
    (["bench", "--model", "resnet20", "--rank", "0.5", "-o", "{tmp}/no/b"], "does not exist"),
])
def test_cli_bench_bad_input(tmp_path, capsys, argv, match):
    from factorch.cli.main import run

    assert run([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0]


def test_cli_bench_prints_each_row_before_timing_the_next(capsys, monkeypatch):
    """A long bench is never silent: when layer k is timed, the rows of layers 0..k-1 are out."""
    import factorch.measure.latency
    from factorch.cli.main import run

    seen = []  # per timer call: the table rows printed so far

    def clock(module, call):
        call()
        seen.append(capsys.readouterr().out)
        return 1e-3

    monkeypatch.setattr(factorch.measure.latency, "default_timer", lambda device: clock)
    assert run(["bench", "--model", "resnet20", "--method", "tucker2", "--rank", "0.25", "--exclude", "layer[12].*|conv1",
                "--batch", "2", "--runs", "1", "--warmup", "0", "--forward-only"]) == 0
    seen.append(capsys.readouterr().out)
    printed = "".join(seen)
    table = printed[printed.index("fwd dense ms"):]
    names = [f"layer3.{b}.conv{c}" for b in range(3) for c in (1, 2)]
    assert all(name in table for name in names) and MODEL in table
    for k, name in enumerate(names):  # 3 variants x 1 run per layer; the whole model comes last
        before = "".join(seen[:3 * k + 1])
        table_so_far = before[before.index("fwd dense ms"):] if "fwd dense ms" in before else ""
        assert all(n in table_so_far for n in names[:k]) and name not in table_so_far, (k, table_so_far)


def test_help_lists_every_method_and_rank_form(capsys):
    from factorch.cli.common import RANK_FORMS, parse_rank
    from factorch.cli.main import run

    for command in ("decompose", "bench"):
        with pytest.raises(SystemExit):
            run([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert all(name in text for name in fc.Method.by_name), command
        assert all(f"{form}:" in text for form, _, _ in RANK_FORMS), command
    for _, example, _ in RANK_FORMS:
        parse_rank(example)  # every documented form parses
    with pytest.raises(SystemExit) as e:
        run(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"factorch {fc.__version__}"
