"""Tucker-3 (Gobieski et al.): the spatial mode factorized too. Full ranks reproduce the conv over the grid,
HOOI is no worse than TensorLy's ``tucker``, autograd's gradients are the project's formulas, rules act
per mode, bad input is one clear error, and the public names work as DESIGN.md writes them."""
import numpy as np
import pytest
import torch
from torch import nn

import factorch as fc
from factorch.cli.main import run
from factorch.decompositions import tucker2, tucker2_to_tensor, tucker3, tucker3_to_tensor
from factorch.layers import Tucker3Conv2d
from tests.layers.test_generic import GRID

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups,bias", [g for g in GRID if g[0] != 1])
def test_full_ranks_reproduce_the_conv_over_the_grid(kernel, stride, padding, dilation, groups, bias):
    conv = nn.Conv2d(8, 12, kernel, stride, padding, dilation, groups, bias).double()
    n, c, kh, kw = conv.weight.shape
    layer = Tucker3Conv2d.from_dense(conv, (n // groups, c, kh * kw))
    x = torch.randn(2, 8, 13, 15, dtype=torch.float64)
    assert (layer(x) - conv(x)).abs().max() < 1e-10 * max(conv(x).abs().max().item(), 1.0)


def _structured(n=48, c=40, d=9, decay=6.0):
    """A kernel with decaying spectra on all three modes plus noise, like a trained one."""
    core = torch.randn(n, c, d, dtype=torch.float64)
    for k, size in enumerate((n, c, d)):
        shape = [1, 1, 1]
        shape[k] = size
        core = core * torch.exp(-torch.arange(size, dtype=torch.float64) / decay).reshape(shape)
    qs = [torch.linalg.qr(torch.randn(s, s, dtype=torch.float64)).Q for s in (n, c, d)]
    return tucker3_to_tensor(core, *qs) + 1e-3 * torch.randn(n, c, d, dtype=torch.float64)


KERNELS = {"random": lambda: torch.randn(32, 24, 9, dtype=torch.float64), "structured": _structured,
           "5x5": lambda: torch.randn(16, 24, 25, dtype=torch.float64), "wide": lambda: torch.randn(160, 144, 9, dtype=torch.float64)}


@pytest.mark.parametrize("kind", sorted(KERNELS))
@pytest.mark.parametrize("ranks", [(4, 3, 2), (10, 8, 4), (16, 12, 6)])
def test_hooi_no_worse_than_tensorly_tucker(kind, ranks):
    import tensorly as tl
    from tensorly.decomposition import tucker

    w = KERNELS[kind]()
    ours = float((tucker3_to_tensor(*tucker3(w, ranks)) - w).norm() / w.norm())
    with tl.backend_context("numpy"):
        core, factors = tucker(w.numpy(), rank=list(ranks))
    theirs = tucker3_to_tensor(torch.from_numpy(np.asarray(core)), *(torch.from_numpy(np.asarray(f)) for f in factors))
    assert ours <= float((theirs - w).norm() / w.norm()) + 1e-12


def test_full_spatial_rank_is_tucker2():
    """D' = D: an orthogonal W_D folds into the core, so the error is Tucker-2's
    (docs/math.md, "Tucker-3 with a factorized spatial mode")."""
    w = _structured()
    t2 = float((tucker2_to_tensor(*tucker2(w.reshape(48, 40, 3, 3), (10, 8))).reshape(w.shape) - w).norm())
    t3 = float((tucker3_to_tensor(*tucker3(w, (10, 8, 9))) - w).norm())
    assert abs(t2 - t3) < 1e-9 * float(w.norm())


def _vec(t):
    """Column-major vec (the first index varies fastest), as in the project."""
    return t.permute(*reversed(range(t.dim()))).reshape(-1)


def _unfold(t, k):
    """Kolda's mode-k unfolding: columns ordered with the earlier remaining modes varying fastest."""
    rest = [i for i in reversed(range(t.dim())) if i != k]
    return t.permute(k, *rest).reshape(t.shape[k], -1)


def test_autograd_gradients_are_the_seeds_formulas():
    """vec(W) = (W_D kron W_C kron W_N) vec(G) (Gobieski et al.). For a loss on the layer's output with
    E = dL/dW (from the dense conv with that kernel): dL/dvec(G) = (W_D kron W_C kron W_N)^T vec(E),
    dL/dW_N = E_(0) (W_D kron W_C) G_(0)^T, dL/dW_C = E_(1) (W_D kron W_N) G_(1)^T,
    dL/dW_D = E_(2) (W_C kron W_N) G_(2)^T; and the project's directional derivatives,
    (1 kron W_C kron W_N) vec(G) etc., are the derivatives of vec(W) along all-ones directions."""
    torch.manual_seed(0)
    layer = Tucker3Conv2d(5, 6, 3, rank=(3, 2, 4), padding=1).double()
    x = torch.randn(2, 5, 7, 7, dtype=torch.float64)
    target = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    (layer(x) - target).pow(2).sum().backward()
    g, w_n, w_c, w_d = (layer.core.core.detach(), layer.last.weight.detach()[:, :, 0, 0],
                        layer.first.weight.detach()[:, :, 0, 0].T.contiguous(), layer.core.basis.detach()[0])
    kron = torch.kron(w_d, torch.kron(w_c, w_n))
    w = tucker3_to_tensor(g, w_n, w_c, w_d)  # (N, C, D)
    assert torch.allclose(_vec(w), kron @ _vec(g), atol=1e-12)
    dense = nn.Conv2d(5, 6, 3, padding=1).double()
    with torch.no_grad():
        dense.weight.copy_(w.reshape(6, 5, 3, 3))
        dense.bias.copy_(layer.last.bias)
    (dense(x) - target).pow(2).sum().backward()
    e = dense.weight.grad.reshape(6, 5, 9)
    assert torch.allclose(_vec(layer.core.core.grad), kron.T @ _vec(e), atol=1e-9)
    assert torch.allclose(layer.last.weight.grad[:, :, 0, 0], _unfold(e, 0) @ torch.kron(w_d, w_c) @ _unfold(g, 0).T,
                          atol=1e-9)
    assert torch.allclose(layer.first.weight.grad[:, :, 0, 0].T,
                          _unfold(e, 1) @ torch.kron(w_d, w_n) @ _unfold(g, 1).T, atol=1e-9)
    assert torch.allclose(layer.core.basis.grad[0], _unfold(e, 2) @ torch.kron(w_c, w_n) @ _unfold(g, 2).T, atol=1e-9)
    # the project's formulas: d vec(W) along all-ones directions of each factor and of the core
    f = lambda gg, wn, wc, wd: _vec(tucker3_to_tensor(gg, wn, wc, wd))  # noqa: E731
    ones = torch.ones_like
    along = lambda i, t: torch.func.jvp(f, (g, w_n, w_c, w_d), tuple(ones(a) if j == i else torch.zeros_like(a)  # noqa
                                                                         for j, a in enumerate((g, w_n, w_c, w_d))))[1]
    assert torch.allclose(along(3, None), torch.kron(ones(w_d), torch.kron(w_c, w_n)) @ _vec(g), atol=1e-10)
    assert torch.allclose(along(2, None), torch.kron(w_d, torch.kron(ones(w_c), w_n)) @ _vec(g), atol=1e-10)
    assert torch.allclose(along(1, None), torch.kron(w_d, torch.kron(w_c, ones(w_n))) @ _vec(g), atol=1e-10)
    assert torch.allclose(along(0, None), kron @ torch.ones(g.numel(), dtype=g.dtype), atol=1e-10)


def test_rules_act_on_each_modes_singular_values():
    """A kernel of exact multilinear rank (6, 4, 3) plus noise: EVBMF per mode finds (6, 4, 3)."""
    torch.manual_seed(0)
    core = torch.randn(6, 4, 3, dtype=torch.float64)
    w = tucker3_to_tensor(core, torch.randn(64, 6, dtype=torch.float64), torch.randn(48, 4, dtype=torch.float64),
                          torch.randn(9, 3, dtype=torch.float64))
    conv = nn.Conv2d(48, 64, 3).double()
    with torch.no_grad():
        conv.weight.copy_((w + 0.01 * w.std() * torch.randn_like(w)).reshape(64, 48, 3, 3))
    assert Tucker3Conv2d.resolve_rank(conv, fc.EVBMF()) == (6, 4, 3)
    layer = Tucker3Conv2d.from_dense(conv, fc.Energy(0.999))
    w = conv.weight.detach()
    assert layer.ranks[2] <= 3 and float((layer.dense_weight() - w).norm() / w.norm()) < 0.05


@pytest.mark.parametrize("make,match", [
    (lambda: fc.Tucker2((4, 4, 2)), "Tucker2: a rank tuple must hold 2 ints"),
    (lambda: fc.layers.TuckerConv2d.from_dense(nn.Conv2d(8, 8, 3), (4, 4, 2)), "has 3 ranks; TuckerConv here has 2"),
    (lambda: Tucker3Conv2d(8, 8, 3, rank=(2, 2, 10)), r"rank 10 of mode 'spatial' must be in \[1, 9\]"),
    (lambda: Tucker3Conv2d.from_dense(nn.Conv2d(8, 8, 3), (2, 2, 10)), "exceeds the full rank of mode 'spatial' \\(9\\)"),
    (lambda: Tucker3Conv2d(8, 8, 1, rank=2), "Tucker-3 needs a kernel larger than 1x1"),
    (lambda: Tucker3Conv2d.from_dense(nn.Conv2d(8, 8, 1), 2), "Tucker-3 needs a kernel larger than 1x1"),
    (lambda: fc.decompose_(nn.Sequential(nn.Conv2d(8, 8, 1)), {"0": fc.Tucker3(2)}), "1x1 conv: Tucker-3 needs"),
])
def test_bad_input_is_one_clear_error(make, match):
    with pytest.raises(ValueError, match=match) as e:
        make()
    assert "\n" not in str(e.value)


def test_public_names_and_whole_model(tmp_path):
    conv = nn.Conv2d(16, 32, 3, padding=1)
    dense = fc.layers.Tucker3Conv2d.from_dense(conv, rank=(8, 6, 4)).to_dense()
    assert isinstance(dense, nn.Conv2d) and dense.weight.shape == conv.weight.shape
    layer = fc.layers.Tucker3Conv2d(64, 128, 3, rank=(32, 16, 4), stride=2, padding=1)
    assert layer(torch.zeros(2, 64, 9, 9)).shape == (2, 128, 5, 5)
    model = fc.models.create("resnet20")
    x = torch.randn(2, 3, 32, 32)
    report = fc.decompose_(model, [fc.Tucker3(0.3), fc.SVD(0.5)], example_input=x[:1])
    assert isinstance(model.layer2[1].conv1, Tucker3Conv2d) and all(r.decomposed for r in report.rows[1:-1])
    assert "below min_share" in report.rows[-1].skipped  # the 64 -> 10 head: too small to matter
    assert fc.count(model, x[:1]).macs == sum(r.macs_after if r.decomposed else r.macs_before for r in report.rows)
    fc.save(model, tmp_path / "t3.pt")
    assert torch.equal(fc.load(tmp_path / "t3.pt").eval()(x), model.eval()(x))


def test_cli_method_tucker3(tmp_path, capsys):
    out = tmp_path / "t3.pt"
    assert run(["decompose", "--model", "resnet20", "--method", "tucker3,svd", "--rank", "0.25", "-o", str(out)]) == 0
    assert "tucker3" in capsys.readouterr().out
    assert isinstance(fc.load(out).layer3[0].conv2, Tucker3Conv2d)
    assert run(["decompose", "--model", "resnet20", "--method", "tucker3", "--rank", "4,4", "-o", str(out)]) == 2
    assert "Tucker3: a rank tuple must hold 3 ints" in capsys.readouterr().err
