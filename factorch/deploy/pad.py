"""A factor chain with its inner channel counts padded to the runtime's channel block, exactly.

Blocked CPU kernels (ONNX Runtime's ``NCHWc`` convolutions: 16 channels on AVX-512, 8 on AVX2)
take a conv whole only where its channel counts are multiples of the block (``docs/math.md``,
"Ranks in multiples of the channel block"); a layer decomposed at free ranks, say 34, falls back to
plain kernels with a layout reorder on each side. Padding the chain's inner channels with zero
channels fixes that without changing a single output: between factors ``A`` and ``B`` with ``R``
channels, ``A`` gets ``R' - R`` more output channels with zero weights and zero bias (they output
zeros), and ``B`` zero weights on those inputs (they add nothing). A depthwise factor (CP's axis
convs: groups = channels) gets ``R' - R`` more zero groups. More MACs, the same function; whether
it is faster is measured, as every other form (``factorch.deploy.choose``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd


class Padded(nn.Sequential):
    """A chain whose inner channel counts were padded to ``block`` (a plain ``nn.Sequential``
    otherwise: exports and scripts as one)."""

    def __init__(self, modules: Sequence[nn.Module], block: int) -> None:
        super().__init__(*modules)
        self.block = block


def padded(modules: Sequence[nn.Module], block: int) -> Optional[Padded]:
    """``modules`` (a chain of convs or linears, applied in order) with every inner channel count
    raised to the next multiple of ``block``; None where none is off the grid or a factor cannot be
    padded (a transposed conv, or a grouped conv other than depthwise)."""
    chain = list(modules)
    if len(chain) < 2 or not all(_paddable(m) for m in chain):
        return None
    sizes = [_outs(m) for m in chain[:-1]]  # inner channel counts, one per boundary
    targets = [-(-c // block) * block for c in sizes]
    if targets == sizes:
        return None
    # a depthwise factor has as many outputs as inputs: its two boundaries must agree
    for i, m in enumerate(chain[1:-1], start=1):
        if _depthwise(m) and targets[i - 1] != targets[i]:
            return None
    out = []
    for i, m in enumerate(chain):
        c_in = targets[i - 1] if i > 0 else _ins(m)
        c_out = targets[i] if i < len(chain) - 1 else _outs(m)
        out.append(_widened(m, c_in, c_out))
    return Padded(out, block)


def _paddable(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, _ConvNd) and not m.transposed and (m.groups == 1 or _depthwise(m))


def _depthwise(m: nn.Module) -> bool:
    return isinstance(m, _ConvNd) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _ins(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _outs(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


@torch.no_grad()
def _widened(m: nn.Module, c_in: int, c_out: int) -> nn.Module:
    """``m`` with ``c_in`` inputs and ``c_out`` outputs, the new weights and biases zero."""
    w = m.weight
    if isinstance(m, nn.Linear):
        new = nn.Linear(c_in, c_out, bias=m.bias is not None)
    elif _depthwise(m):  # (C, 1, k...): one filter per channel
        new = type(m)(c_out, c_out, m.kernel_size, m.stride, m.padding, m.dilation, c_out, m.bias is not None,
                      m.padding_mode)
    else:  # (N, C, k...)
        new = type(m)(c_in, c_out, m.kernel_size, m.stride, m.padding, m.dilation, 1, m.bias is not None,
                      m.padding_mode)
    new = new.to(device=w.device, dtype=w.dtype)
    new.weight.zero_()
    new.weight[:w.shape[0], :w.shape[1]].copy_(w)
    if m.bias is not None:
        new.bias.zero_()
        new.bias[:m.bias.shape[0]].copy_(m.bias)
    return new


__all__ = ["Padded", "padded"]
