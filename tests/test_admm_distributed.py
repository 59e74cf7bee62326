"""fc.ADMM under DDP (Gloo, 2 CPU processes under torchrun): rank 0 decides the ranks, Z, U and
the decomposition; every rank holds the same Z, U and weights."""
import json
import textwrap

import pytest
import torch

import factorch as fc
from tests.test_distributed import _torchrun

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with Gloo is not available")

METHODS = "[fc.Tucker2(fc.Energy(0.6)), fc.SVD(fc.Energy(0.6))]"
WORKER = textwrap.dedent(f'''
    import sys, torch, torch.nn.functional as F, factorch as fc
    from factorch.distributed import Distributed
    dist = Distributed.from_env("cpu")
    torch.manual_seed(0)
    model = fc.models.create("lenet5", num_classes=10, in_channels=1)
    if dist.rank == 1:  # other weights on rank 1: a rank-2 fc1 (the Energy rule would give it rank <= 2)
        with torch.no_grad():
            model.fc1.weight.copy_(torch.randn(120, 2) @ torch.randn(2, 400))
    admm = fc.ADMM(model, {METHODS}, rho=0.05)
    net = torch.nn.parallel.DistributedDataParallel(model)  # rank 0's weights everywhere from here
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1 + dist.rank)  # each rank its own data
    for epoch in range(2):
        admm.update()
        for _ in range(4):
            x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
            loss = F.cross_entropy(net(x), y) + admm.penalty()
            opt.zero_grad(); loss.backward(); opt.step()
    trained = {{"state": {{k: v.clone() for k, v in model.state_dict().items()}}, "admm": admm.state_dict(),
               "ranks": admm.ranks, "distance": admm.distance()}}
    if dist.rank == 1:  # rank 1's constrained weights drift: the update and the decomposition are still rank 0's
        with torch.no_grad():
            for name in admm.ranks:
                w = model.get_submodule(name).weight
                w.add_(0.01 * torch.randn_like(w))
    admm.update()
    drifted = admm.state_dict()
    report = admm.decompose_()
    torch.save({{"trained": trained, "drifted": drifted, "final": model.state_dict(),
                "decomposed": [(r.name, r.ranks) for r in report.decomposed]}}, f"{{sys.argv[1]}}/rank{{dist.rank}}.pt")
    dist.close()
''')


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_z_u_and_weights_identical_on_both_ranks(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    proc = _torchrun([str(tmp_path / "worker.py"), str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    torch.manual_seed(0)
    local = fc.ADMM(fc.models.create("lenet5", num_classes=10, in_channels=1), eval(METHODS))
    assert r0["trained"]["ranks"] == r1["trained"]["ranks"] == local.ranks  # rank 0's ranks, not rank 1's
    assert local.ranks["fc1"][0] > 2
    for key in ("trained", "drifted", "final", "decomposed"):
        assert _equal(r0[key], r1[key]), key
    z, u = r0["drifted"]["layers"]["fc1"]["z"], r0["drifted"]["layers"]["fc1"]["u"]
    assert u.abs().max() > 0 and torch.linalg.matrix_rank(z.double(), rtol=1e-5) == local.ranks["fc1"][0]
    assert [n for n, _ in r0["decomposed"]] == ["conv2", "fc1", "fc2", "fc3"]


def test_torchrun_train_with_admm(tmp_path):
    out = tmp_path / "run"
    proc = _torchrun(["-m", "factorch", "train", "--model", "lenet5", "--subset", "128", "--epochs", "3",
                      "--batch-size", "32", "--admm-until", "2", "--method", "tucker2,svd", "--rank", "0.5",
                      "--device", "cpu", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [bool(r.get("admm_distance")) for r in rows] == [True, True, False]
    assert rows[2]["event"]["kind"] == "decompose" and rows[2]["params"] < rows[1]["params"]
    assert proc.stdout.count("epoch 3/3") == 1  # only rank 0 prints
    assert isinstance(fc.load(out / "model.pt").conv2, fc.layers.TuckerConv2d)
