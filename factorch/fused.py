"""torch modules that run fused inference kernels on their children's dense weights.

In eval mode, ``nn.TransformerEncoderLayer`` hands its ``self_attn``'s packed in-projection and
``out_proj`` weights, its norms' and its ``linear1``/``linear2`` weights straight to one fused
kernel (``torch._transformer_encoder_layer_fwd``) without calling those children, and
``nn.TransformerEncoder`` first packs a padded batch into a nested tensor for it (their "fast
path", ``torch.backends.mha``). A factorized child has no dense weight to hand over, so a
factorized layer placed anywhere inside them turns that path off (``turn_off``, called by
``factorch.surgery.swap``): they then call their children's forwards, as they do in training.
Their reads of a child's weights on that path are therefore no reason to leave the child dense
(``READERS``, read by ``factorch.usage``).
"""
from __future__ import annotations

from typing import Iterable

from torch import nn

READERS: tuple[type[nn.Module], ...] = (nn.TransformerEncoderLayer, nn.TransformerEncoder)


def turn_off(ancestors: Iterable[nn.Module]) -> None:
    """Turn the fused path of every ``READERS`` module among ``ancestors`` off, for good.

    ``TransformerEncoderLayer``: ``activation_relu_or_gelu = 0``, the flag its fused kernel needs
    (it takes ReLU or GELU only); the layer's ``activation`` is unchanged and runs in the regular
    path. ``TransformerEncoder``: ``use_nested_tensor = False`` (what it sets itself when its
    layers cannot take the fused kernel). Outputs are unchanged: the fused kernel computes what
    the regular path computes (tests/layers/test_attention_models.py)."""
    for module in ancestors:
        if isinstance(module, nn.TransformerEncoderLayer):
            module.activation_relu_or_gelu = 0
        elif isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
