"""A request that would do nothing is an error, not a quiet success: an --exclude regex that
matches no layer, a decompose that changes no layer, a latency input shape holding the batch."""
import pytest
from torch import nn

import factorch as fc
from factorch.cli.main import run
from factorch.measure.latency import compare, measure
from factorch.selection import exclude_filter

pytestmark = pytest.mark.usefixtures("one_thread")  # decompositions: LAPACK on a shared machine


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_exclude_regex_must_match_a_layer():
    model = fc.models.create("resnet20")
    keep = exclude_filter(["conv1", r"layer3\..*"], model)
    assert not keep(model.conv1, "conv1") and not keep(None, "layer3.0.conv1") and keep(None, "layer1.0.conv1")
    with pytest.raises(ValueError, match=r"exclude regex 'layer3' matches no layer .*its layers: conv1, bn1, "
                                         r"layer1\.0\.conv1, .*\(\d+ in all\)"):
        exclude_filter(["layer3"], model)  # a container, not a layer: the regex must match whole layer names
    with pytest.raises(ValueError, match="invalid"):
        exclude_filter(["("])
    assert exclude_filter([], model) is None and exclude_filter(["nomatch"]) is not None  # no model: syntax only


@pytest.mark.parametrize("command", [
    ["decompose", "--model", "lenet5", "--in-channels", "1", "--rank", "0.5", "-o", "{out}"],
    ["bench", "--model", "lenet5", "--in-channels", "1", "--rank", "0.5", "--runs", "1", "--warmup", "0", "-o", "{out}"],
])
def test_cli_exclude_matching_nothing_is_an_error(tmp_path, capsys, command):
    out = tmp_path / "out"
    assert run([a.replace("{out}", str(out)) for a in command] + ["--exclude", "no.such.layer"]) == 2
    line = _one_error_line(capsys)
    assert "'no.such.layer' matches no layer" in line and "conv1" in line
    assert not list(tmp_path.iterdir())


def test_cli_decompose_that_changes_nothing_writes_nothing(tmp_path, capsys):
    out = tmp_path / "same.pt"
    assert run(["decompose", "--model", "lenet5", "--in-channels", "1", "--method", "tucker2", "--rank", "evbmf",
                "-o", str(out)]) == 2
    printed = capsys.readouterr()
    err = printed.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no layer was decomposed (")
    assert "rank 0 from EVBMF" in err[0] and "Tucker2 does not handle Linear" in err[0]
    assert f"nothing was written to {out}" in err[0] and "load trained weights" in err[0]
    assert "skipped: rank 0" in printed.out  # the per-layer report is still shown
    assert not out.exists()


def test_compare_refuses_an_input_shape_with_the_batch():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    timer = lambda module, call: (call(), 1e-3)[1]  # noqa: E731
    profiler = fc.Profiler(warmup=0, runs=1, timer=timer)
    with pytest.raises(ValueError, match=r"input_shape \(1, 3, 8, 8\) includes the batch: .* \(3, 8, 8\)"):
        compare({"a": conv, "b": conv}, (1, 3, 8, 8), profiler)
    with pytest.raises(ValueError, match="includes the batch"):
        measure(conv, (2, 3, 8, 8), fc.Profiler(warmup=0, runs=1, backward=True, timer=timer))
    assert measure(conv, (3, 8, 8), profiler).forward == 1e-3
    with pytest.raises(RuntimeError):  # a shape that is wrong in another way keeps torch's own error
        measure(conv, (5, 8, 8), profiler)


def test_calibration_flags_without_calibration_are_refused(tmp_path, capsys):
    """Calibration flags on a command that calibrates nothing would silently give weight-only
    factors; a split smaller than asked is said, not silently capped."""
    out = tmp_path / "small.pt"
    base = ["decompose", "--model", "lenet5", "--in-channels", "1", "--method", "tucker2,svd", "--rank", "0.5",
            "-o", str(out)]
    for extra in (["--calibration-batches", "2"], ["--calibration-batch-size", "16"], ["--no-sequential"]):
        assert run([*base, *extra]) == 2
        assert _one_error_line(capsys).endswith("need(s) --calibration DATASET (without it the factors are fitted to "
                                                "the weights alone)")
        assert not out.exists()
    assert run([*base, "--calibration", "digits", "--calibration-batches", "1000000"]) == 0
    note = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert note == ["note: the training split of digits has 1,437 examples: 12 calibration batch(es) of up to 128 "
                    "instead of the 1,000,000 asked"]
    assert run([*base, "--calibration", "digits", "--calibration-batches", "1", "--calibration-batch-size", "1"]) == 2
    assert "calibration needs at least 2 examples (a quarter is held out); 1 batch(es) of 1 is 1" in \
        _one_error_line(capsys)


@pytest.mark.parametrize("option,match", [
    (["--runtime", "eager"], "--runtime says what --deploy times its choices in"),
    (["--pad-to", "16"], "--pad-to adds a form for --deploy to time"),
])
def test_export_deploy_options_without_deploy_are_an_error(tmp_path, capsys, option, match):
    out = tmp_path / "m.pt2"
    assert run(["export", "--model", "lenet5", "--in-channels", "1", "--format", "exported-program", *option,
                "-o", str(out)]) == 2
    assert match in _one_error_line(capsys)
    assert not out.exists()
