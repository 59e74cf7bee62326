"""Small transformers built the way the public ones are, for the tests (torchvision and timm are not
dependencies): a ViT on ``nn.MultiheadAttention`` (torchvision's ``EncoderBlock``), a Swin-style
block whose attention calls ``F.linear`` with its children's weights (torchvision's
``ShiftedWindowAttention`` does), a BERT-style ``nn.TransformerEncoder`` and a Whisper-style
encoder-decoder on ``nn.TransformerDecoderLayer`` (self- and cross-attention)."""
import torch
import torch.nn.functional as F
from torch import nn

E, H = 32, 4


class EncoderBlock(nn.Module):
    """Pre-norm block: ``x + attention(ln(x))``, ``x + mlp(ln(x))``; (N, L, E) in and out, the
    attention in either layout."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.ln_1 = nn.LayerNorm(E)
        self.self_attention = nn.MultiheadAttention(E, H, batch_first=batch_first)
        self.ln_2 = nn.LayerNorm(E)
        self.mlp = nn.Sequential(nn.Linear(E, 4 * E), nn.GELU(), nn.Linear(4 * E, E))

    def forward(self, x):
        y = self.ln_1(x)
        if not self.batch_first:
            y = y.transpose(0, 1)  # (L, N, E)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        if not self.batch_first:
            y = y.transpose(0, 1)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    """4x4 patches of a (N, 3, 16, 16) image, a class token, two encoder blocks, a linear head."""

    def __init__(self, batch_first: bool = True, blocks: type = EncoderBlock) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, E, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, E) * 0.02)
        self.blocks = nn.Sequential(*[blocks(batch_first) for _ in range(2)])
        self.ln = nn.LayerNorm(E)
        self.head = nn.Linear(E, 10)

    def forward(self, x):
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (N, 16, E)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.head(self.ln(self.blocks(x))[:, 0])


class WindowAttention(nn.Module):
    """Swin-style attention: its forward hands ``qkv``'s and ``proj``'s weights to ``F.linear``
    (and so never calls them)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(E, 3 * E)
        self.proj = nn.Linear(E, E)

    def forward(self, x):
        n, l, _ = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias).reshape(n, l, 3, H, E // H).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(n, l, E)
        return F.linear(out, self.proj.weight, self.proj.bias)


class HelperAttention(WindowAttention):
    """The same, its projections in a helper method its forward calls."""

    def forward(self, x):
        return self.project(x)

    def project(self, x):
        return F.linear(x, self.proj.weight, self.proj.bias) + F.linear(x, self.qkv.weight, self.qkv.bias)[..., :E]


class SwinBlock(nn.Module):
    def __init__(self, batch_first: bool = True, attention: type = WindowAttention) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(E), attention()
        self.norm2, self.mlp = nn.LayerNorm(E), nn.Sequential(nn.Linear(E, 4 * E), nn.GELU(), nn.Linear(4 * E, E))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Bert(nn.Module):
    """Token embedding, a 2-layer ``nn.TransformerEncoder`` (post-norm, batch first: torch's fused
    fast path applies to it in eval mode), a head on the first token. ``forward(tokens, padding)``."""

    def __init__(self, vocab: int = 50) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, E)
        layer = nn.TransformerEncoderLayer(E, H, 4 * E, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        self.head = nn.Linear(E, 2)

    def forward(self, tokens, padding=None):
        return self.head(self.encoder(self.embed(tokens), src_key_padding_mask=padding)[:, 0])


class Whisper(nn.Module):
    """Audio frames (N, 24, 16) through a linear stem and one encoder layer; 5 text tokens through a
    decoder layer attending to themselves (causal) and to the 24 encoded frames."""

    def __init__(self, vocab: int = 50) -> None:
        super().__init__()
        self.stem = nn.Linear(16, E)
        self.encoder = nn.TransformerEncoderLayer(E, H, 4 * E, dropout=0.0, batch_first=True, norm_first=True)
        self.embed = nn.Embedding(vocab, E)
        self.decoder = nn.TransformerDecoderLayer(E, H, 4 * E, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Linear(E, vocab)

    def forward(self, frames, tokens):
        memory = self.encoder(self.stem(frames))
        causal = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1], dtype=memory.dtype)
        return self.head(self.decoder(self.embed(tokens), memory, tgt_mask=causal, tgt_is_causal=True))


def runs_as_reported(model: nn.Module, report, example) -> None:
    """Every layer the report says it decomposed is a factorized layer in ``model`` whose forward
    runs on ``example``; nothing else was replaced."""
    from factorch.layers import FactorizedLayer
    from factorch.surgery import walk

    decomposed = {r.name for r in report.decomposed}
    assert decomposed == {n for n, m in walk(model) if isinstance(m, FactorizedLayer)}
    ran = set()
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: ran.add(n)) for n in decomposed]
    inputs = example if isinstance(example, tuple) else (example,)
    with torch.no_grad():
        for training in (False, True):
            model.train(training)
            out = model(*inputs)
            assert bool(torch.isfinite(out).all())
    model.eval()
    for h in hooks:
        h.remove()
    assert ran == decomposed
