"""Transformers through ``decompose_``: a ViT (``nn.MultiheadAttention``, batch first or not), a
BERT-style ``nn.TransformerEncoder`` (torch's fused fast path in eval mode) and a Whisper-style
encoder-decoder (self- and cross-attention) shrink, run in eval and training mode, and compute what
their rebuilt dense models compute; calibration, from-scratch, counts, save/load, export and ADMM
take them too."""
import copy

import pytest
import torch
from torch import nn

import factorch as fc
from factorch.layers import SVDMultiheadAttention
from tests.attention_models import E, Bert, ViT, Whisper, runs_as_reported

pytestmark = pytest.mark.usefixtures("one_thread")
X = torch.randn(2, 3, 16, 16)
ATTENTIONS = ("blocks.0.self_attention", "blocks.1.self_attention")


def vit(batch_first=True) -> ViT:
    torch.manual_seed(0)
    return ViT(batch_first).eval()


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("example", [X, None], ids=["example_input", "no-example"])
def test_vit_attention_is_decomposed_whole_and_the_model_runs(batch_first, example):
    model = vit(batch_first)
    report = fc.decompose_(model, [fc.Tucker2(0.5), fc.SVD(0.5)], example_input=example)
    rows = {r.name: r for r in report.rows}
    for name in ATTENTIONS:
        assert isinstance(model.get_submodule(name), SVDMultiheadAttention)
        assert rows[name].method == "svd" and rows[name].layer == "attention 32 h4" and rows[name].error > 0
        assert rows[name].params_after < rows[name].params_before
    assert not any(".out_proj" in r.name for r in report.rows)  # never a candidate on its own
    assert {r.name for r in report.decomposed} >= {*ATTENTIONS, "blocks.0.mlp.0", "blocks.1.mlp.2"}
    runs_as_reported(model, report, X)


def test_vit_report_counts_what_fc_count_counts():
    model = vit()
    dense = fc.count(model, X)
    assert dense.under(ATTENTIONS[0])[1] == 2 * 17 * E * E * 2 + 2 * 17 * 17 * E  # 17 tokens: projections + products
    report = fc.decompose_(model, fc.SVD(0.5), example_input=X)
    counted = fc.count(model, X)
    for r in report.decomposed:
        assert counted.under(r.name) == (r.params_after, r.macs_after), r.name
    row = next(r for r in report.rows if r.name == ATTENTIONS[0])
    assert row.macs_before == dense.under(ATTENTIONS[0])[1]


def bert_inputs():
    tokens = torch.randint(0, 50, (3, 9))
    padding = torch.zeros(3, 9, dtype=torch.bool)
    padding[1, 6:] = True  # right-padded: torch's nested-tensor path applies
    return tokens, padding


def test_bert_encoder_decomposes_and_equals_its_rebuilt_dense_model_on_the_fused_path():
    """The decomposed encoder runs its layers' regular path; the rebuilt dense model, fresh (fast
    path on), takes torch's fused kernel and nested tensors in eval mode: the same outputs."""
    torch.manual_seed(0)
    model = Bert().eval()
    tokens, padding = bert_inputs()
    report = fc.decompose_(model, fc.SVD(0.5), example_input=(tokens, padding))
    names = {r.name for r in report.decomposed}
    assert {"encoder.layers.0.self_attn", "encoder.layers.1.linear1", "encoder.layers.1.linear2"} <= names
    runs_as_reported(model, report, (tokens, padding))
    rebuilt = copy.deepcopy(model)
    fc.reconstruct_(rebuilt)
    fresh = Bert().eval()
    fresh.load_state_dict(rebuilt.state_dict())
    assert fresh.encoder.use_nested_tensor and fresh.encoder.layers[0].activation_relu_or_gelu
    with torch.no_grad():
        for pad in (padding, None):
            assert torch.allclose(model(tokens, pad), fresh(tokens, pad), atol=1e-5, rtol=1e-4)
    model.train()
    fresh.train()
    assert torch.allclose(model(tokens, padding), fresh(tokens, padding), atol=1e-5, rtol=1e-4)


