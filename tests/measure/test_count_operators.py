"""fc.count counts every multiply-add a model performs (``docs/math.md``, "Counting multiply-adds"):
convs of every dimensionality and transposed convs over every registered geometry, linear layers and
functional matrix products, attention on every path PyTorch takes (fused eval paths included),
attributed to the module that runs them; multiplying operators without a formula are reported,
never counted as 0."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import factorch as fc
from factorch.layers.conv_spec import ConvSpec
from tests.cases import DENSE

CONVS = [pytest.param(make, shape, id=name) for name, make, shape in DENSE if not name.startswith("linear")]


def _flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("make,shape", CONVS)
def test_every_conv_geometry_is_counted_by_its_formula(make, shape):
    """``out_elements (C/g) prod(k)``; transposed ``in_elements (N/g) prod(k)``; FlopCounterMode agrees."""
    conv = make()
    x = torch.zeros(2, *shape)
    spec = ConvSpec.of(conv)
    out = conv(x)
    k = math.prod(spec.kernel_size)
    expected = (x[0].numel() * (spec.out_channels // spec.groups) * k if spec.transposed
                else out[0].numel() * (spec.in_channels // spec.groups) * k)
    counted = fc.count(conv, x)
    assert counted.macs == expected == spec.macs(shape) and not counted.unattributed
    assert _flop_counter_macs(conv, x) == 2 * expected  # both per batch of 2


def test_output_padding_adds_no_macs():
    conv = nn.ConvTranspose2d(8, 16, 3, stride=2, output_padding=1)
    assert fc.count(conv, torch.zeros(1, 8, 5, 5)).macs == 5 * 5 * 8 * 16 * 9 == 28_800


class ViTAttention(nn.Module):
    """A ViT-style attention (no nn.MultiheadAttention): qkv projection, ``q @ k^T``, softmax, ``@ v``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, e = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (e // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, e))


class SDPA(ViTAttention):
    def forward(self, x):
        b, n, e = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, e))


class Einsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 5))

    def forward(self, x):  # (B, L, 6) -> (B, L, 5), then a Gram matrix (B, L, L)
        y = torch.einsum("blc,cd->bld", x, self.weight)
        return torch.einsum("bld,bmd->blm", y, y) + F.linear(x, self.weight.T)[..., :1]


def _attention_macs(tokens: int, dim: int) -> int:
    """Per example: qkv ``3 L E^2``, ``Q K^T`` and ``softmax V`` ``L^2 E`` each (all heads), proj ``L E^2``."""
    return 3 * tokens * dim * dim + 2 * tokens * tokens * dim + tokens * dim * dim


@pytest.mark.parametrize("cls", [ViTAttention, SDPA])
def test_attention_written_with_matmuls_or_sdpa_is_counted_and_attributed(cls):
    model = nn.Sequential(cls(32, 4))
    counts = fc.count(model, torch.zeros(3, 10, 32))
    rows = {r.name: r for r in counts.layers}
    assert counts.macs == _attention_macs(10, 32)
    assert rows["0"].macs == 2 * 10 * 10 * 32  # the products in the block's own forward, not its children
    assert rows["0.qkv"].macs == 10 * 32 * 96 and counts.under("0") == (counts.params, counts.macs)


def test_einsum_and_functional_linear_are_counted():
    counts = fc.count(Einsum(), torch.zeros(2, 7, 6))
    assert counts.macs == 7 * 6 * 5 + 7 * 7 * 5 + 7 * 6 * 5


