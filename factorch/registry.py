"""The (method type, layer type) -> handler table, and the one decision path.

A handler (filled in by ``@register``) only says whether its method applies to a layer and with
which factorized class (``Candidate``), or why not (``NotApplicable``). Everything else -- which
method of a list, which ranks, skip with a reason, or build -- is decided in one place,
``decide``, and for a whole model (budgets included) by ``decide_all``; ``decompose_``, ``plan``,
the sweep and ``fc.ADMM`` all go through them (``propose``: one layer, one method, fixed ranks).

A list of methods means "the first method that handles the layer usefully": a method that does
not apply, whose ranks come out 0 (a rule found only noise), above the ranks its layer class
finds worth computing (``RankSpace.limit``: CP beyond the channel count) or that would not reduce
the layer's MACs is passed over, and the report says why.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from factorch.layers.base import FactorizedLayer, skip_init
from factorch.layers.conv_spec import ConvSpec, kernel_text
from factorch.methods import Method
from factorch.rank import Budget, Item, Pool, RankRule, RankSpace, Resolution, allocate, resolve

if TYPE_CHECKING:
    from factorch.calibration.statistics import Whitening


@dataclass(frozen=True)
class NotApplicable:
    """The method does not apply to this layer (e.g. Tucker-2 on a 1x1 conv): the next method in
    the list is tried; if none applies, ``reason`` is reported."""

    reason: str


@dataclass(frozen=True)
class Candidate:
    """The method applies: ``layer_cls`` with structure ``options`` (``empty_at`` and
    ``from_dense_at`` get them, e.g. TT-conv's order) and decomposition ``kwargs`` (``from_dense_at``
    only, e.g. CP restarts). Ranks are not chosen here."""

    layer_cls: type[FactorizedLayer]
    options: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def whitening(self, whitening: Optional["Whitening"]) -> Optional["Whitening"]:
        """The layer's calibration whitening if this class can use it (it has an ``input_factor``)."""
        return whitening if self.layer_cls.input_factor else None

    def space(self, module: nn.Module, whitening: Optional["Whitening"] = None) -> RankSpace:
        """The rank space of ``module``; with a whitening, of its whitened copy: rules and budgets
        then read the whitened spectra (the output energy on the calibration inputs)."""
        if whitening is not None:
            module = whitening.whitened(module)
        return self.layer_cls.rank_space(module, **self.options)


@dataclass(frozen=True)
class Proposal:
    """Replace the layer by ``layer_cls`` at ``ranks`` (resolved ints, built by the layer's int path
    ``from_dense_at``/``empty_at``: never resolved again); with ``whitening``, by data-aware factors
    (``factorch.calibration``)."""

    layer_cls: type[FactorizedLayer]
    ranks: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    whitening: Optional["Whitening"] = None

    @property
    def rank(self) -> int | tuple[int, ...]:
        """The ranks as a rank spec: an int for single-rank layers, the tuple otherwise."""
        return self.ranks[0] if len(self.ranks) == 1 else self.ranks

    def build(self, module: nn.Module) -> FactorizedLayer:
        """Decompose ``module`` at exactly these ranks (fitted to its inputs if ``whitening`` is set)."""
        with skip_init():  # no from-scratch init of factors about to be overwritten
            if self.whitening is not None:
                return self.whitening.build(self.layer_cls, module, self.ranks, self.options, self.kwargs)
            return self.layer_cls.from_dense_at(module, self.ranks, **self.options, **self.kwargs)

    def with_whitening(self, whitening: Optional["Whitening"]) -> "Proposal":
        """The same structure and ranks with other factors: ``None`` gives weight-only ones."""
        return replace(self, whitening=whitening)

    def empty(self, module: nn.Module) -> FactorizedLayer:
        """A freshly initialised layer of this structure (from scratch; on ``meta``: costing only)."""
        return self.layer_cls.empty_at(module, self.ranks, **self.options)

    def fresh(self, module: nn.Module) -> FactorizedLayer:
        """``empty`` on ``module``'s device and dtype, in its train/eval mode: training from scratch."""
        ref = next(module.parameters())
        return self.empty(module).to(device=ref.device, dtype=ref.dtype).train(module.training)


Handler = Callable[[Any, nn.Module], Union[Candidate, NotApplicable]]
_HANDLERS: dict[tuple[type, type], Handler] = {}


def register(method_type: type[Method], *layer_types: type[nn.Module]) -> Callable[[Handler], Handler]:
    """Decorator: ``@register(Tucker2, nn.Conv2d)`` makes the function the handler for that pair;
    several layer types (``@register(Tucker2, nn.Conv1d, nn.Conv2d, ...)``) share one handler."""

    def add(handler: Handler) -> Handler:
        for layer_type in layer_types:
            _HANDLERS[(method_type, layer_type)] = handler
        return handler

    return add


