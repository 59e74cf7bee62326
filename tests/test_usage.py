"""A layer whose parent uses its weight instead of calling it is never swapped (``factorch.usage``):
with ``example_input`` (the example pass sees the forward not run and the weight taken by another
module's operation) and without (the parents' forwards read ``self.<path>.weight``); the report
says why, and after ``decompose_`` the model runs and calls every layer the report decomposed."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import factorch as fc
from tests.attention_models import E, H, HelperAttention, SwinBlock, ViT, runs_as_reported

pytestmark = pytest.mark.usefixtures("one_thread")
X = torch.randn(2, 3, 16, 16)


def swin(attention=None) -> ViT:
    torch.manual_seed(0)
    return ViT(blocks=lambda bf: SwinBlock(bf, attention) if attention else SwinBlock(bf))


@pytest.mark.parametrize("example", [X, None], ids=["example_input", "no-example"])
def test_swin_projections_read_by_their_parent_stay_dense_with_the_reason(example):
    model = swin()
    report = fc.decompose_(model, [fc.Tucker2(0.5), fc.SVD(0.5)], example_input=example, min_share=0)
    rows = {r.name: r for r in report.rows}
    for block in ("blocks.0", "blocks.1"):
        for child in ("qkv", "proj"):
            row = rows[f"{block}.attn.{child}"]
            assert row.skipped and row.method is None
            if example is not None:
                assert row.skipped == (f"its parent '{block}.attn' (WindowAttention) uses its weight directly (in "
                                       "linear), outside its forward: swapping it would break the forward")
            else:
                assert row.skipped == (f"its parent '{block}.attn' (WindowAttention) reads self.{child}.weight "
                                       "directly in its forward: swapping it would break the forward")
            assert isinstance(model.get_submodule(f"{block}.attn.{child}"), nn.Linear)
        assert rows[f"{block}.mlp.0"].method == "svd"
    runs_as_reported(model, report, X)


def test_reads_in_a_helper_method_are_found_without_example_input():
    report = fc.plan(swin(HelperAttention), fc.SVD(0.5), min_share=0)
    rows = {r.name: r for r in report.rows}
    assert "reads self.qkv.weight directly in its forward" in rows["blocks.0.attn.qkv"].skipped
    assert "reads self.proj.weight directly in its forward" in rows["blocks.1.attn.proj"].skipped


class FunctionalAttention(nn.Module):
    """An attention written like nn.MultiheadAttention's own forward: its out_proj is a child whose
    weight it hands to ``F.multi_head_attention_forward`` (a class ``decompose_`` does not know)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_proj = nn.Linear(E, 3 * E)
        self.out_proj = nn.Linear(E, E)

    def forward(self, x):  # (L, N, E)
        weight, bias = self.in_proj.weight, self.in_proj.bias
        return F.multi_head_attention_forward(x, x, x, E, H, weight, bias, None, None, False, 0.0,
                                              self.out_proj.weight, self.out_proj.bias, need_weights=False)[0]


def test_a_parent_calling_a_function_with_its_childs_weight_is_found_by_the_example_pass():
    from factorch.usage import observe

    model = nn.Sequential(FunctionalAttention(), nn.Linear(E, E))
    x = torch.randn(5, 2, E)
    seen = observe(model, [("0.in_proj", model[0].in_proj), ("0.out_proj", model[0].out_proj), ("1", model[1])], x)
    assert seen.blocked["0.out_proj"] == ("its parent '0' (FunctionalAttention) uses its weight directly (in "
                                          "multi_head_attention_forward), outside its forward: swapping it would "
                                          "break the forward")
    assert "uses its weight directly" in seen.blocked["0.in_proj"]  # an alias: the example pass finds it
    assert "1" not in seen.blocked and seen.shapes["1"] == (2, E)
    static = observe(model, [("0.in_proj", model[0].in_proj), ("0.out_proj", model[0].out_proj)])
    assert "reads self.out_proj.weight directly" in static.blocked["0.out_proj"]
    report = fc.decompose_(model, fc.SVD(0.5), example_input=x, min_share=0)
    assert [r.name for r in report.decomposed] == ["1"]
    runs_as_reported(model, report, x)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, E)
        self.body = nn.Linear(E, E)
        self.head = nn.Linear(E, 20, bias=False)
        self.head.weight = self.embed.weight
        self.unused = nn.Linear(E, E)

    def forward(self, tokens):
        return self.head(self.body(self.embed(tokens)))


def test_tied_and_unused_layers_stay_dense():
    tokens = torch.randint(0, 20, (2, 6))
    model = Tied()
    report = fc.decompose_(model, fc.SVD(0.5), example_input=tokens, min_share=0)
    rows = {r.name: r for r in report.rows}
    assert rows["head"].skipped == ("its weight is also 'embed.weight' (a shared parameter): swapping it would "
                                    "untie them")
    assert rows["unused"].skipped.startswith("its forward did not run on example_input")
    assert [r.name for r in report.decomposed] == ["body"] and model.head.weight is model.embed.weight
    assert "shared parameter" in fc.plan(Tied(), fc.SVD(0.5), min_share=0).rows[1].skipped  # without example


def test_naming_a_layer_that_cannot_be_swapped_is_an_error():
    config = {"blocks.0.attn.qkv": fc.SVD(0.5)}
    for call in (fc.decompose_, fc.plan, fc.api.check):
        with pytest.raises(ValueError, match=r"layer 'blocks.0.attn.qkv' \(linear 32->96\): cannot be replaced: its "
                                             r"parent 'blocks.0.attn' \(WindowAttention\) uses its weight directly"):
            call(swin(), config, example_input=X)


def test_a_swap_the_detection_misses_is_undone(monkeypatch):
    """If the model does not run after the swap, it is put back as it was and the error says why."""
    from factorch.usage import Usage

    monkeypatch.setattr(fc.api, "observe", lambda model, candidates, x: Usage())  # sees nothing
    model = swin()
    before = dict(model.named_modules())
    with pytest.raises(ValueError, match=r"after replacing \d+ layer\(s\), the forward raised AttributeError: "
                                         r"'SVDLinear' object has no attribute 'weight' on example_input; the model "
                                         r"was put back as it was"):
        fc.decompose_(model, fc.SVD(0.5), example_input=X, min_share=0)
    assert dict(model.named_modules()) == before
    model(X)
