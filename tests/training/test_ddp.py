"""DDP on the CPU (Gloo, 2 processes under torchrun): the decomposition is computed once and every
rank ends with identical weights."""
import json
import os
import textwrap

import torch

import factorch as fc
from factorch.distributed import Distributed
from factorch.training.events import decompose_event
from tests.conftest import needs_gloo, torchrun

pytestmark = needs_gloo

WORKER = textwrap.dedent('''
    import sys, torch, factorch as fc
    from factorch.distributed import Distributed
    from factorch.training.events import decompose_event
    dist = Distributed.from_env("cpu")
    torch.manual_seed(dist.rank)            # different weights on each rank before the event
    model = fc.models.create("lenet5", num_classes=10, in_channels=1)
    torch.manual_seed(0)
    model.load_state_dict(torch.load(sys.argv[1])) if dist.rank == 0 else None
    event = decompose_event(model, [fc.Tucker2(0.5), fc.SVD(0.5)], torch.zeros(1, 1, 16, 16), dist)
    torch.save({"state": model.state_dict(), "changed": event.changed, "skipped": event.skipped},
               f"{sys.argv[2]}/rank{dist.rank}.pt")
    dist.close()
''')


def test_decomposition_event_leaves_identical_weights_on_both_ranks(tmp_path):
    torch.manual_seed(0)
    start = fc.models.create("lenet5", num_classes=10, in_channels=1)
    torch.save(start.state_dict(), tmp_path / "start.pt")
    (tmp_path / "worker.py").write_text(WORKER)
    proc = torchrun([str(tmp_path / "worker.py"), str(tmp_path / "start.pt"), str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[:3000] + '\n...\n' + proc.stderr[-1500:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["changed"] == r1["changed"] == ["conv2", "fc1", "fc2", "fc3"] and r0["skipped"] == r1["skipped"]
    assert r0["state"].keys() == r1["state"].keys()
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    # ... and they are rank 0's decomposition: the same event in one process gives the same weights
    # (at torchrun's one thread per worker: a GEMM's sums may be ordered by the thread count)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decompose_event(start, [fc.Tucker2(0.5), fc.SVD(0.5)], torch.zeros(1, 1, 16, 16), Distributed())
    finally:
        torch.set_num_threads(threads)
    local = start.state_dict()
    assert all(torch.equal(local[k], r0["state"][k]) for k in local)


def test_torchrun_train_with_decomposition(tmp_path):
    out = tmp_path / "run"
    proc = torchrun(["-m", "factorch", "train", "--model", "lenet5", "--subset", "128", "--epochs", "3",
                      "--batch-size", "32", "--decompose-at", "1", "--method", "tucker2,svd", "--rank", "0.5",
                      "--no-keep-if-faster",
                      "--device", "cpu", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[:3000] + '\n...\n' + proc.stderr[-1500:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[1]["event"]["kind"] == "decompose"
    assert rows[1]["params"] < rows[0]["params"]
    assert proc.stdout.count("epoch 3/3") == 1  # only rank 0 prints
    assert isinstance(fc.load(out / "model.pt").conv2, fc.layers.TuckerConv2d)


def test_ddp_logged_test_accuracy_is_the_saved_models(tmp_path):
    """Batch-norm statistics differ between ranks after an epoch (each rank's last batch): the
    logged accuracy must be the saved model's on the whole test split, and printed once."""
    from factorch import data as fdata
    from factorch.training.loop import count_correct

    out = tmp_path / "run"
    proc = torchrun(["-m", "factorch", "train", "--model", "vgg-small", "--epochs", "1", "--batch-size", "8",
                      "--lr", "0.05", "--device", "cpu", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[:3000] + '\n...\n' + proc.stderr[-1500:]
    logged = json.loads((out / "metrics.jsonl").read_text())["test_acc"]
    test_set = fdata.load("digits", train=False)
    correct, total = count_correct(fc.load(out / "model.pt"), torch.utils.data.DataLoader(test_set, batch_size=256))
    assert total == len(test_set) == 360
    assert logged == correct / total
    assert proc.stdout.count("best test acc") == 1  # the summary, from rank 0 only


def test_torchrun_train_into_a_held_directory_stops_every_rank(tmp_path):
    """Rank 0 alone takes the lock; every rank must learn of the refusal (none left waiting)."""
    from factorch.files import lock_dir

    out = tmp_path / "run"
    with lock_dir(out):
        proc = torchrun(["-m", "factorch", "train", "--model", "lenet5", "--subset", "64", "--epochs", "1",
                          "--batch-size", "32", "--device", "cpu", "--out", str(out)])
    assert proc.returncode != 0
    assert proc.stderr.count(f"error: another factorch process (pid {os.getpid()}) is writing into '{out}'") == 2
    assert sorted(p.name for p in out.iterdir()) == [".factorch.lock"]


COMPRESS_WORKER = textwrap.dedent('''
    import json, sys, torch, factorch as fc
    from factorch.training import TrainConfig, train
    from factorch.training.events import ADMMPhase, Distill
    cfg = TrainConfig(model="lenet5", dataset="digits", subset=256, epochs=3, batch_size=32, lr=0.01, device="cpu",
                      weights=sys.argv[1], events=(ADMMPhase(1, rho=0.01, methods=(fc.Tucker2(0.5), fc.SVD(0.5))),
                                                   Distill()))
    history = train(cfg, sys.argv[2], log=lambda s: None)
    import torch.distributed as dist
    rank = dist.get_rank() if dist.is_initialized() else int(__import__("os").environ["RANK"])
    times = ("epoch_seconds", "train_seconds", "event_seconds", "eval_seconds", "time")
    rows = [{k: v for k, v in r.items() if k not in times} for r in history]
    json.dump(rows, open(f"{sys.argv[2]}/history{rank}.json", "w"))
''')


def test_torchrun_compress_gives_every_rank_the_same_ranks_and_metrics(tmp_path):
    """ADMM from trained weights, then distillation, under DDP: every rank returns the same
    history (the decomposition's layers and ranks, every metric, the distillation term reduced over
    the ranks)."""
    start = tmp_path / "dense.pt"
    fc.save(fc.models.create("lenet5", 10, 1), start)
    (tmp_path / "worker.py").write_text(COMPRESS_WORKER)
    proc = torchrun([str(tmp_path / "worker.py"), str(start), str(tmp_path / "run")])
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:]
    h0, h1 = (json.loads((tmp_path / "run" / f"history{r}.json").read_text()) for r in (0, 1))
    assert h0 == h1 and len(h0) == 3
    assert h0[1]["event"]["kind"] == "decompose" and all("distill_loss" in r for r in h0)
    assert "admm_distance" in h0[0]
    model = fc.load(tmp_path / "run" / "model.pt")
    assert isinstance(model.conv2, fc.layers.TuckerConv2d)