def handler_for(method: Method, module: nn.Module) -> Handler | None:
    """The handler for ``type(method)`` and the most specific registered base of ``type(module)``."""
    for layer_type in type(module).__mro__:
        handler = _HANDLERS.get((type(method), layer_type))
        if handler is not None:
            return handler
    return None


def method_types() -> list[type[Method]]:
    """Every method type with a handler for some layer type, sorted by name."""
    return sorted({method_type for method_type, _ in _HANDLERS}, key=lambda t: t.__name__)


def layer_types() -> tuple[type, ...]:
    """Every layer type some method can handle (what ``decompose_`` reports on)."""
    return tuple({layer_type for _, layer_type in _HANDLERS})


def candidate(method: Method, module: nn.Module) -> Union[Candidate, NotApplicable]:
    """What ``method``'s handler says about ``module``."""
    handler = handler_for(method, module)
    if handler is None:
        return NotApplicable(f"{type(method).__name__} does not handle {type(module).__name__}")
    return handler(method, module)


NOMINAL_SIZE = 32  # conv input side (per spatial axis) used to test "fewer MACs" when no example_input is given


def nominal_shape(module: nn.Module) -> tuple[int, ...]:
    """A stand-in input shape (no batch) for costing a layer without ``example_input``: a Linear's
    own ``(in_features,)``, an attention's one query and one key ``(1, 1)`` (its projections cost
    per token; ``Q K^T`` and ``A V`` cost the same dense and factorized), a conv's ``(C, 32)``,
    ``(C, 32, 32)`` or ``(C, 32, 32, 32)`` by its dimensionality (larger where its receptive field
    needs it)."""
    if isinstance(module, nn.Linear):
        return (module.in_features,)
    if isinstance(module, nn.MultiheadAttention):
        return (1, 1)
    reach = max(d * (k - 1) + 1 for d, k in zip(module.dilation, module.kernel_size))
    side = max(NOMINAL_SIZE, reach)
    return (module.in_channels, *(side,) * len(module.kernel_size))


def layer_label(module: nn.Module) -> str:
    """A layer in one short string, for messages: ``conv3x3 16->32 s2 g4`` (2-D), ``conv1d k5 16->32``,
    ``conv3d 3x3x3 16->32 s(1,2,2)``, ``convT2d 4x4 64->32 s2``, ``linear 512->10``."""
    if isinstance(module, _ConvNd):
        spec = ConvSpec.of(module)
        if spec.dims == 2 and not spec.transposed:
            head = f"conv{kernel_text(spec)}"
        else:
            head = f"conv{'T' if spec.transposed else ''}{spec.dims}d {kernel_text(spec)}"
        strides = set(spec.stride)
        s = "" if strides == {1} else f" s{spec.stride[0]}" if len(strides) == 1 else \
            f" s({','.join(map(str, spec.stride))})"
        g = f" g{spec.groups}" if spec.groups > 1 else ""
        return f"{head} {spec.in_channels}->{spec.out_channels}{s}{g}"
    if isinstance(module, nn.Linear):
        return f"linear {module.in_features}->{module.out_features}"
    if isinstance(module, nn.MultiheadAttention):
        dims = "" if module._qkv_same_embed_dim else f" kdim {module.kdim} vdim {module.vdim}"
        return f"attention {module.embed_dim} h{module.num_heads}{dims}"
    return type(module).__name__


@dataclass(frozen=True)
class Decision:
    """What happens to one layer. ``proposal`` set: build it; else ``skipped`` says why it stays
    dense. ``method``: the method used, or the first that applied. ``note``: what the user should
    know about a built layer (ranks capped at full rank, a fraction below rank 1, methods passed
    over), or about the ranks a skipped layer was costed at (the resolver's note). ``pending``: a ``Budget`` governs the layer and has not been allocated yet
    (``decide_all`` does that); ``space``/``index`` say where to resume."""

    method: Optional[Method] = None
    proposal: Optional[Proposal] = None
    skipped: Optional[str] = None
    note: str = ""
    ranks: Optional[tuple[int, ...]] = None  # the ranks built, or (skipped) the last ones costed
    params_after: Optional[int] = None
    macs_after: Optional[int] = None
    pending: bool = False
    space: Optional[RankSpace] = None
    index: int = 0
    passed: tuple[tuple[str, str], ...] = ()  # (method name, why it was passed over)
    capped: bool = False  # an int rank was lowered to a mode's full rank (noted)


