"""``SVDMultiheadAttention`` against ``nn.MultiheadAttention``: the generic layer tests
(tests/layers/test_generic.py) call a layer on one tensor and read its ``weight``; an attention takes
a query, a key and a value and has four projection weights, so the same properties are checked here
with its inputs: full-rank equality over every option of the dense layer (fp64 1e-10, fp32 1e-5, in
eval mode and, at one seed, in training mode with dropout), Eckart-Young error at reduced rank,
exact low rank recovered, gradients, ``to_dense`` after training, save/load, dtype, the
from-scratch init and balance, counts, and bad input."""
import itertools

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.layers import SVDMultiheadAttention
from factorch.layers.attention_spec import projection_weights
from factorch.rank import resolve
from factorch.registry import candidate

pytestmark = pytest.mark.usefixtures("one_thread")
E, H, LQ, LK, N = 16, 4, 5, 7, 3


def attention(dtype=torch.float64, **options) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    dense = nn.MultiheadAttention(E, H, **options).to(dtype)
    with torch.no_grad():  # nonzero biases everywhere
        for p in dense.parameters():
            if p.dim() == 1:
                p.normal_()
    return dense


def full(dense: nn.MultiheadAttention) -> SVDMultiheadAttention:
    return SVDMultiheadAttention.from_dense(dense, 10 ** 6)


def inputs(dense, lq=LQ, lk=LK, batch=N, dtype=torch.float64):
    """query, key, value shaped for ``dense`` (batch None: unbatched)."""
    def shaped(n, d):
        if batch is None:
            return torch.randn(n, d, dtype=dtype)
        return torch.randn((batch, n, d) if dense.batch_first else (n, batch, d), dtype=dtype)
    return shaped(lq, E), shaped(lk, dense.kdim), shaped(lk, dense.vdim)


def masks(kind: str, lq=LQ, lk=LK, batch=N, dtype=torch.float64):
    """(key_padding_mask, attn_mask) of one kind; every query keeps at least one key."""
    pad = torch.zeros(batch, lk, dtype=torch.bool)
    pad[0, -2:] = True
    causal = torch.ones(lq, lk, dtype=torch.bool).triu(1)
    if kind == "bool":
        return pad, causal
    if kind == "float":
        return torch.randn(batch, lk, dtype=dtype), torch.randn(batch * H, lq, lk, dtype=dtype)
    if kind == "padding":
        return pad, None
    return None, None


def close(a, b, tol):
    assert (a is None) == (b is None)
    if a is not None:
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= tol * max(b.abs().max().item(), 1.0)


OPTIONS = [dict(), dict(batch_first=True), dict(bias=False), dict(add_bias_kv=True), dict(add_zero_attn=True),
           dict(kdim=10, vdim=24, batch_first=True), dict(add_bias_kv=True, add_zero_attn=True, kdim=12, vdim=12)]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("kind", ["none", "bool", "float", "padding"])
def test_full_rank_equals_the_dense_attention(options, kind):
    dense = attention(**options).eval()
    layer = full(dense).eval()
    q, k, v = inputs(dense)
    pad, mask = masks(kind)
    for need_weights, average in itertools.product((True, False), (True, False)):
        want = dense(q, k, v, key_padding_mask=pad, need_weights=need_weights, attn_mask=mask,
                     average_attn_weights=average)
        got = layer(q, k, v, key_padding_mask=pad, need_weights=need_weights, attn_mask=mask,
                    average_attn_weights=average)
        close(got[0], want[0], 1e-10)
        close(got[1], want[1], 1e-10)


@pytest.mark.parametrize("need_weights", [True, False])
def test_is_causal_self_attention_unbatched_and_float32(need_weights):
    dense = attention(batch_first=True).eval()
    layer = full(dense).eval()
    x = torch.randn(N, LQ, E, dtype=torch.float64)
    causal = torch.ones(LQ, LQ, dtype=torch.bool).triu(1)
    for pad in (None, masks("padding", lk=LQ)[0]):
        want = dense(x, x, x, key_padding_mask=pad, attn_mask=causal, is_causal=True, need_weights=need_weights)
        got = layer(x, x, x, key_padding_mask=pad, attn_mask=causal, is_causal=True, need_weights=need_weights)
        close(got[0], want[0], 1e-10)
    q, k, v = inputs(dense, batch=None)  # unbatched: batch_first does not apply
    for got, want in zip(layer(q, k, v, need_weights=need_weights), dense(q, k, v, need_weights=need_weights)):
        close(got, want, 1e-10)
    dense32, x32 = dense.float(), x.float()
    close(full(dense32).eval()(x32, x32, x32)[0], dense32(x32, x32, x32)[0], 1e-5)


