"""How the model uses its candidate layers: each one's input size, and which ones cannot be swapped.

``decompose_`` replaces a layer by another module, which changes the model only where the model
calls the layer. Some parents use a child's weight themselves instead: ``nn.MultiheadAttention``
hands its ``out_proj.weight`` to ``F.multi_head_attention_forward`` and never calls its
``out_proj`` (the attention is taken whole, ``factorch.surgery.WHOLE``), torchvision's Swin calls
``F.linear(x, self.qkv.weight, self.qkv.bias)``. Swapping such a child removes the weight its parent
reads (``AttributeError`` at the next forward) or unties a shared one; ``observe`` finds them:

* with ``example_input``, in one pass (``factorch.measure.count.probe``: eval mode, no gradients,
  torch's fused attention kernels off, as after a swap): a candidate whose forward does not run,
  and one whose parameters an operation outside its own forward takes (a ``TorchFunctionMode`` sees
  every torch operation's arguments; the module running at that moment is named as the reader);
* always, from the code alone: a ``self.<path>.<parameter>`` read of the candidate in the
  ``forward`` of a module above it, or in a method that ``forward`` calls as ``self.<method>(...)``
  (Python's ``ast``), and a parameter it shares with another module (tied weights).

Without ``example_input`` only the second part can be checked: ``shifted_window_attention(x,
self.qkv.weight, ...)`` is found, but not a read through an alias (``m = self.qkv; m.weight``),
``getattr`` or a function given the module itself, nor a layer that is never called; give an
example input for models whose modules call functions with their children's weights. torch's
``TransformerEncoderLayer`` and ``TransformerEncoder`` read their children's weights only on their
fused fast path, which a swap turns off (``factorch.fused``): their reads do not count.

``swap_checked`` swaps and then runs ``example_input`` once more: if the forward fails or a new
layer does not run, the model is put back as it was and one ``ValueError`` says why, so a report
never claims what the forward pass does not do.
"""
from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from factorch.fused import READERS
from factorch.measure.count import example_shape, probe
from factorch.surgery import swap

BREAKS = "swapping it would break the forward"


@dataclass
class Usage:
    """``shapes``: each candidate's input shape (no batch) on ``example_input`` (an attention's
    ``(L_q, L_k)``); ``blocked``: per candidate that cannot be swapped, why."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)


def observe(model: nn.Module, candidates: Sequence[tuple[str, nn.Module]], example_input: Any = None) -> Usage:
    """The candidates' input shapes and the ones that cannot be swapped (see the module docstring)."""
    usage = Usage()
    found = [_shared(model, candidates), _code_reads(model, candidates)]
    if example_input is not None:
        usage.shapes, ran, uses = _run(model, candidates, example_input)
        not_run = {name: "its forward did not run on example_input (unused, or its parent uses its weights without "
                         "calling it): left dense, since the model would not run a replacement"
                   for name, _ in candidates if name not in ran}
        found = [found[0], uses, found[1], not_run]  # a tied weight is said as such
    for reasons in reversed(found):  # the first found wins
        usage.blocked.update(reasons)
    return usage


def swap_checked(model: nn.Module, replacements: dict[str, nn.Module], example_input: Any = None) -> None:
    """``swap``, then (with ``example_input``) one more pass: the forward must run and call every new
    layer; otherwise the original layers are put back and one ``ValueError`` names the problem."""
    originals = {name: model.get_submodule(name) for name in replacements}
    swap(model, replacements)
    if example_input is None or not replacements:
        return
    ran: set[str] = set()
    try:
        probe(model, example_input, dict(replacements), lambda name, *_: ran.add(name))
        problem = next((f"layer {n!r} did not run" for n in replacements if n not in ran), None)
    except Exception as e:  # whatever the model raises: the swap broke it
        said = str(e).strip().splitlines()
        problem = f"the forward raised {type(e).__name__}: {said[0][:200] if said else ''}"
    if problem is not None:
        swap(model, originals)
        raise ValueError(f"after replacing {len(replacements)} layer(s), {problem} on example_input; the model was "
                         "put back as it was (a layer its parent uses without calling it was not detected: exclude it "
                         "with filter_fn)")


# ---- the example pass ---------------------------------------------------------------------------