@dataclass(frozen=True)
class Context:
    """How a whole decision is made: ``shape`` of one input (no batch) to cost the layer at;
    ``nominal``: that shape is a stand-in (no example_input), which messages say;
    ``from_scratch``: the layer will be freshly initialised, not decomposed (rules refused);
    ``explicit``: the user named this layer, so no method applying is an error;
    ``whitening``: the layer's calibration statistics (``factorch.calibration``): methods whose
    layer class has an input factor read whitened spectra and build data-aware factors;
    ``floor``: a layer whose dense cost is below it stays dense (``Floor``);
    ``blocked``: why the layer cannot be swapped at all (``factorch.usage``: its parent reads its
    weight instead of calling it, ...): it stays dense with this reason, and naming it is an error."""

    shape: tuple[int, ...]
    nominal: bool = False
    from_scratch: bool = False
    explicit: bool = False
    whitening: Optional["Whitening"] = None
    floor: Optional["Floor"] = None
    blocked: Optional[str] = None


# Where a layer is too small to matter (``decompose_``'s ``min_share``): a share of the model's
# cost. Measured on the zoo (benchmarks/layer_shares.py; docs/architecture.md, "Layers too small
# to matter"): a CIFAR model's classifier head costs 0.0003-0.006 % of its MACs, each 3x3 conv of
# ResNet-110 0.9 %: 0.2 % leaves the heads dense and the convs of the deepest zoo model decomposable.
MIN_SHARE = 0.002


@dataclass(frozen=True)
class Floor:
    """A layer whose dense cost (MACs at its input size, or its parameters) is below ``share`` of
    the model's ``total`` stays dense: whatever rank it gets, its decomposition saves less than
    that, and a tiny head decomposed at rank 1 costs accuracy for nothing."""

    share: float
    total: int
    unit: str  # "MACs" or "parameters"

    def reason(self, space: RankSpace, shape: tuple[int, ...]) -> Optional[str]:
        """Why a layer of this rank space stays dense, or None when it is large enough."""
        cost = space.dense_macs(shape) if self.unit == "MACs" else space.dense_params + space.bias
        if cost >= self.share * self.total:
            return None
        return (f"too small to matter: {cost:,} of the model's {self.total:,} {self.unit} ({cost / self.total:.3%}), "
                f"below min_share {self.share:g}")


RULES_NEED_WEIGHTS = ("reads the trained weights' spectra, which a layer trained from scratch does not have "
                      "(random weights have no structure for a rank rule to find); give an int, a tuple, a fraction "
                      "or fc.Budget")


def decide(name: str, module: nn.Module, methods: Sequence[Method], ctx: Context, *,
           allocated: Optional[dict[str, Optional[tuple[int, ...]]]] = None, resume: Optional[Decision] = None
           ) -> Decision:
    """The one decision for one layer (see the module docstring). A ``ValueError`` from a method or
    its ranks (a rank above full, NaN weights, ...) is raised once, naming the layer."""
    try:
        return _decide(name, module, methods, ctx, allocated, resume)
    except ValueError as e:
        raise ValueError(f"layer {name!r} ({layer_label(module)}): {e}") from None


