"""Low-tensor-rank training by ADMM (Yin et al., CVPR 2021; ``docs/math.md``, "Low-rank ADMM training").

Train the dense model under the constraint that each selected weight ``W`` has the target ranks,
so that decomposing it at the end loses almost nothing. With the split ``W = Z`` (``Z`` of the
target ranks) and the scaled dual ``U``, the augmented Lagrangian is

    L = loss(W) + (rho / 2) sum_i ||W_i - Z_i + U_i||_F^2          (Z, U held fixed per step)

and ADMM alternates (a) SGD on ``W`` with that penalty, (b) ``Z = P(W + U)``, the projection on
the target ranks (truncated SVD, Tucker-2 HOOI, TT-SVD: factorch's own decompositions at fixed
ranks), (c) ``U += W - Z``. In any training loop (plain PyTorch, Lightning, ...)::

    admm = fc.ADMM(model, fc.Tucker2(rank=0.25), rho=1e-3)   # or [fc.Tucker2(..), fc.SVD(..)], fc.TT(..)
    for epoch in range(epochs):
        admm.update()                     # Z = projection of (W + U) on the target ranks; U += W - Z
        for x, y in loader:
            loss = F.cross_entropy(model(x), y) + admm.penalty()   # rho/2 * sum ||W - Z + U||^2
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        print(admm.distance())            # per layer ||W - Z|| / ||W||, and the mean
    report = admm.decompose_()            # decompose W at exactly Z's ranks; then fine-tune
    torch.save(admm.state_dict(), ...)    # Z, U, rho, ranks: resumable

As the official code does: ``Z = P(W)`` and ``U = 0`` at construction, rho 1e-3, one ``update``
per epoch, and ``decompose_`` decomposes the trained ``W`` (not ``Z``). The ranks come from any
rank rule (a fraction, ``EVBMF`` on the weights at construction, ``Budget``...), resolved once at
construction by ``fc.plan`` and fixed after: ``Z`` always has exactly those ranks.

Under ``torch.distributed`` (DDP), the ranks and the projection are computed on rank 0 and
broadcast (ranks, ``Z`` and ``U``), so every rank holds the same; ``decompose_`` gives every rank
rank 0's factors. Every rank makes the same calls (construction, ``update``, ``decompose_``, as
with any collective); pass the unwrapped model (``ddp.module``). Z and U live on the weights'
device, in their dtype.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from factorch.api import decompose_, plan
from factorch.distributed import Distributed
from factorch.methods import Method
from factorch.registry import NotApplicable, Proposal, candidate
from factorch.report import Report
from factorch.surgery import FilterFn, get_module

Methods = Union[Method, Sequence[Method]]


def check_rho(rho: object, name: str = "ADMM rho") -> float:
    """``rho`` as a float, or one clear ``ValueError`` (it must be a positive finite number)."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho <= 0:
        raise ValueError(f"{name} must be a positive number, got {rho!r}")
    return float(rho)


def check_growth(growth: object) -> float:
    if isinstance(growth, bool) or not isinstance(growth, (int, float)) or not math.isfinite(growth) or growth < 1:
        raise ValueError(f"ADMM rho growth must be a number >= 1 (1: constant rho), got {growth!r}")
    return float(growth)


def _proposal(method: Method, dense: nn.Module, ranks: tuple[int, ...]) -> Proposal:
    """The registry's structure for ``dense`` under ``method``, at exactly ``ranks`` (fixed by the
    plan at construction): the one place this module looks into the method registry."""
    found = candidate(method, dense)
    if isinstance(found, NotApplicable):
        raise ValueError(f"{method!r} does not decompose this {type(dense).__name__}: {found.reason}")
    return Proposal(found.layer_cls, found.space(dense).check(ranks), kwargs=found.kwargs, options=found.options)