def _run(model: nn.Module, candidates: Sequence[tuple[str, nn.Module]], example_input: Any
         ) -> tuple[dict[str, tuple[int, ...]], set[str], dict[str, str]]:
    """One pass: shapes, the candidates that ran, and the ones whose parameters were used outside
    their own forward (with the reason)."""
    names = {id(m): n for n, m in model.named_modules()}
    owners = {id(p): (name, p_name, m) for name, m in candidates for p_name, p in m.named_parameters()}
    running: list[nn.Module] = []
    shapes: dict[str, tuple[int, ...]] = {}
    uses: dict[str, str] = {}

    class Uses(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            for t in _tensors((args, kwargs)):
                owner = owners.get(id(t))
                if owner is not None and owner[0] not in uses and not any(m is owner[2] for m in running):
                    reader = running[-1] if running else model
                    what = getattr(func, "__name__", str(func))
                    uses[owner[0]] = (f"{_who(owner[0], names.get(id(reader), ''), reader)} uses its {owner[1]} "
                                      f"directly (in {what}), outside its forward: {BREAKS}")
            return func(*args, **kwargs)

    def record(name: str, module: nn.Module, args: tuple, out: Any) -> None:
        shapes.setdefault(name, example_shape(module, args))

    def enter(module: nn.Module, args: tuple) -> None:
        running.append(module)

    def leave(module: nn.Module, args: tuple, out: Any) -> None:
        running.pop()

    hooks = []
    for m in model.modules():
        # first in, last out: a module's own hooks (weight norm's pre-hook computes its weight) are its forward
        hooks += [m.register_forward_pre_hook(enter, prepend=True), m.register_forward_hook(leave, always_call=True)]
    try:
        with Uses():
            probe(model, example_input, dict(candidates), record)
    finally:
        for h in hooks:
            h.remove()
    return shapes, set(shapes), uses


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _who(candidate: str, reader_name: str, reader: nn.Module) -> str:
    """``its parent 'a' (Attention)`` / ``'b' (Block)`` / ``the model (ViT)``."""
    kind = type(reader).__name__
    if candidate.rpartition(".")[0] == reader_name:
        return f"its parent {reader_name!r} ({kind})" if reader_name else f"its parent, the model ({kind}),"
    return f"{reader_name!r} ({kind})" if reader_name else f"the model ({kind})"


# ---- from the code ------------------------------------------------------------------------------

def _code_reads(model: nn.Module, candidates: Sequence[tuple[str, nn.Module]]) -> dict[str, str]:
    """Candidates whose parameter a module above them reads in its ``forward`` as ``self.<path>``."""
    found = {}
    for name, module in candidates:
        parts = name.split(".")
        params = [p for p, _ in module.named_parameters()]
        for i in range(len(parts) - 1, -1, -1):  # the parent first
            above_name = ".".join(parts[:i])
            above = model.get_submodule(above_name)
            if isinstance(above, READERS):
                continue
            path = ".".join(parts[i:])
            read = next((f"self.{path}.{p}" for p in params if f"{path}.{p}" in _self_reads(type(above))), None)
            if read is not None:
                where = "its parent" if i == len(parts) - 1 else "the module above it"
                label = f"{above_name!r}" if above_name else "the model"
                found[name] = (f"{where} {label} ({type(above).__name__}) reads {read} directly in its forward: "
                               f"{BREAKS}")
                break
    return found


@functools.lru_cache(maxsize=None)
def _self_reads(cls: type) -> frozenset[str]:
    """The dotted attribute chains read from the module (``self``, the first argument) in
    ``cls.forward`` and in the methods of ``cls`` it calls as ``self.<method>(...)``, transitively
    (``self.qkv.weight`` gives ``qkv.weight`` and ``qkv``); none where a source cannot be read."""
    chains: set[str] = set()
    todo, seen = ["forward"], set()
    while todo:
        method = todo.pop()
        seen.add(method)
        found = _method_chains(getattr(cls, method, None))
        chains |= found
        todo += [c for c in found if "." not in c and c not in seen and inspect.isfunction(getattr(cls, c, None))]
    return frozenset(chains)


def _method_chains(function: Any) -> set[str]:
    """``_self_reads`` of one function."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError, ValueError):
        return set()
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.args.args:
        return set()
    me = node.args.args[0].arg
    return {chain for n in ast.walk(node) if isinstance(n, ast.Attribute) for chain in [_chain(n, me)] if chain}


def _chain(node: ast.Attribute, me: str) -> Optional[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join(reversed(parts)) if isinstance(node, ast.Name) and node.id == me else None


def _shared(model: nn.Module, candidates: Sequence[tuple[str, nn.Module]]) -> dict[str, str]:
    """Candidates holding a parameter that is also another module's (tied weights)."""
    places: dict[int, list[str]] = {}
    for full, p in model.named_parameters(remove_duplicate=False):
        places.setdefault(id(p), []).append(full)
    found = {}
    for name, module in candidates:
        for p_name, p in module.named_parameters():
            others = [n for n in places.get(id(p), []) if not n.startswith(name + ".")]
            if others:
                found[name] = (f"its {p_name} is also {others[0]!r} (a shared parameter): swapping it would untie "
                               "them")
                break
    return found