def _decide(name: str, module: nn.Module, methods: Sequence[Method], ctx: Context,
            allocated: Optional[dict], resume: Optional[Decision]) -> Decision:
    if ctx.blocked:
        if ctx.explicit:  # the user named this layer
            raise ValueError(f"cannot be replaced: {ctx.blocked}")
        return Decision(skipped=ctx.blocked)
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and not weight.is_meta and not ctx.from_scratch and not bool(weight.any()):
        return Decision(skipped="its weight is all zero (e.g. a zero-initialised head): nothing to approximate")
    start = resume.index if resume is not None else 0
    passed = list(resume.passed) if resume is not None else []
    first = resume.method if resume is not None else None
    not_applicable: list[str] = []
    costed: dict[str, Any] = {}  # the last method that got as far as ranks: shown on a skipped row
    for i in range(start, len(methods)):
        method = methods[i]
        found = candidate(method, module)
        if isinstance(found, NotApplicable):
            not_applicable.append(found.reason)
            continue
        first = first or method
        whitening = found.whitening(ctx.whitening)
        space = found.space(module, whitening)
        space.step = method.multiple  # ranks on the method's grid (rules, fractions, budgets)
        small = ctx.floor.reason(space, ctx.shape) if ctx.floor is not None and not ctx.explicit else None
        if small:
            return Decision(method=method, skipped=small)
        if isinstance(method.rank, Budget):
            if allocated is None:
                return Decision(method=first, pending=True, space=space, index=i, passed=tuple(passed))
            ranks = allocated.get(name)
            if ranks is None:
                passed.append((method.name, f"no rank makes this layer cheaper than dense under {method.rank}"))
                continue
            resolution = Resolution(ranks)
        else:
            if ctx.from_scratch and isinstance(method.rank, RankRule):
                raise ValueError(f"from_scratch: {method.rank!r} {RULES_NEED_WEIGHTS}")
            resolution = resolve(method.rank, space)
        ranks = resolution.ranks
        costed = dict(space=space, capped=resolution.capped, note=resolution.note)
        if min(ranks) == 0:
            passed.append((method.name, f"rank 0 from {method.rank!r} (the weights look like noise)"))
            continue
        refused = space.refusal(ranks)  # beyond the ranks worth computing (CP: more components than channels)
        if refused:
            passed.append((method.name, refused))
            continue
        before, after = space.dense_macs(ctx.shape), space.macs(ranks, ctx.shape)
        costed.update(ranks=ranks, params_after=space.params(ranks) + space.bias, macs_after=after)
        if after >= before:
            nominal = "x".join(map(str, ctx.shape[1:]))
            where = f" (at a nominal {nominal} input)" if ctx.nominal and nominal else ""
            passed.append((method.name, f"ranks {ranks} do not reduce MACs{where}: {before:,} -> {after:,}"))
            continue
        notes = [costed.pop("note")] + [f"{m} passed over: {why}" for m, why in passed]
        return Decision(method=method, proposal=Proposal(found.layer_cls, ranks, found.kwargs, found.options,
                                                         whitening),
                        note="; ".join(n for n in notes if n), **costed)
    if first is not None:
        reasons = [f"{m}: {why}" for m, why in passed] if len(passed) > 1 else [why for _, why in passed]
        return Decision(method=first, skipped="; ".join(reasons), **(costed if len(passed) == 1 else {}))
    reason = "; ".join(dict.fromkeys(not_applicable))
    if ctx.explicit:  # the user named this layer: not handling it is an error
        raise ValueError(f"not supported: {reason}")
    return Decision(skipped=reason)


def propose(method: Method, module: nn.Module, shape: Optional[tuple[int, ...]] = None, name: str = "layer"
            ) -> Proposal:
    """The proposal for one layer under one method with fixed ranks or a rule (not a budget), by
    ``decide``: ``shape`` (no batch) is the input size to cost it at (default a nominal one). A
    method that does not apply, or is not useful there, is one ``ValueError`` with the reason."""
    decision = decide(name, module, [method], Context(shape or nominal_shape(module), nominal=shape is None))
    if decision.proposal is None:
        what = "a budget" if decision.pending else decision.skipped
        raise ValueError(f"{method!r} does not decompose {name!r} ({layer_label(module)}): {what}")
    return decision.proposal


MethodsFor = Callable[[str, nn.Module], Optional[Sequence[Method]]]


@dataclass
class Plan:
    """``decide_all``'s result: a decision per layer name (None: no method given, e.g. excluded)
    and the budget pools."""

    decisions: dict[str, Optional[Decision]]
    pools: list[Pool]


def decide_all(candidates: Sequence[tuple[str, nn.Module]], methods_for: MethodsFor,
               context_of: Callable[[str, nn.Module], Context], exact_shapes: bool, timing: Any = None) -> Plan:
    """Decide every layer; layers a ``fc.Budget`` governs are pooled per budget, allocated
    (``factorch.rank.allocate``; a latency budget by ``factorch.latency_budget``, which times the
    model and example input in ``timing``), then decided with their ranks. ``exact_shapes``: the
    contexts' shapes are the real input sizes (a MACs or latency budget needs them)."""
    decisions: dict[str, Optional[Decision]] = {}
    pooled: dict[Budget, list[tuple[str, nn.Module, Decision]]] = {}
    for name, module in candidates:
        methods = methods_for(name, module)
        if not methods:
            decisions[name] = None
            continue
        d = decide(name, module, methods, context_of(name, module))
        decisions[name] = d
        if d.pending:
            pooled.setdefault(methods[d.index].rank, []).append((name, module, d))
    pools = []
    for budget, members in pooled.items():
        if budget.kind in ("macs", "latency") and not exact_shapes:
            raise ValueError(f"{budget!r} needs example_input: a layer's MACs depend on its input size")
        items = [Item(n, d.space, context_of(n, m).shape, flat=context_of(n, m).from_scratch, label=layer_label(m))
                 for n, m, d in members]
        if budget.kind == "latency":
            from factorch.latency_budget import allocate_latency

            builders = {n: (m, candidate(methods_for(n, m)[d.index], m)) for n, m, d in members}
            ranks, pool = allocate_latency(budget, items, builders, timing)
        else:
            ranks, pool = allocate(budget, items)
        pools.append(pool)
        for name, module, d in members:
            decisions[name] = decide(name, module, methods_for(name, module), context_of(name, module),
                                     allocated=ranks, resume=d)
    return Plan(decisions, pools)
