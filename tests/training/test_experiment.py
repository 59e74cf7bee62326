"""The experiment: scenario strings, the table (Markdown + CSV) and the figure on a tiny run."""
import csv
import json

import pytest

from factorch.cli.main import run
from factorch.cli.train import paper_scenarios
from factorch.training.events import Decompose, Reconstruct
from factorch.training.scenarios import Scenario, parse_scenarios


def test_parse_the_papers_scenarios():
    got = parse_scenarios("original, dec@10,dec@20,dec@10+rec@190,original-then-dec+40", 200)
    assert got == [Scenario("original"), Scenario("dec@10", (Decompose(10),)), Scenario("dec@20", (Decompose(20),)),
                   Scenario("dec@10+rec@190", (Decompose(10), Reconstruct(190))),
                   Scenario("original-then-dec+40", (Decompose(200),), extra_epochs=40)]
    assert paper_scenarios(200) == "original,dec@10,dec@20,dec@10+rec@190,original-then-dec+40"
    cfg = got[4].config(__import__("factorch.training", fromlist=["TrainConfig"]).TrainConfig(epochs=200))
    assert (cfg.epochs, cfg.schedule_epochs, cfg.events) == (240, 200, (Decompose(200),))
    assert cfg.schedule.lr_at(239) == pytest.approx(0.001)  # fine-tuning at the final LR


@pytest.mark.parametrize("text,match", [
    ("dec@", "not understood"),
    ("dec@x", "not understood"),
    ("decompose@3", "not understood; use original, dec@K"),
    ("dec@10", r"scenario 'dec@10': decompose_at must be an epoch in \[0, 9\], got 10"),
    ("dec@3+rec@2", r"reconstruct_at must be an epoch in \[4, 9\]"),
    ("dec@3+rec@10", "reconstruct_at must be an epoch in"),
    ("rec@3", "reconstruct_at needs decompose_at"),
    ("scratch@3", "not understood"),
    ("dec", "not understood"),
    ("original-then-dec+0", "at least 1"),
    ("original,original", "given twice"),
    (" , ", "no scenario"),
])
def test_bad_scenarios(text, match):
    with pytest.raises(ValueError, match=match):
        parse_scenarios(text, 10)


def test_bad_scenario_from_the_cli_writes_nothing(tmp_path, capsys):
    out = tmp_path / "exp"
    assert run(["experiment", "--model", "lenet5", "--epochs", "5", "--scenarios", "original,dec@7",
                "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: scenario 'dec@7'")
    assert not out.exists()


def test_tiny_experiment_table_and_figure(tmp_path, capsys):
    out = tmp_path / "exp"
    argv = ["experiment", "--model", "lenet5", "--subset", "96", "--epochs", "3", "--batch-size", "32",
            "--method", "tucker2,svd", "--rank", "0.5",
            "--scenarios", "original,dec@1,dec@1+rec@2,original-then-dec+1", "--no-keep-if-faster",
            "--out", str(out)]  # decomposed whatever this machine's clock says
    assert run(argv) == 0
    printed = capsys.readouterr().out
    assert "| dec@1+rec@2 |" in printed and str(out / "figure.png") in printed
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["scenario"] for r in rows] == ["original", "dec@1", "dec@1+rec@2", "original-then-dec+1"]
    by = {r["scenario"]: r for r in rows}
    assert float(by["original"]["speedup"]) == 1.0
    assert int(by["dec@1"]["params"]) < int(by["original"]["params"]) == int(by["dec@1+rec@2"]["params"])
    assert by["dec@1+rec@2"]["params_decomposed"] == by["dec@1"]["params_decomposed"]
    assert int(by["original-then-dec+1"]["epochs"]) == 4 and by["original"]["params_decomposed"] == ""
    md = (out / "results.md").read_text()
    assert md.count("\n| ") == 5 and "command: `factorch experiment --model lenet5" in md
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def hist(name):
        return [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]

    original, dec, after = hist("original"), hist("dec1"), hist("original-then-dec-1")
    # same seed, same first epoch; original-then-dec continues the original's own run
    assert dec[0]["train_loss"] == original[0]["train_loss"]
    assert after[:3] == original and after[3]["event"]["kind"] == "decompose"
    # a finished experiment resumes to the same table without training again
    assert run([*argv, "--resume"]) == 0

    def trained(rows):  # the throughput column is measured again, on this machine, now
        return [{k: v for k, v in r.items() if k != "throughput_speedup"} for r in rows]
    assert trained(csv.DictReader((out / "results.csv").open())) == trained(rows)
    assert all(float(r["throughput_speedup"]) > 0 for r in rows)


def test_throughput_column_times_the_final_models_against_the_dense_one(tmp_path):
    """A fake clock (seconds = the timed model's parameter count): the column is the dense model's
    time over each final model's, every model timed in one interleaved comparison."""
    import factorch as fc
    from factorch.measure.latency import Profiler
    from factorch.training import TrainConfig
    from factorch.training.experiment import run_experiment

    timed = []

    def params_clock(module, call):
        call()
        timed.append(module)
        return float(sum(p.numel() for p in module.parameters()))

    base = TrainConfig(model="lenet5", dataset="digits", epochs=2, subset=64, batch_size=32)
    profiler = Profiler(batch=4, warmup=0, runs=3, backward=True, timer=params_clock)
    scenarios = parse_scenarios("original,dec@1", 2, {"methods": (fc.Tucker2(0.5), fc.SVD(0.5))})
    result = run_experiment(base, scenarios, tmp_path / "exp", log=lambda s: None,
                            profiler=profiler)
    by = {r["scenario"]: r for r in result.rows}
    dense, small = by["original"]["params"], by["dec@1"]["params"]
    assert small < dense
    assert by["original"]["throughput_speedup"] == 1.0
    assert by["dec@1"]["throughput_speedup"] == dense / small
    # forward and forward+backward, 3 runs each, of the dense reference and the two final models
    assert len(timed) == 2 * 3 * 3
    assert {sum(p.numel() for p in m.parameters()) for m in timed} == {dense, small}
    md = result.table.read_text()
    assert f"| {dense / small:.2f}x |" in md and "Speedup (training time) | Speedup (throughput)" in md
    assert "batch 4) of the dense model over the scenario's final model" in md
    assert [r["throughput_speedup"] for r in csv.DictReader(result.csv.open())] == \
        [str(1.0), str(dense / small)]