@pytest.mark.parametrize("need_weights", [True, False])
def test_dropout_in_training_mode_is_the_dense_layers(need_weights):
    """Same seed, same dropout masks: the layer draws from the RNG exactly where the dense one does."""
    dense = attention(dropout=0.3, batch_first=True).train()
    layer = full(dense).train()
    q, k, v = inputs(dense)
    torch.manual_seed(5)
    want = dense(q, k, v, need_weights=need_weights)
    torch.manual_seed(5)
    got = layer(q, k, v, need_weights=need_weights)
    close(got[0], want[0], 1e-10)
    close(got[1], want[1], 1e-10)
    layer.eval()
    assert not torch.equal(layer(q, k, v)[0], got[0])  # dropout acted in training mode


def test_reduced_ranks_lose_exactly_the_discarded_singular_values():
    dense = attention(kdim=12, vdim=20)
    ranks = (3, 5, 7, 2)
    layer = SVDMultiheadAttention.from_dense(dense, ranks)
    assert layer.ranks == ranks
    for pair, w, r in zip((layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj), projection_weights(dense), ranks):
        w = w.detach()
        s = torch.linalg.svdvals(w)
        assert abs(float((pair.dense_weight() - w).norm()) - float(s[r:].norm())) < 1e-10
    kernel = SVDMultiheadAttention.dense_kernel(dense)
    assert kernel.shape == (E * E + E * 12 + E * 20 + E * E,)
    q, k, v = inputs(dense)
    rebuilt = layer.to_dense()
    assert isinstance(rebuilt, nn.MultiheadAttention) and rebuilt.kdim == 12 and rebuilt.vdim == 20
    for got, want in zip(layer(q, k, v), rebuilt(q, k, v)):
        close(got, want, 1e-10)
    assert (layer(q, k, v)[0] - dense(q, k, v)[0]).abs().max() > 1e-3  # it is an approximation


def test_an_exactly_low_rank_attention_is_recovered():
    source = SVDMultiheadAttention(E, H, (2, 3, 4, 5), add_bias_kv=True).double()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    target = source.to_dense()
    layer = SVDMultiheadAttention.from_dense(target, source.ranks)
    assert float((layer.dense_weight() - source.dense_weight()).norm() / source.dense_weight().norm()) < 1e-12
    q, k, v = inputs(target)
    close(layer(q, k, v)[0], source(q, k, v)[0], 1e-10)


def test_gradients_reach_every_factor_and_to_dense_is_lossless_after_training():
    dense = attention(add_bias_kv=True, batch_first=True)
    layer = SVDMultiheadAttention.from_dense(dense, 3)
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(3):
        q, k, v = inputs(dense)
        loss = (layer(q, k, v)[0] - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
    rebuilt = layer.to_dense()
    q, k, v = inputs(dense)
    for got, want in zip(rebuilt(q, k, v), layer(q, k, v)):
        close(got, want, 1e-10)


class Cross(nn.Module):
    """One tensor in: attends from its first 3 tokens to all of them (a cross-attention)."""

    def __init__(self, **options):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, H, batch_first=True, **options)

    def forward(self, x):
        return self.attn(x[:, :3], x, x)[0]


def test_save_and_load_rebuild_the_attention(tmp_path):
    model = Cross(add_zero_attn=True)
    fc.decompose_(model, fc.SVD((4, 5, 6, 7)), example_input=torch.zeros(1, 6, E), min_share=0)
    assert isinstance(model.attn, SVDMultiheadAttention)
    fc.save(model, tmp_path / "m.pt")
    loaded = fc.load(tmp_path / "m.pt", model=Cross(add_zero_attn=True))
    assert isinstance(loaded.attn, SVDMultiheadAttention) and loaded.attn.ranks == (4, 5, 6, 7)
    x = torch.randn(2, 6, E)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(fc.CheckpointError, match="does not match the checkpoint's SVDMultiheadAttention"):
        fc.load(tmp_path / "m.pt", model=Cross())


def test_from_dense_keeps_dtype_device_and_mode():
    for dtype in (torch.float32, torch.bfloat16):
        dense = attention(dtype=dtype).train(False)
        layer = SVDMultiheadAttention.from_dense(dense, 2)
        assert all(p.dtype == dtype for p in layer.parameters()) and not layer.training
        assert layer.to_dense().in_proj_weight.dtype == dtype