def _holding(module: nn.Module, weight: Tensor) -> nn.Module:
    """A shallow copy of the dense ``module`` whose weight is ``weight`` (nothing else copied)."""
    proxy = copy.copy(module)
    proxy._parameters = {**module._parameters, "weight": nn.Parameter(weight, requires_grad=False)}
    return proxy


@dataclass
class _Layer:
    """One constrained layer: its module, the method at fixed ranks (and the registry's proposal
    for it), Z and U (the weight's shape, device and dtype)."""

    module: nn.Module
    method: Method
    proposal: Proposal
    z: Tensor
    u: Tensor

    @property
    def ranks(self) -> tuple[int, ...]:
        return self.proposal.ranks

    @property
    def weight(self) -> Tensor:
        return self.module.weight


class ADMM:
    """ADMM state for ``model``: which layers, at which ranks, their ``Z`` and ``U``, and ``rho``.

    ``methods``: a method config or a list (the first that handles a layer wins, as in
    ``fc.decompose_``); ``filter_fn(module, name)`` excludes layers; ``example_input`` gives the
    real input sizes (needed by ``fc.Budget(macs=...)``; layers whose ranks would not reduce MACs
    are left out, as ``decompose_`` would leave them dense). ``rho_growth``: ``update`` multiplies
    rho by it (capped at ``rho_max``) and rescales ``U`` by its inverse (the scaled dual is
    ``y / rho``; Boyd et al. 2011, section 3.4.1).
    """

    def __init__(self, model: nn.Module, methods: Methods, rho: float = 1e-3,
                 filter_fn: Optional[FilterFn] = None, *, example_input: Any = None,
                 rho_growth: float = 1.0, rho_max: float = math.inf) -> None:
        self.rho = check_rho(rho)
        self.rho_growth = check_growth(rho_growth)
        if not (isinstance(rho_max, (int, float)) and rho_max >= self.rho):
            raise ValueError(f"ADMM rho_max must be a number >= rho ({self.rho:g}), got {rho_max!r}")
        self.rho_max = float(rho_max)
        self._methods = [methods] if isinstance(methods, Method) else list(methods) \
            if isinstance(methods, (list, tuple)) else None
        if not self._methods or not all(isinstance(m, Method) for m in self._methods):
            raise ValueError(f"fc.ADMM takes a method config or a non-empty list of them, got {methods!r}")
        self.model, self.example_input, self.decomposed = model, example_input, False
        self._group = Distributed.current()
        # rank 0 decides the layers and ranks (a rule such as EVBMF looks at the weights)
        found = self._group.broadcast_object(self._resolve(filter_fn) if self._group.is_main else None)
        if isinstance(found, str):
            raise ValueError(found)  # on every rank
        self._layers = {name: self._layer(name, method_name, ranks) for name, method_name, ranks in found}
        self._project()  # Z = P(W), U = 0 (the official code's start)

    def _resolve(self, filter_fn: Optional[FilterFn]) -> list[tuple[str, str, tuple[int, ...]]] | str:
        """(layer, method name, ranks) of every layer the methods decompose; an error message
        (broadcast to every rank before raising) when the plan fails or keeps no layer. A layer
        without one ``weight`` (an attention: four projections) is left out: ADMM constrains one."""
        def one_weight(module: nn.Module, name: str) -> bool:
            kept = filter_fn is None or filter_fn(module, name)
            return isinstance(getattr(module, "weight", None), Tensor) and kept

        try:
            report = plan(self.model, self._methods, filter_fn=one_weight, example_input=self.example_input)
        except ValueError as e:
            return f"fc.ADMM: {e}"
        rows = report.decomposed
        if not rows:
            told = [r for r in report.skipped if r.skipped != "excluded by filter_fn"] or report.skipped
            reasons = "; ".join(f"{r.name}: {r.skipped}" for r in told[:4]) + ("; ..." if len(told) > 4 else "")
            return (f"fc.ADMM: {', '.join(repr(m) for m in self._methods)} handles no layer of "
                    f"{type(self.model).__name__} ({reasons or 'no conv/linear layers'})")
        return [(r.name, r.method, tuple(r.ranks)) for r in rows]

    def _layer(self, name: str, method_name: str, ranks: Sequence[int], z: Optional[Tensor] = None,
               u: Optional[Tensor] = None) -> _Layer:
        """Layer ``name`` under this ADMM's method ``method_name`` at exactly ``ranks``, with Z and U
        (copied onto the weight's device and dtype; zeros when not given)."""
        method = next((m for m in self._methods if m.name == method_name), None)
        if method is None:
            raise ValueError(f"method {method_name!r} is not one of {self._methods!r}")
        ranks = tuple(int(r) for r in ranks)
        method = dataclasses.replace(method, rank=ranks[0] if len(ranks) == 1 else ranks)
        module = get_module(self.model, name)
        proposal = _proposal(method, module, ranks)
        w = module.weight

        def placed(t: Optional[Tensor]) -> Tensor:  # a contiguous copy: collectives want dense tensors
            if t is None:
                return torch.zeros(w.shape, device=w.device, dtype=w.dtype)
            if t.shape != w.shape:
                raise ValueError(f"Z and U must have the weight's shape {tuple(w.shape)}, got {tuple(t.shape)}")
            return t.to(device=w.device, dtype=w.dtype, memory_format=torch.contiguous_format, copy=True)

        return _Layer(module, method, proposal, placed(z), placed(u))

    # ---- the three ADMM steps ------------------------------------------------------------------
    @torch.no_grad()
    def _project(self) -> None:
        """``Z = P(W + U)`` on rank 0 (factorch's decomposition of a dense layer holding ``W + U``
        at the fixed ranks, rebuilt densely), then broadcast. Non-finite ``W + U`` (a diverged
        run) is one ``ValueError`` naming the layer, on every rank."""
        for name, layer in self._layers.items():
            if not bool(torch.isfinite(layer.weight).all()) or not bool(torch.isfinite(layer.u).all()):
                raise ValueError(f"fc.ADMM: layer {name!r} has NaN or Inf values in its weight (or its dual U): the "
                                 "training diverged; nothing to project")
        if self._group.is_main:
            for layer in self._layers.values():
                w = layer.weight
                factorized = layer.proposal.build(_holding(layer.module, w.detach() + layer.u))
                layer.z.copy_(factorized.dense_weight().reshape(w.shape))  # onto Z's device and dtype
        self._group.broadcast_tensors([layer.z for layer in self._layers.values()])

    @torch.no_grad()
    def update(self) -> None:
        """One Z-step and U-step: ``Z = P(W + U)`` on the target ranks, then ``U += W - Z``; with a
        ``rho_growth``, rho grows and ``U`` is rescaled. Call it at the start of every epoch."""
        self._check_live()
        self._project()
        for layer in self._layers.values():
            layer.u.add_(layer.weight.detach() - layer.z)
        self._group.broadcast_tensors([layer.u for layer in self._layers.values()])
        if self.rho_growth != 1.0:
            new = min(self.rho * self.rho_growth, self.rho_max)
            for layer in self._layers.values():
                layer.u.mul_(self.rho / new)  # scaled dual U = y / rho
            self.rho = new

    def penalty(self) -> Tensor:
        """``rho / 2 * sum_i ||W_i - Z_i + U_i||_F^2``: add it to the loss of every batch; its
        gradient w.r.t. ``W_i`` is ``rho (W_i - Z_i + U_i)``."""
        self._check_live()
        terms = [(layer.weight - layer.z + layer.u).square().sum() for layer in self._layers.values()]
        return 0.5 * self.rho * torch.stack(terms).sum()

    @torch.no_grad()
    def distance(self) -> dict[str, float]:
        """``||W - Z|| / ||W||`` per layer and their ``"mean"``: how far W is from the target
        ranks (falls towards 0 as ADMM converges)."""
        self._check_live()
        per = {name: float((layer.weight - layer.z).norm() / layer.weight.norm().clamp_min(1e-30))
               for name, layer in self._layers.items()}
        return {"mean": sum(per.values()) / len(per), **per}

    def decompose_(self, calibration: Optional[Sequence[Tensor]] = None) -> Report:
        """Decompose the trained ``W`` (not ``Z``, as the official code does) of every constrained
        layer at exactly ``Z``'s ranks with ``fc.decompose_``, in place; returns its report.
        ``calibration``: input batches for data-aware factors at those ranks (``decompose_``'s).
        Under DDP every rank ends with rank 0's factors."""
        self._check_live()
        config: dict[str, Any] = {name: layer.method for name, layer in self._layers.items()}
        config["_default"] = None  # every other layer stays as it is
        report = decompose_(self.model, config, example_input=self.example_input, calibration=calibration)
        with torch.no_grad():
            for row in report.decomposed:
                module = get_module(self.model, row.name)
                self._group.broadcast_tensors([*module.parameters(), *module.buffers()])
        self.decomposed = True
        return report

    # ---- state -------------------------------------------------------------------------------
    @property
    def ranks(self) -> dict[str, tuple[int, ...]]:
        """The fixed target ranks per layer name."""
        return {name: layer.ranks for name, layer in self._layers.items()}

    def state_dict(self) -> dict[str, Any]:
        """Plain data (``weights_only``-loadable): rho, and per layer the method name, ranks, Z, U."""
        return {"rho": self.rho, "decomposed": self.decomposed,
                "layers": {name: {"method": layer.method.name, "ranks": list(layer.ranks), "z": layer.z, "u": layer.u}
                           for name, layer in self._layers.items()}}

    def load_state_dict(self, state: dict[str, Any], keep_saved_ranks: bool = False) -> None:
        """Restore ``state_dict()``'s layers, ranks, Z, U and rho (validated first: a bad state is
        one ``ValueError`` and changes nothing). The state must constrain the same layers to the
        same ranks as this ADMM's, unless ``keep_saved_ranks``: then the saved ones replace them
        (a resumed run whose rule, e.g. EVBMF, would give other ranks on today's weights)."""
        if not isinstance(state, dict) or not isinstance(state.get("layers"), dict):
            raise ValueError("fc.ADMM.load_state_dict: not an ADMM state_dict (no 'layers' dict)")
        rho = check_rho(state.get("rho"))
        layers = {}
        for name, entry in state["layers"].items():
            try:
                if not isinstance(entry["z"], Tensor) or not isinstance(entry["u"], Tensor):
                    raise TypeError("Z and U must be tensors")
                layers[name] = self._layer(name, entry["method"], entry["ranks"], entry["z"], entry["u"])
            except (KeyError, TypeError, AttributeError, ValueError) as e:
                raise ValueError(f"fc.ADMM.load_state_dict: layer {name!r}: {e}") from None
        saved = {name: (layer.method.name, layer.ranks) for name, layer in layers.items()}
        built = {name: (layer.method.name, layer.ranks) for name, layer in self._layers.items()}
        if saved != built and not keep_saved_ranks:
            diff = next(n for n in sorted(set(saved) | set(built)) if saved.get(n) != built.get(n))
            raise ValueError(f"fc.ADMM.load_state_dict: the state constrains layer {diff!r} to {saved.get(diff)} "
                             f"(method, ranks); this ADMM to {built.get(diff)}: build it with the settings that wrote "
                             "the state, or pass keep_saved_ranks=True")
        self._layers, self.rho, self.decomposed = layers, rho, bool(state.get("decomposed", False))

    def _check_live(self) -> None:
        if self.decomposed:
            raise ValueError("fc.ADMM: the model was decomposed already (decompose_ ends ADMM)")

    def __repr__(self) -> str:
        ranks = ", ".join(f"{n}: {'x'.join(map(str, r))}" for n, r in self.ranks.items())
        return f"ADMM(rho={self.rho:g}, {len(self._layers)} layers: {ranks})"
