"""What every factorized layer is: a chain of real modules that can rebuild its dense layer."""
from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from factorch.layers.conv_spec import dense_conv


class FactorizedLayer(nn.Module):
    """Base of every factorized layer.

    A subclass holds its factors as ordinary child modules (so hooks, ``state_dict`` and
    ``count`` see real convs/linears), and provides:

    * ``from_dense(dense, rank)``: decompose a trained layer (math in float64, result in the dense
      layer's dtype and device);
    * ``empty_like(dense, rank)``: the same structure without computing anything (used on the
      ``meta`` device to cost a candidate before decomposing it);
    * ``dense_weight()``: the kernel the factors represent, in float64 on the layer's device;
    * ``to_dense()``: the equivalent dense layer, built from the current (possibly trained) factors;
    * ``spec()``: constructor arguments, so ``factorch.io`` can rebuild the structure (with
      ``options(config)`` for structure choices that the dense layer does not determine).

    Subclasses are found by class name when loading a checkpoint (``LAYER_CLASSES``).
    """

    registry: ClassVar[dict[str, type["FactorizedLayer"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "from_dense" in cls.__dict__:  # concrete layers only, not shared bases
            FactorizedLayer.registry[cls.__name__] = cls

    @property
    def ranks(self) -> tuple[int, ...]:
        raise NotImplementedError

    @classmethod
    def from_dense(cls, dense: nn.Module, rank: Any) -> "FactorizedLayer":
        raise NotImplementedError

    @classmethod
    def empty_like(cls, dense: nn.Module, rank: Any) -> "FactorizedLayer":
        raise NotImplementedError

    def dense_weight(self) -> Tensor:
        raise NotImplementedError

    def to_dense(self) -> nn.Module:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """``{"config": constructor kwargs, "rank": ranks}``; ``type(self)(**config, rank=rank)``
        rebuilds this structure."""
        raise NotImplementedError

    @classmethod
    def options(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of ``empty_like`` that a stored ``config`` fixes beyond the dense
        layer and the ranks (e.g. a tensor train's mode shapes); none for most layers."""
        return {}

    def _place(self, like: Tensor) -> "FactorizedLayer":
        """Move to ``like``'s device and dtype (the source layer's)."""
        return self.to(device=like.device, dtype=like.dtype)


def as_float64(t: Tensor) -> Tensor:
    """Detached float64 copy on ``t``'s device, where all factor math happens (a CUDA layer is
    decomposed on its GPU)."""
    return t.detach().to(dtype=torch.float64)


class Traced(nn.Module):
    """A module running a trace: ``torch.jit.script`` compiles this forward, and the trace is
    taken as it is (also when it is the top-level module, which a bare trace cannot be)."""

    def __init__(self, traced: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.traced = traced

    def forward(self, x: Tensor) -> Tensor:
        return self.traced(x)


def traced_for_script(layer: nn.Module, example: Tensor) -> Traced:
    """What ``torch.jit.script`` compiles in place of a layer whose forward TorchScript cannot
    (its ``__prepare_scriptable__``): a trace of it. The forward of such a layer branches on
    shapes only, never on values, and its reshapes are recorded as functions of the input's
    size, so the trace holds for every batch and spatial size (tests/test_export.py checks it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on ints read from shapes (recorded as sizes), deprecation
        return Traced(torch.jit.trace(layer, example, check_trace=False))


def check_finite(name: str, t: Tensor) -> None:
    """Refuse NaN/Inf weights with a clear message instead of propagating them into factors."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has NaN or Inf values; refusing to decompose it")


class FactorizedConv(FactorizedLayer):
    """A factorized ``nn.Conv2d``: keeps the dense geometry in ``self.config`` (a ``ConvSpec``) and
    its bias on the last factor conv (``dense_bias`` says where, if elsewhere)."""

    def dense_bias(self) -> Tensor | None:
        return self.last.bias

    def to_dense(self) -> nn.Conv2d:
        like = next(self.parameters())
        return dense_conv(self.config, self.dense_weight(), self.dense_bias(), like).train(self.training)

    def spec(self) -> dict[str, Any]:
        return {"config": self.config.as_dict(), "rank": list(self.ranks)}
