"""Batch-norm folding: a BatchNorm that directly follows a linear map becomes part of that map.

In eval mode a BatchNorm is the per-channel affine map ``BN(y) = s * y + (beta - s * mu)`` with
``s = gamma / sqrt(var + eps)`` (Ioffe and Szegedy 2015; its running statistics). After
``y = W x + b`` it is the same as one linear map with ``W' = s W`` (each output channel's weights
scaled) and ``b' = s (b - mu) + beta`` (Jacob et al. 2018, section 3.2, fold the BN into the
preceding conv for inference). Exact up to float rounding: computed in float64, stored in the
layer's dtype. Only running statistics make it exact, so a model in training mode (batch statistics)
or a BatchNorm without running statistics is never folded.

For a factorized layer the output channels are those of its ``last`` factor (the last 1x1 of a
Tucker-2/-3 or SVD chain, the last 1x1 of a CP chain; it also carries the bias), so the BN folds
into that factor alone. A tensor train adds its bias after the output cores, which fold the output
channels partly into the batch: a per-channel scale is no scale of one core, so it is not folded
(``not_foldable`` says so; the deploy step may still rebuild the layer dense and fold into that).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from factorch.layers.base import FactorizedLayer

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def affine_of(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """``(s, t)``, float64, with ``BN(y) = s * y + t`` per channel in eval mode."""
    var, mean = bn.running_var.detach().double(), bn.running_mean.detach().double()
    s = torch.rsqrt(var + bn.eps)
    t = -mean * s
    if bn.affine:
        s, t = s * bn.weight.detach().double(), t * bn.weight.detach().double() + bn.bias.detach().double()
    return s, t


def bn_refusal(bn: nn.Module) -> Optional[str]:
    """Why this BatchNorm cannot be folded (None: it can)."""
    if not isinstance(bn, BATCH_NORMS):
        return f"{type(bn).__name__} is not a BatchNorm1d/2d/3d"
    if bn.running_mean is None or bn.running_var is None:
        return "it has no running statistics (track_running_stats=False): it normalises by each batch's own"
    if bn.training:
        return "it is in training mode (batch statistics): call model.eval() first"
    return None


def target_of(module: nn.Module) -> Optional[nn.Module]:
    """The plain conv or linear whose output channels are ``module``'s own: the module itself, a
    factorized layer's ``last`` factor; None where there is no such single factor."""
    if isinstance(module, (_ConvNd, nn.Linear)):
        return module
    if isinstance(module, FactorizedLayer):
        last = getattr(module, "last", None)
        if isinstance(last, (_ConvNd, nn.Linear)) and _owns_bias(module, last):
            return last
    return None


def _owns_bias(layer: FactorizedLayer, last: nn.Module) -> bool:
    """Whether ``last`` is where the layer's output (and its bias) comes from: no separate bias."""
    own = getattr(layer, "bias", None)
    return not isinstance(own, Tensor)


def not_foldable(module: nn.Module) -> Optional[str]:
    """Why a BN after ``module`` cannot be folded into it (None: it can)."""
    if target_of(module) is not None:
        return None
    if isinstance(module, FactorizedLayer):
        return (f"{type(module).__name__} applies its output channels through several cores (a tensor train): a "
                "per-channel scale is no scale of one core")
    return f"it follows a {type(module).__name__}, not a conv, linear or factorized layer"


def out_channels(module: nn.Module) -> int:
    """Output channels (features) of a conv, linear or of a factorized layer's target factor."""
    target = target_of(module)
    if isinstance(target, nn.Linear):
        return target.out_features
    return target.out_channels


@torch.no_grad()
def scale_outputs_(target: nn.Module, s: Tensor, t: Tensor) -> None:
    """``target``'s output channel ``o`` becomes ``s[o] * y_o + t[o]``: weights scaled along the
    output channels (dim 0; dim 1 within each group for a transposed conv), bias ``s b + t``
    (created if the layer had none)."""
    w = target.weight.detach().double()
    if isinstance(target, _ConvNd) and target.transposed:  # (C_in, N/g, k...): output j of group i is i N/g + j
        g = target.groups
        view = w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
        w = (view * s.reshape(g, 1, -1, *[1] * (w.dim() - 2))).reshape(w.shape)
    else:
        w = w * s.reshape(-1, *[1] * (w.dim() - 1))
    bias = target.bias.detach().double() if target.bias is not None else torch.zeros_like(s)
    new_bias = s * bias + t
    if not (bool(torch.isfinite(w).all()) and bool(torch.isfinite(new_bias).all())):
        raise ValueError("folding gives NaN or Inf weights (a running variance of -eps or NaN statistics)")
    target.weight.copy_(w.to(target.weight.dtype))
    if target.bias is None:
        target.bias = nn.Parameter(new_bias.to(dtype=target.weight.dtype, device=target.weight.device),
                                   requires_grad=target.weight.requires_grad)
    else:
        target.bias.copy_(new_bias.to(target.bias.dtype))


def folded(module: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``module`` (a conv, linear or factorized layer) with ``bn`` folded into it: the
    copy's output equals ``bn(module(x))`` in eval mode. ``ValueError`` when it cannot be folded."""
    why = bn_refusal(bn) or not_foldable(module)
    if why:
        raise ValueError(why)
    if out_channels(module) != bn.num_features:
        raise ValueError(f"{bn.num_features} BatchNorm channels after {out_channels(module)} output channels")
    new = copy.deepcopy(module)
    s, t = affine_of(bn)
    scale_outputs_(target_of(new), s.to(new_device(new)), t.to(new_device(new)))
    spec = getattr(new, "config", None)
    if isinstance(new, FactorizedLayer) and dataclasses.is_dataclass(spec) and getattr(spec, "bias", True) is False:
        new.config = dataclasses.replace(spec, bias=True)  # its dense form (to_dense) has the new bias too
    return new


def new_device(module: nn.Module) -> torch.device:
    ref = next(module.parameters(), None)
    return ref.device if ref is not None else torch.device("cpu")
