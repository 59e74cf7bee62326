"""The one results writer: the same environment header in every results file (``factorch bench -o``,
``factorch sweep -o``, the benchmark scripts), CSV cells, Markdown documents, and writes that are
whole or not at all."""
import csv
import errno
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import factorch as fc
import factorch.files
from factorch.measure import results
from factorch.measure.results import ENVIRONMENT_KEYS, csv_text, environment, markdown_table, markdown_text, \
    write_csv, write_markdown

ROOT = Path(__file__).resolve().parents[2]


def header_of(md: str) -> dict[str, str]:
    """The bullet lines right under the title: the environment header (then any extra lines)."""
    lines = md.splitlines()
    assert lines[0].startswith("# ") and lines[1] == ""
    bullets = []
    for line in lines[2:]:
        if not line.startswith("- "):
            break
        bullets.append(line[2:].split(": ", 1))
    return dict(bullets)


def check_header(md: str, command_start: str) -> dict[str, str]:
    head = header_of(md)
    assert list(head) == list(ENVIRONMENT_KEYS)  # the one function's keys, in its order, command last
    assert head["torch"] == torch.__version__ and head["factorch"] == fc.__version__
    assert head["python"] == ".".join(map(str, sys.version_info[:3]))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", head["date"])
    assert re.fullmatch(r"\d+\.\d\d|unknown", head["load average (1 min)"])
    assert head["device"].startswith("cpu (") and head["torch threads"].isdigit()
    assert head["command"].startswith(f"`{command_start}") and head["command"].endswith("`")
    return head


def test_cli_and_benchmark_files_carry_the_same_header(tmp_path, capsys):
    from factorch.cli.main import run

    assert run(["bench", "--model", "resnet20", "--method", "tucker2", "--rank", "0.25",
                "--exclude", "layer[12].*|conv1", "--batch", "2", "--runs", "1", "--warmup", "0", "--threads", "1",
                "--forward-only", "-o", str(tmp_path / "b")]) == 0
    bench = check_header((tmp_path / "b.md").read_text(), "factorch bench --model resnet20")
    assert bench["torch threads"] == "1" and "'layer[12].*|conv1'" in bench["command"]  # quoted as typed

    torch.manual_seed(0)
    fc.save(fc.models.create("resnet20", num_classes=10, in_channels=1), tmp_path / "model.pt")
    assert run(["sweep", "--checkpoint", str(tmp_path / "model.pt"), "--dataset", "digits",
                "--layers", "layer3.0.conv2", "--method", "tucker2", "--ranks", "4", "--test-subset", "32",
                "--batch", "2", "--runs", "1", "--warmup", "0", "--threads", "1", "-o", str(tmp_path / "s")]) == 0
    sweep = check_header((tmp_path / "s.md").read_text(), "factorch sweep --checkpoint")
    capsys.readouterr()

    # a benchmark script in its own process, writing through benchmarks/common.write_results into
    # $BENCH_RESULTS_DIR: the command it names is its own (script relative to the working directory)
    script = tmp_path / "tiny_bench.py"
    script.write_text("import common\nfrom factorch.measure.results import environment\n"
                      "env = {**environment('cpu'), 'extra knob': 'on'}\n"
                      "common.write_results('tiny', [{'variant': 'a', 'ms': 1 / 3, 'note': None}], env, ['a note'])\n")
    out = tmp_path / "results"
    paths = os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, script.name, "--tiny"], cwd=tmp_path, check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": paths, "BENCH_RESULTS_DIR": str(out)})
    md = (out / "tiny.md").read_text()
    head = header_of(md)
    assert list(head) == [k for k in ENVIRONMENT_KEYS if k != "command"] + ["extra knob", "command"]
    assert head["command"] == "`python tiny_bench.py --tiny`"
    check_header(md.replace("- extra knob: on\n", ""), "python tiny_bench.py")
    assert md.rstrip().endswith("Notes:\n\n- a note") and "| a | 0.3333 |  |" in md
    rows = list(csv.DictReader((out / "tiny.csv").open()))  # the environment as constant columns
    assert rows[0]["ms"] == "0.333333" and rows[0]["note"] == "" and rows[0]["extra knob"] == "on"
    assert all(k in rows[0] for k in ENVIRONMENT_KEYS) and rows[0]["command"] == "python tiny_bench.py --tiny"

    for cli in (bench, sweep):  # the same machine and versions, written by the same function
        assert {k: cli[k] for k in ("device", "torch", "python", "factorch", "numpy")} == \
               {k: head[k] for k in ("device", "torch", "python", "factorch", "numpy")}
    for name in ("b", "s"):  # the CLI's CSV files name the device, threads and torch in columns
        columns = next(csv.reader((tmp_path / f"{name}.csv").open()))
        assert columns[-3:] == ["torch threads", "device", "torch"]


