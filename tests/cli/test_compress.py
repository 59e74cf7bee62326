"""``factorch compress``: a trained model decomposed, then recovered (fine-tuning, ADMM from the
trained weights, distillation from the dense model), one resumable run; bad input is one line and
writes nothing."""
import csv
import json

import pytest
import torch

import factorch as fc
from factorch.cli.main import run
from factorch.training import TrainConfig, train
from tests.conftest import kill_after_epochs

TIMES = ("epoch_seconds", "train_seconds", "event_seconds", "eval_seconds", "time")


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A LeNet-5 trained 3 epochs on the bundled digits (its factorch checkpoint)."""
    out = tmp_path_factory.mktemp("dense")
    train(TrainConfig(model="lenet5", dataset="digits", epochs=3, batch_size=32, lr=0.05, subset=600),
          out, log=lambda s: None)
    return out / "model.pt"


def _args(dense, *extra):
    return ["compress", "--model", "lenet5", "--weights", str(dense), "--dataset", "digits", "--subset", "600",
            "--batch-size", "32", "--method", "tucker2,svd", "--rank", "0.5", *extra]


def _results(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def test_compress_decomposes_fine_tunes_and_reports(dense, tmp_path, capsys):
    out = tmp_path / "c"
    assert run([*_args(dense, "--finetune-epochs", "2", "--distill"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    row = next(csv.DictReader((out / "results.csv").open()))
    dense_acc = fc.training.evaluate(fc.load(dense), torch.utils.data.DataLoader(
        fc.data.load("digits", train=False, subset=600, seed=0), batch_size=256))
    assert float(row["dense_acc"]) == dense_acc  # the baseline is the dense model's own accuracy
    rows = _results(out)
    assert float(row["acc"]) == rows[-1]["test_acc"] and len(rows) == 2
    assert rows[0]["event"]["kind"] == "decompose" and all("distill_loss" in r for r in rows)
    assert 0 < float(row["flops_reduction"]) < 1 and float(row["params_reduction"]) > 0.3
    assert f"dense {dense_acc:.2%} -> compressed {rows[-1]['test_acc']:.2%}" in printed
    md = (out / "results.md").read_text()
    assert "| Dense acc | Compressed acc | Difference | FLOPs reduction |" in md and "- command: `factorch compress" in md
    assert isinstance(fc.load(out / "model.pt").conv2, fc.layers.TuckerConv2d)


@pytest.mark.parametrize("extra,kill_at", [
    (["--admm-epochs", "2", "--finetune-epochs", "2", "--admm-rho", "0.01"], 1),   # killed in the ADMM phase
    (["--admm-epochs", "1", "--finetune-epochs", "3", "--distill"], 2),             # in fine-tuning, distilling
])
def test_kill_9_in_each_phase_then_resume_equals_uninterrupted(dense, tmp_path, extra, kill_at):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    argv = _args(dense, *extra, "--calibration-batches", "2")
    kill_after_epochs(argv, killed, kill_at)
    assert run([*argv, "--out", str(killed), "--resume"]) == 0
    assert run([*argv, "--out", str(clean)]) == 0
    assert _results(killed) == _results(clean)
    a, b = fc.load(killed / "model.pt").state_dict(), fc.load(clean / "model.pt").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_teacher_is_never_updated(dense, tmp_path, monkeypatch):
    """The dense teacher of a distillation stays as it was: eval mode, no gradients, not among
    the optimizer's parameters; its weights after the run are the file's."""
    from factorch.training.events import Distill, Decompose
    from factorch.training import handoff

    seen = {}
    begin = Distill.begin

    def spy(self, run, first_epoch):
        begin(self, run, first_epoch)
        seen["teacher"] = self._teacher
    monkeypatch.setattr(Distill, "begin", spy)
    rebuild = handoff.rebuild_optimizer

    def check(old, model):
        new = rebuild(old, model)
        ids = {id(p) for g in new.param_groups for p in g["params"]}
        assert not any(id(p) in ids for p in seen["teacher"].parameters())
        return new
    monkeypatch.setattr("factorch.training.run.rebuild_optimizer", check)
    cfg = TrainConfig(model="lenet5", dataset="digits", epochs=2, batch_size=32, lr=0.05, subset=600, weights=str(dense),
                      events=(Decompose(0, methods=(fc.Tucker2(0.5), fc.SVD(0.5))), Distill()))
    train(cfg, tmp_path / "run", log=lambda s: None)
    teacher, original = seen["teacher"], fc.load(dense)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), original.state_dict().values()))


def test_bad_input_is_one_line_and_writes_nothing(dense, tmp_path, capsys):
    other, three = tmp_path / "other.pt", tmp_path / "three.pt"
    torch.save(fc.models.create("mlp", 10, 1).state_dict(), other)       # another architecture's weights
    torch.save(fc.models.create("lenet5", 3, 1).state_dict(), three)     # a 3-class head for the 10 digits
    base = ["compress", "--model", "lenet5", "--dataset", "digits", "--rank", "0.5", "--out", str(tmp_path / "r")]
    for bad, message in ((["--weights", str(other)], "do not fit LeNet5"),
                         (["--weights", str(three)], "fc3.weight (3, 84) vs (10, 84)"),
                         (["--weights", str(dense), "--finetune-epochs", "0"], "--finetune-epochs must be >= 1"),
                         (["--finetune-epochs", "1"], "compress takes a trained model"),
                         (["--weights", str(dense), "--distill-temperature", "0", "--distill"],
                          "distillation temperature must be a positive number")):
        assert run([*base, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert not (tmp_path / "r").exists()


def test_experiment_scenarios_start_from_the_trained_weights(dense, tmp_path):
    out = tmp_path / "exp"
    assert run(["experiment", "--model", "lenet5", "--weights", str(dense), "--dataset", "digits", "--subset", "600",
                "--epochs", "2", "--batch-size", "32", "--lr", "0.01", "--method", "tucker2,svd", "--rank", "0.5",
                "--no-keep-if-faster", "--scenarios", "original,dec@0,admm@1,dec@0+distill", "--out", str(out)]) == 0
    rows = {r["scenario"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"original", "dec@0", "admm@1", "dec@0+distill"}
    dense_acc = _results(out / "original")[0]["test_acc"]
    assert dense_acc > 0.3  # trained weights, not a random init, from the first epoch on
    assert float(rows["dec@0"]["params"]) < float(rows["original"]["params"])