def test_only_the_linears_of_a_transformer_encoder_layer_can_be_decomposed():
    """With its attention left dense, the layer would still hand linear1's weight to the fused
    kernel: placing a factorized layer turns that path off."""
    torch.manual_seed(0)
    model = Bert().eval()
    tokens, padding = bert_inputs()
    report = fc.decompose_(model, fc.SVD(0.5), example_input=(tokens, padding),
                           filter_fn=lambda m, name: not isinstance(m, nn.MultiheadAttention))
    assert any(r.name == "encoder.layers.0.linear1" for r in report.decomposed)
    assert isinstance(model.encoder.layers[0].self_attn, nn.MultiheadAttention)
    runs_as_reported(model, report, (tokens, padding))


def test_whisper_self_and_cross_attention_shrink_at_their_own_lengths():
    torch.manual_seed(0)
    model = Whisper().eval()
    frames, tokens = torch.randn(2, 24, 16), torch.randint(0, 50, (2, 5))
    report = fc.decompose_(model, fc.SVD(0.5), example_input=(frames, tokens), min_share=0)
    rows = {r.name: r for r in report.rows}
    products = lambda lq, lk: 2 * lq * lk * E  # noqa: E731
    assert rows["encoder.self_attn"].macs_before == 24 * 4 * E * E + products(24, 24)
    assert rows["decoder.self_attn"].macs_before == 5 * 4 * E * E + products(5, 5)
    assert rows["decoder.multihead_attn"].macs_before == 5 * 2 * E * E + 24 * 2 * E * E + products(5, 24)
    for name in ("encoder.self_attn", "decoder.self_attn", "decoder.multihead_attn"):
        assert isinstance(model.get_submodule(name), SVDMultiheadAttention)
        assert rows[name].macs_after < rows[name].macs_before
    runs_as_reported(model, report, (frames, tokens))


def test_calibration_leaves_attention_weight_only_with_a_note():
    model = vit()
    batches = [torch.randn(4, 3, 16, 16) for _ in range(4)]
    report = fc.decompose_(model, fc.SVD(0.5), calibration=batches, example_input=X)
    rows = {r.name: r for r in report.rows}
    for name in ATTENTIONS:
        assert rows[name].factors == "weight-only"
        assert "calibration not used: no input statistics for MultiheadAttention" in rows[name].note
    assert rows["blocks.0.mlp.0"].factors in ("data-aware", "weight-only")
    runs_as_reported(model, report, X)


def test_from_scratch_attention_trains():
    model = vit()
    report = fc.decompose_(model, fc.SVD(0.25), example_input=X, from_scratch=True)
    assert all(isinstance(model.get_submodule(n), SVDMultiheadAttention) for n in ATTENTIONS)
    runs_as_reported(model, report, X)
    model.train()
    loss = model(X).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.get_submodule(ATTENTIONS[0]).parameters())


def test_keep_if_faster_keeps_attention_factorized_with_a_note():
    model = vit()
    report = fc.decompose_(model, fc.SVD(0.5), example_input=X, keep_if_faster=True,
                           filter_fn=lambda m, name: isinstance(m, nn.MultiheadAttention))
    assert [r.name for r in report.decomposed] == list(ATTENTIONS)
    assert all("keep_if_faster: not timed" in r.note for r in report.decomposed)


def test_save_load_and_reconstruct(tmp_path):
    model = vit(batch_first=False)
    fc.decompose_(model, fc.SVD(0.5), example_input=X)
    fc.save(model, tmp_path / "vit.pt")
    loaded = fc.load(tmp_path / "vit.pt", model=vit(batch_first=False))
    assert torch.equal(loaded(X), model(X))
    rebuilt = fc.reconstruct_(loaded)
    assert set(ATTENTIONS) <= set(rebuilt)
    assert isinstance(loaded.get_submodule(ATTENTIONS[0]), nn.MultiheadAttention)
    assert torch.allclose(loaded(X), model(X), atol=1e-5)


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program", "onnx"])
def test_a_decomposed_vit_exports(tmp_path, fmt):
    pytest.importorskip("onnxruntime") if fmt == "onnx" else None
    model = vit()
    fc.decompose_(model, fc.SVD(0.5), example_input=X)
    result = fc.export(model, X, fmt, tmp_path / f"vit.{fmt}")
    assert result.max_rel_diff <= 1e-4


def test_admm_leaves_attention_out():
    model = vit()
    admm = fc.ADMM(model, fc.SVD(0.5), example_input=X)
    assert not any(isinstance(model.get_submodule(n), nn.MultiheadAttention) for n in admm._layers)
    assert "blocks.0.mlp.0" in admm._layers