def test_csv_cells():
    text = csv_text([{"x": 1 / 3, "n": 7, "none": None, "text": "a,b", "tiny": 1.23456789e-9, "flag": True,
                      "nan": float("nan")}], env={"device": "cpu (test)"})
    head, row = list(csv.reader(io.StringIO(text)))
    assert head == ["x", "n", "none", "text", "tiny", "flag", "nan", "device"]
    assert row == ["0.333333", "7", "", "a,b", "1.23457e-09", "True", "nan", "cpu (test)"]
    # fixed columns (the experiment's): other keys are left out, a missing key is an empty cell
    assert csv_text([{"a": 1.0, "b": 2, "skip": 3}], columns=["b", "a", "c"]) == "b,a,c\n2,1,\n"
    with pytest.raises(ValueError, match="row 1 has keys \\['z'\\]"):
        csv_text([{"a": 1}, {"a": 2, "z": 3}])
    with pytest.raises(ValueError, match="clash"):
        csv_text([{"device": 1}], env={"device": "cpu"})


def test_markdown_document_for_preformatted_cells_and_extra_lines():
    env = environment("cpu", threads=2, command="factorch experiment --model vgg7")
    table = markdown_table(["Scenario", "Acc before -> after"], [["dec@1", "93.10% -> 92.40% (-0.70)"], ["x|y", None]])
    text = markdown_text("vgg7 on digits", env, table, extra=["settings: 6 epochs", "speedup: interleaved"],
                         notes=["noisy"])
    lines = text.splitlines()
    assert lines[:2] == ["# vgg7 on digits", ""]
    n = len(ENVIRONMENT_KEYS)
    assert lines[2:2 + n] == results.header(env).splitlines()
    assert lines[1 + n] == "- command: `factorch experiment --model vgg7`" and header_of(text)["torch threads"] == "2"
    assert lines[2 + n:4 + n] == ["- settings: 6 epochs", "- speedup: interleaved"]
    assert lines[4 + n:9 + n] == ["", "| Scenario | Acc before -> after |", "|---|---|",
                                  "| dec@1 | 93.10% -> 92.40% (-0.70) |", "| x\\|y |  |"]
    assert lines[9 + n:] == ["", "Notes:", "", "- noisy"]
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["only one"]])


def test_environment_rejects_bad_input_and_forgets_the_cli_command():
    with pytest.raises(ValueError, match="not a torch device"):
        environment("gpu0")
    with pytest.raises(ValueError, match="threads"):
        environment("cpu", threads=0)
    results.record_command(["bench", "--model", "vgg 19"])
    try:
        assert environment()["command"] == "factorch bench --model 'vgg 19'"
    finally:
        results.record_command(None)
    assert environment()["command"].startswith("python ")  # this process's own command line again


def test_a_failing_write_leaves_no_half_written_file(tmp_path, monkeypatch):
    target = tmp_path / "r.csv"
    write_csv(target, [{"a": 1}])
    before = target.read_text()
    with pytest.raises(ValueError):  # a bad row: nothing is written at all
        write_csv(target, [{"a": 1}, {"b": 2}])
    assert target.read_text() == before

    real_fdopen = os.fdopen

    class DiskFull(io.RawIOBase):
        """The temp file: half of the text gets written, then the disk is full."""

        def __init__(self, fd, mode):
            self.f = real_fdopen(fd, mode)

        def write(self, data):
            self.f.write(bytes(data[:len(data) // 2]))
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.f.close()
            super().close()

    monkeypatch.setattr(factorch.files.os, "fdopen", DiskFull)
    with pytest.raises(OSError, match="r.csv.*no space left on device"):
        write_csv(target, [{"a": i} for i in range(100)])
    with pytest.raises(OSError, match="new.md.*no space left on device"):
        write_markdown(tmp_path / "new.md", "t", environment(), markdown_table(["a"], [[1]]))
    monkeypatch.undo()
    assert target.read_text() == before  # the previous file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]  # no temp, no partial new file