@pytest.mark.parametrize("options", [dict(), dict(kdim=32, vdim=48)])
def test_from_scratch_kernels_have_the_dense_attentions_init_variance(options):
    """Each projection's kernel has the variance ``nn.MultiheadAttention`` initialises it with
    (Xavier over the packed (3E, E) in-projection, or per weight; PyTorch's Linear default for the
    output), biases zero. 100 draws of a 64-wide layer: within 15 %."""
    torch.manual_seed(0)
    e = 64
    layer = SVDMultiheadAttention(e, 4, (16, 16, 16, 16), **options)
    c_k, c_v = options.get("kdim", e), options.get("vdim", e)
    want = ([1 / (2 * e)] * 3 if not options else [1 / e, 2 / (e + c_k), 2 / (e + c_v)]) + [1 / (3 * e)]
    draws = [[] for _ in range(4)]
    for _ in range(100):
        layer.reset_parameters()
        for k, pair in enumerate((layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj)):
            draws[k].append(pair.dense_weight().flatten())
    for got, expected in zip(draws, want):
        assert abs(float(torch.cat(got).pow(2).mean()) / expected - 1) < 0.15
    assert not layer.in_proj_bias.any() and not layer.out_proj.last.bias.any()


def test_balance_moves_each_projections_kernel_equally_through_both_factors():
    torch.manual_seed(0)
    layer = SVDMultiheadAttention(E, H, 4).double()
    layer.init_factors()
    before = layer.dense_weight()
    layer.balance_()
    assert float((layer.dense_weight() - before).norm() / before.norm()) < 1e-13
    for pair in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj):
        x = torch.randn(4, pair.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        grads = torch.autograd.grad(pair(x).sum(), [pair.first.weight, pair.last.weight])
        w0, moves = pair.dense_weight(), []
        with torch.no_grad():
            for p, g in zip((pair.first.weight, pair.last.weight), grads):
                p.sub_(g)
                moves.append(float((pair.dense_weight() - w0).norm()))
                p.add_(g)
        assert max(moves) / min(moves) < 1.5  # balanced on a seeded probe; this one is a fresh draw


def test_counts_add_the_attention_products_to_the_factor_linears():
    dense = attention(add_bias_kv=True, batch_first=True)
    layer = SVDMultiheadAttention.from_dense(dense, (2, 3, 4, 5))
    q, k, v = inputs(dense, batch=2)
    counted = fc.count(layer, (q, k, v))
    space = candidate(fc.SVD(1), dense).space(dense)
    assert counted.macs == space.macs(layer.ranks, (LQ, LK))
    products = 2 * LQ * (LK + 1) * E
    assert counted.macs == LQ * (2 + 5) * 2 * E + LK * (3 + 4) * 2 * E + products
    assert fc.count(dense, (q, k, v)).macs == LQ * 2 * E * E + LK * 2 * E * E + products


@pytest.mark.parametrize("bad,match", [
    (dict(rank=(1, 2, 3)), r"SVDMultiheadAttention has 4 modes \(q 16, k 16, v 16, out 16\)"),
    (dict(rank=17), r"SVDMultiheadAttention rank 17 of mode 'q' must be in \[1, 16\]"),
    (dict(rank=0.5), "takes int ranks"),
    (dict(rank=2, num_heads=3), "embed_dim 16 is not divisible by num_heads 3"),
])
def test_bad_structure_is_one_error(bad, match):
    args = {**dict(embed_dim=E, num_heads=H, rank=2), **bad}
    with pytest.raises(ValueError, match=match):
        SVDMultiheadAttention(**args)


def test_bad_calls_are_one_error_naming_the_layer():
    layer = SVDMultiheadAttention(E, H, 2)
    x = torch.randn(LQ, N, E)
    with pytest.raises(ValueError, match="SVDMultiheadAttention: is_causal is a hint that attn_mask is causal"):
        layer(x, x, x, is_causal=True)
    with pytest.raises(ValueError, match="SVDMultiheadAttention: attention masks must be bool or floating point"):
        layer(x, x, x, attn_mask=torch.zeros(LQ, LQ, dtype=torch.int64))
    with pytest.raises(ValueError, match="SVDMultiheadAttention: the query's last dimension is not embed_dim"):
        layer(x[..., :8], x, x)


def test_rank_rules_read_each_projections_spectrum():
    dense = attention(kdim=8)
    with torch.no_grad():  # k exactly rank 2
        dense.k_proj_weight.copy_(torch.randn(E, 2, dtype=torch.float64) @ torch.randn(2, 8, dtype=torch.float64))
    space = candidate(fc.SVD(1), dense).space(dense)
    assert resolve(fc.Energy(1.0), space).ranks == (E, 2, E, E)
    ranks = resolve(fc.Tolerance(0.3), space).ranks
    layer = SVDMultiheadAttention.from_dense(dense, ranks)
    kernel = SVDMultiheadAttention.dense_kernel(dense)
    assert float((layer.dense_weight() - kernel).norm() / kernel.norm()) <= 0.3 + 1e-12
    assert ranks[1] <= 2
