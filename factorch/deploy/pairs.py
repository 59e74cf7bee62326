"""Which BatchNorm directly follows which conv: the dataflow, read from a ``torch.fx`` trace.

A BatchNorm ``bn`` folds into the module ``p`` before it (``factorch.deploy.fold``) only when

* ``bn``'s one input is ``p``'s output, and nothing else reads that output (folding changes it);
* each of them is called exactly once in the forward pass (a shared module would change its
  other calls too);
* ``p`` is a conv, a linear layer or a factorized layer with a single output factor, its output
  channels are ``bn``'s, and ``bn`` has running statistics; a linear layer only where its output
  is ``(B, N)`` (a ``BatchNorm1d`` after a ``(B, L, N)`` output normalises another axis).

The forward pass is traced symbolically (``torch.fx``) with factorized layers as leaves, so a
ResNet's ``bn1(conv1(x))``, written in any module's forward, is found. A model that does not
trace (data-dependent control flow) falls back to the pairs whose dataflow its structure alone
proves: consecutive children of a plain ``nn.Sequential`` (its forward is the chain); every other
BatchNorm is then left in place, with the reason in the report.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from factorch.deploy.fold import BATCH_NORMS, bn_refusal, not_foldable, out_channels
from factorch.layers.base import FactorizedLayer


@dataclass(frozen=True)
class Pair:
    """``bn`` (a dotted module name) folds into ``producer``."""

    producer: str
    bn: str


@dataclass
class Dataflow:
    """The foldable pairs, every other BatchNorm with the reason it stays, and how they were found."""

    pairs: list[Pair] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    method: str = "torch.fx"
    dense_only: list[Pair] = field(default_factory=list)  # fold only if the producer is rebuilt dense


def find_pairs(model: nn.Module, output_dims: dict[str, int]) -> Dataflow:
    """The dataflow of ``model`` (see the module docstring). ``output_dims``: the number of
    dimensions of each module's output in a forward pass (a linear layer's (B, N) vs (B, L, N))."""
    registered = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    modules = dict(model.named_modules())
    calls = Counter({name: registered[id(m)] for name, m in modules.items()})  # > 1: shared under several names
    try:
        graph = _trace(model)
    except Exception as e:  # fx raises many types on untraceable code; the fallback says which
        return _sequential_pairs(model, calls, output_dims, f"{type(e).__name__}: {_first_line(e)}")
    called = Counter(n.target for n in graph.nodes if n.op == "call_module")
    flow = Dataflow()
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), BATCH_NORMS):
            continue
        bn_name, source = node.target, node.args[0] if node.args else None
        if called[bn_name] != 1 or calls[bn_name] != 1:
            flow.kept[bn_name] = "it is called more than once (a shared module)"
            continue
        if len(node.args) != 1 or node.kwargs or getattr(source, "op", None) != "call_module":
            flow.kept[bn_name] = "its input is not the output of a module (e.g. a sum or a concatenation)"
            continue
        producer = source.target
        if called[producer] != 1 or calls[producer] != 1:
            why = f"{producer!r} is called more than once (a shared module)"
        elif len(source.users) != 1:
            why = f"the output of {producer!r} is also read elsewhere (folding would change it there)"
        else:
            why = _refusal(producer, modules[producer], modules[bn_name], output_dims)
        _add(flow, Pair(producer, bn_name), why, modules[producer])
    _unreached(model, flow, "it is not called in the traced forward pass")
    return flow


def _trace(model: nn.Module):
    import torch.fx

    class Leaves(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, FactorizedLayer) or super().is_leaf_module(m, qualname)

    return Leaves().trace(model)


def _refusal(name: str, producer: nn.Module, bn: nn.Module, output_dims: dict[str, int]) -> Optional[str]:
    why = bn_refusal(bn) or not_foldable(producer)
    if why:
        return why
    if out_channels(producer) != bn.num_features:
        return f"{bn.num_features} channels after the {out_channels(producer)} outputs of {name!r}"
    if _is_linear(producer) and output_dims.get(name, 2) != 2:
        return f"{name!r} gives a {output_dims[name]}-d output, which the BatchNorm normalises along another axis"
    return None


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, FactorizedLayer) and hasattr(module, "in_features"))


def _sequential_pairs(model: nn.Module, calls: Counter, output_dims: dict[str, int], error: str) -> Dataflow:
    """Consecutive (producer, BatchNorm) children of plain ``nn.Sequential`` modules."""
    flow = Dataflow(method=f"nn.Sequential pairs only (the model does not trace with torch.fx: {error})")
    for seq_name, seq in model.named_modules():
        if type(seq).forward is not nn.Sequential.forward or not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (a, producer), (b, bn) in zip(children, children[1:]):
            if not isinstance(bn, BATCH_NORMS):
                continue
            p_name, bn_name = (f"{seq_name}.{n}" if seq_name else n for n in (a, b))
            if calls[p_name] != 1 or calls[bn_name] != 1 or producer._forward_hooks:
                why = "a shared module or one with a forward hook"
            else:
                why = _refusal(p_name, producer, bn, output_dims)
            _add(flow, Pair(p_name, bn_name), why, producer)
    _unreached(model, flow, "not directly after a conv in an nn.Sequential, and the model does not trace")
    return flow


def _add(flow: Dataflow, pair: Pair, why: Optional[str], producer: nn.Module) -> None:
    """A foldable pair, or a kept BatchNorm and why (noted as foldable into the dense rebuild of a
    factorized layer that has no single output factor)."""
    if why is None:
        flow.pairs.append(pair)
        return
    flow.kept[pair.bn] = why
    if isinstance(producer, FactorizedLayer) and why == not_foldable(producer):
        flow.dense_only.append(pair)


def _unreached(model: nn.Module, flow: Dataflow, reason: str) -> None:
    folded = {p.bn for p in flow.pairs}
    for name, m in model.named_modules():
        if isinstance(m, BATCH_NORMS) and name not in folded and name not in flow.kept:
            flow.kept[name] = reason


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