@pytest.mark.parametrize("train,grad", [(False, False), (False, True), (True, True)])
def test_multihead_attention_on_every_path(train, grad):
    """Eval without gradients takes the fused ``_native_multi_head_attention``; with gradients or in
    train mode the unfused ``F.multi_head_attention_forward``: the same count, all on the MHA row
    (it applies ``out_proj``'s weight itself, so that row holds ``out_proj``'s parameters too)."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model = Block().train(train)
    x = torch.randn(2, 12, 32)
    with torch.set_grad_enabled(grad):
        counts = fc.count(model, x)
    assert counts.macs == _attention_macs(12, 32)
    (row,) = counts.layers
    assert row.name == "attn" and row.params == counts.params == 4 * 32 * 32 + 4 * 32


@pytest.mark.parametrize("train", [False, True])
def test_transformer_encoder_layer_fused_and_unfused(train):
    """``nn.TransformerEncoderLayer(128, 4, 512)`` on 16 tokens: 3 211 264 MACs per example by the
    formulas (attention, projections, feed-forward); its eval/no-grad path is one fused operator
    (``_transformer_encoder_layer_fwd``), which FlopCounterMode does not count."""
    layer = nn.TransformerEncoderLayer(128, 4, 512, batch_first=True, dropout=0.0).train(train)
    x = torch.randn(2, 16, 128)
    expected = _attention_macs(16, 128) + 2 * 16 * 128 * 512
    assert expected == 3_211_264
    assert fc.count(layer, x).macs == expected
    with torch.device("meta"):
        meta = nn.TransformerEncoderLayer(128, 4, 512, batch_first=True)
    assert fc.count(meta, torch.empty(2, 16, 128, device="meta")).macs == expected


class Mixed(nn.Module):
    """Conv3d, ConvTranspose3d, then the voxels as tokens through SDPA attention and a head."""

    def __init__(self):
        super().__init__()
        self.conv, self.up = nn.Conv3d(3, 8, 3, padding=1), nn.ConvTranspose3d(8, 4, 2, stride=2)
        self.attn, self.head = SDPA(4, 2), nn.Linear(4, 10)

    def forward(self, x):
        tokens = self.up(self.conv(x)).flatten(2).transpose(1, 2)  # (B, 6*6*8, 4)
        return self.head(self.attn(tokens).mean(1))


def test_meta_device_counts_what_the_real_pass_counts():
    """On ``meta`` SDPA runs its unfused math path, on a CPU tensor one fused kernel: the same count."""
    torch.manual_seed(0)
    real = fc.count(Mixed(), torch.zeros(1, 3, 3, 3, 4))
    with torch.device("meta"):
        meta = Mixed()
    counted = fc.count(meta, torch.empty(1, 3, 3, 3, 4, device="meta"))
    voxels = 6 * 6 * 8
    assert real.macs == 3 * 3 * 4 * 8 * 3 * 27 + 3 * 3 * 4 * 8 * 4 * 8 + _attention_macs(voxels, 4) + 4 * 10
    assert counted.macs == real.macs and [(r.name, r.macs) for r in counted.layers] == \
        [(r.name, r.macs) for r in real.layers]
    assert fc.measure.count.layer_macs(nn.Conv1d(4, 6, 5, stride=2), (4, 21)) == 9 * 6 * 4 * 5


def test_a_multiplying_operator_without_formula_is_reported_never_zero():
    """``nn.Bilinear`` runs ``aten._trilinear``, which no formula counts: its row says so, the total is
    marked as a lower bound in the table and a warning names the module."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model.add_module("pair", nn.Bilinear(4, 4, 3))
    model.forward = lambda x: model.pair(model[1](model[0](x)), x)
    with pytest.warns(UserWarning, match=r"pair \(Bilinear\): aten\._trilinear has no MAC formula"):
        counts = fc.count(model, torch.zeros(2, 4))
    (row,) = counts.unattributed
    assert row.name == "pair" and row.uncounted == ("aten._trilinear",) and row.params == 4 * 4 * 3 + 3
    assert counts.macs == 16  # the Linear's only
    text = str(counts)
    assert "not counted: pair (Bilinear): aten._trilinear has no MAC formula" in text and "16+?" in text


def test_a_complete_count_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = fc.count(fc.models.create("resnet20"), torch.zeros(1, 3, 32, 32))
    assert not counts.unattributed and "not counted" not in str(counts)
