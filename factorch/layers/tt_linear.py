"""TT-matrix fully-connected layer (Novikov et al., "Tensorizing Neural Networks", NeurIPS 2015).

``docs/math.md``, "TT-matrix layers". The weight ``W`` (M x N) is held as d cores ``G_k (r_{k-1}, m_k, n_k, r_k)``
with ``W[(i_1..i_d), (j_1..j_d)] = G_1[i_1, j_1] ... G_d[i_d, j_d]`` (row-major multi-indices),
``M' = prod m_k >= M`` and ``N' = prod n_k >= N``. Sizes that factor badly (a prime) are padded:
the input gets zeros in the padded columns and the padded output rows are dropped, so padding
never changes the result.

The forward pass absorbs one core at a time and never builds ``W``, in the cheaper of two orders
(per example):

* ``rtl`` (core d first): step k costs ``(prod_{j<k} n_j) (prod_{j>k} m_j) n_k r_k r_{k-1} m_k``;
* ``ltr`` (core 1 first): step k costs ``(prod_{j<k} m_j) (prod_{j>k} n_j) r_{k-1} n_k m_k r_k``.

Each step is one matrix product on the state as it lies, never a permuted copy of it
(``tt_contract``). Under ``order="auto"`` a per-batch plan may also merge neighbouring cores
first, fewer and larger products for a few more multiply-adds (``tt_contract.plan_groups``).

Only when both orders exceed building ``W`` once plus a dense product (high ranks, large batches)
does the ``dense`` route build it. ``count_macs`` reports the route and plan actually taken.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorch.measure.count import layer_macs
from factorch.decompositions.tt import interleave, max_tt_ranks, tensorize, tt_matrix_svd, tt_matrix_to_matrix, \
    tt_params, tt_svd, tt_svd_seconds
from factorch.decompositions.svd import singular_values
from factorch.layers.base import FactorizedLayer, as_float64, check_finite, default_variance, init_bias, init_uniform_, \
    traced_for_script
from factorch.layers.conv_spec import LinearSpec
from factorch.rank import Mode, RankRule, RankSpace, Spectrum
from factorch.rank.space import Ranks
from factorch.layers.tt_contract import chain_macs, contract_ltr, contract_rtl, group, plan_groups, plan_macs

ORDERS = ("auto", "ltr", "rtl", "dense")


def tt_linear_shapes(in_features: int, out_features: int, in_shape: Optional[Sequence[int]] = None,
                     out_shape: Optional[Sequence[int]] = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Mode shapes ``(n_1..n_d)``, ``(m_1..m_d)`` of a TT-matrix for an ``in -> out`` layer.

    Given shapes are checked (same length, products at least the sizes: a larger product pads).
    Otherwise ``d = max(2, round(log_8 max(in, out)))`` (factors of about 8; e.g. 4096 = 8^4), both
    sizes are split into d balanced factors, padded where they factor badly (``tensorize``), and
    ordered input factors ascending, output factors descending: step k of the ``rtl`` chain costs
    ``r^2 (n_1..n_k)(m_k..m_d)``, smallest with small prefixes of n and small suffixes of m. For
    25088 x 4096 at rank 4 this order gave the fewest MACs of all orderings for every d in 3..8
    (2.12 M at d = 5, against 3.65 M with Novikov et al.'s 2x7x8x8x7x4 / 4^6).
    """
    for name, size in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must be an int >= 1, got {size!r}")
    if (in_shape is None) != (out_shape is None):
        raise ValueError("give both in_shape and out_shape, or neither")
    if in_shape is None:
        d = max(2, round(math.log(max(in_features, out_features)) / math.log(8)))
        return tuple(sorted(tensorize(in_features, d))), tuple(sorted(tensorize(out_features, d), reverse=True))
    shapes = []
    for name, shape, size in (("in_shape", in_shape, in_features), ("out_shape", out_shape, out_features)):
        if not isinstance(shape, (tuple, list)) or not shape or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
            raise ValueError(f"{name} must be a non-empty sequence of ints >= 1, got {shape!r}")
        if math.prod(shape) < size:
            raise ValueError(f"{name} {tuple(shape)} multiplies to {math.prod(shape)} < {size}")
        shapes.append(tuple(int(v) for v in shape))
    if len(shapes[0]) != len(shapes[1]):
        raise ValueError(f"in_shape {shapes[0]} and out_shape {shapes[1]} need the same number of factors")
    return shapes[0], shapes[1]


class TTLinear(FactorizedLayer):
    """``y = W x + b`` with ``W`` a TT-matrix: parameters ``core0 .. core{d-1}`` and ``bias``.

    ``rank``: an int (every inner TT-rank) or one int per bond, each at most the bond's full rank
    (``from_dense``/``empty_like`` resolve fractions and rules, and cap an int). ``order``: ``auto``
    (cheapest per batch size), ``ltr``, ``rtl`` or ``dense``. A new layer is initialised for
    training from scratch with the output variance of ``nn.Linear`` (``Var W_ij = 1 / (3 N)``).
    """

    structure = ("in_shape", "out_shape", "order")

    def __init__(self, in_features: int, out_features: int, rank: int | tuple[int, ...],
                 in_shape: Optional[Sequence[int]] = None, out_shape: Optional[Sequence[int]] = None,
                 bias: bool = True, order: str = "auto") -> None:
        super().__init__()
        self.in_shape, self.out_shape = tt_linear_shapes(in_features, out_features, in_shape, out_shape)
        if order not in ORDERS:
            raise ValueError(f"TTLinear order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.in_features, self.out_features, self.order = in_features, out_features, order
        self.tt_ranks = self.space(LinearSpec(in_features, out_features, bias), self.in_shape, self.out_shape,
                                   order).check(rank)
        full = (1, *self.tt_ranks, 1)
        for k, (m, n) in enumerate(zip(self.out_shape, self.in_shape)):
            self.register_parameter(f"core{k}", nn.Parameter(torch.empty(full[k], m, n, full[k + 1])))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self._route_costs = self._costs()
        self.reset_parameters()

    # ---- structure ---------------------------------------------------------------------------
    @property
    def cores(self) -> list[Tensor]:
        """The d cores ``(r_{k-1}, m_k, n_k, r_k)``."""
        return [getattr(self, f"core{k}") for k in range(len(self.in_shape))]

    @property
    def ranks(self) -> tuple[int, ...]:
        return self.tt_ranks

    @property
    def padded(self) -> tuple[int, int]:
        """(M', N'): the sizes the cores factor (>= out_features, in_features)."""
        return math.prod(self.out_shape), math.prod(self.in_shape)

    def init_factors(self) -> None:
        """Core entries zero-mean uniform with variance ``s^2``, ``s^(2d) prod_k r_k = 1 / (3 N)``: a
        TT-matrix entry is a sum of ``prod r_k`` products of d independent entries, so
        ``Var W_ij = 1 / (3 N)`` as in ``nn.Linear``'s default (uniform +-1/sqrt(N)), and entries are
        uncorrelated: the output variance matches the dense layer's."""
        variance = (default_variance(self.in_features) / math.prod(self.tt_ranks)) ** (1.0 / len(self.in_shape))
        for core in self.cores:
            init_uniform_(core, variance)
        init_bias(self.bias, self.in_features)

    # ---- costs and forward -------------------------------------------------------------------
    def _costs(self) -> dict[str, tuple[int, int]]:
        """Per route: (fixed MACs per call, MACs per example) of the plain chains (Novikov et al. 2015)."""
        m, n, d = self.out_shape, self.in_shape, len(self.in_shape)
        r = (1, *self.tt_ranks, 1)
        # building W left to right: step k makes (m_1..m_k, n_1..n_k, r_k) from r_{k-1}
        build = sum(math.prod(m[:k + 1]) * math.prod(n[:k + 1]) * r[k] * r[k + 1] for k in range(d))
        return {"ltr": (0, chain_macs(m, n, self.tt_ranks, rtl=False)),
                "rtl": (0, chain_macs(m, n, self.tt_ranks, rtl=True)),
                "dense": (build, self.in_features * self.out_features)}

    def route(self, batch: int) -> str:
        """The contraction order used for ``batch`` examples: the fewest MACs of the plain chains."""
        if self.order != "auto":
            return self.order
        return min(self._route_costs, key=lambda k: self._route_costs[k][0] + batch * self._route_costs[k][1])

    def plan(self, batch: int) -> tuple[str, tuple[int, ...]]:
        """``(route, merge)`` for ``batch`` examples: the merge gives the run lengths of cores
        multiplied into one before the chain (all ones: the plain chain, which the explicit
        orders ``ltr``/``rtl`` always run); ``()`` for the dense route."""
        how = self.route(batch)
        if how == "dense":
            return how, ()
        if self.order != "auto":
            return how, (1,) * len(self.in_shape)
        return how, plan_groups(self.out_shape, self.in_shape, self.tt_ranks, how == "rtl", batch)

    def count_macs(self, input: Tensor, output: Tensor) -> int:
        """MACs of one call for the whole batch (``factorch.measure.count`` protocol); bias adds excluded."""
        batch = input.numel() // self.in_features
        how, sizes = self.plan(batch)
        fixed, per_example = self._route_costs[how] if how == "dense" else \
            plan_macs(self.out_shape, self.in_shape, self.tt_ranks, sizes, how == "rtl")
        return fixed + batch * per_example

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)  # (B, N)
        how, sizes = self.plan(x.shape[0])
        if how == "dense":
            return F.linear(x, self._weight(), self.bias).reshape(*lead, self.out_features)
        m_pad, n_pad = self.padded
        if n_pad > self.in_features:
            x = F.pad(x, (0, n_pad - self.in_features))  # zero inputs: the padded columns do nothing
        cores = self.cores
        if not torch.is_grad_enabled():  # plain tensors: ops on parameters cost ~10 us more each
            cores = [c.detach() for c in cores]
        cores = group(cores, sizes)
        y = contract_rtl(x, cores) if how == "rtl" else contract_ltr(x, cores)  # (B, M')
        if m_pad > self.out_features:
            y = y[:, :self.out_features]
        if self.bias is not None:
            y = y + (self.bias if torch.is_grad_enabled() else self.bias.detach())
        return y.reshape(*lead, self.out_features)

    def _weight(self) -> Tensor:
        return tt_matrix_to_matrix(self.cores)[:self.out_features, :self.in_features]

    # ---- rank space and decomposition ---------------------------------------------------------
    @classmethod
    def dense_config(cls, linear: nn.Linear) -> LinearSpec:
        return LinearSpec.of(linear)

    @classmethod
    def dense_args(cls, linear: nn.Linear, in_shape: Optional[Sequence[int]] = None,
                   out_shape: Optional[Sequence[int]] = None, order: str = "auto") -> dict[str, Any]:
        n_s, m_s = tt_linear_shapes(linear.in_features, linear.out_features, in_shape, out_shape)
        return {**LinearSpec.of(linear).as_dict(), "in_shape": n_s, "out_shape": m_s, "order": order}

    @classmethod
    def space(cls, spec: LinearSpec, in_shape: Optional[Sequence[int]] = None,
              out_shape: Optional[Sequence[int]] = None, order: str = "auto") -> RankSpace:
        """One mode per bond of the interleaved ``(m_1 n_1, ..., m_d n_d)`` tensor (full ranks
        ``max_tt_ranks``); params ``sum_k r_{k-1} m_k n_k r_k``; MACs of the route ``count`` sees at
        batch 1 (costed on the ``meta`` device: the same code as the forward pass)."""
        n_s, m_s = tt_linear_shapes(spec.in_features, spec.out_features, in_shape, out_shape)
        modes = [m * n for m, n in zip(m_s, n_s)]

        def macs(ranks: tuple[int, ...], shape: tuple[int, ...]) -> int:
            with torch.device("meta"):
                layer = cls(spec.in_features, spec.out_features, ranks, n_s, m_s, bias=spec.bias, order=order)
            return layer_macs(layer, shape)

        return RankSpace("TTLinear", tuple(Mode(f"bond {k + 1}", f) for k, f in enumerate(max_tt_ranks(modes))),
                         params=lambda r: tt_params(modes, r), macs=macs,
                         dense_params=spec.in_features * spec.out_features, dense_macs=spec.macs,
                         bias=spec.out_features if spec.bias else 0, error_modes=len(modes) - 1,
                         fraction="uniform", unit="bond", work=lambda r: (tt_svd_seconds(modes, r), "TT-SVD"))

    @classmethod
    def operands(cls, linear: nn.Linear, in_shape: Optional[Sequence[int]] = None,
                 out_shape: Optional[Sequence[int]] = None, order: str = "auto") -> list[Tensor]:
        """The weight in its own dtype (TT-SVD reads it in float64 block by block: no float64 copy),
        zero-padded to (prod out_shape, prod in_shape)."""
        n_s, m_s = tt_linear_shapes(linear.in_features, linear.out_features, in_shape, out_shape)
        return [_padded_weight(linear, m_s, n_s)]

    @classmethod
    def rank_space(cls, linear: nn.Linear, in_shape: Optional[Sequence[int]] = None,
                   out_shape: Optional[Sequence[int]] = None, order: str = "auto") -> RankSpace:
        """``space`` with the bond spectra of the weight and TT-SVD choosing ranks under a rule."""
        space = super().rank_space(linear, in_shape=in_shape, out_shape=out_shape, order=order)
        n_s, m_s = tt_linear_shapes(linear.in_features, linear.out_features, in_shape, out_shape)
        space.rule_ranks = lambda rule: sequential_ranks(interleave(cls.operands(linear, n_s, m_s)[0], m_s, n_s), rule)
        return space

    @classmethod
    def unfold(cls, weight: Tensor, in_shape: Optional[Sequence[int]] = None,
               out_shape: Optional[Sequence[int]] = None, order: str = "auto") -> list[list[Tensor]]:
        """Bond k: the interleaved tensor as ``(m_1 n_1 .. m_k n_k) x rest`` (Oseledets 2011, Thm 2.2)."""
        n_s, m_s = tt_linear_shapes(weight.shape[1], weight.shape[0], in_shape, out_shape)
        return bond_unfoldings(interleave(weight, m_s, n_s))

    @classmethod
    def from_dense_at(cls, linear: nn.Linear, ranks: Ranks, in_shape: Optional[Sequence[int]] = None,
                   out_shape: Optional[Sequence[int]] = None, order: str = "auto") -> "TTLinear":
        """TT-SVD of ``linear``'s weight (float64, zero-padded), in ``linear``'s dtype and device."""
        check_finite("linear weight", linear.weight)
        layer = cls.empty_at(linear, ranks, in_shape=in_shape, out_shape=out_shape, order=order)
        layer = layer._place(linear.weight)
        (w,) = cls.operands(linear, layer.in_shape, layer.out_shape)
        cores = tt_matrix_svd(w, layer.out_shape, layer.in_shape, layer.tt_ranks)
        with torch.no_grad():
            for param, core in zip(layer.cores, cores):
                param.copy_(core)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer.train(linear.training)

    def dense_weight(self) -> Tensor:
        return tt_matrix_to_matrix([as_float64(c) for c in self.cores])[:self.out_features, :self.in_features]

    def to_dense(self) -> nn.Linear:
        ref = self.core0
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        dense = dense.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense.train(self.training)

    def spec(self) -> dict[str, Any]:
        return {"config": {"in_features": self.in_features, "out_features": self.out_features,
                           "in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
                           "bias": self.bias is not None, "order": self.order}, "rank": list(self.tt_ranks)}

    @classmethod
    def options(cls, config: dict[str, Any]) -> dict[str, Any]:
        return {"in_shape": config.get("in_shape"), "out_shape": config.get("out_shape"),
                "order": config.get("order", "auto")}

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script``: a trace (``traced_for_script``), taking the route ``order`` picks
        for batch 1 (pin ``order`` to choose another)."""
        return traced_for_script(self, self.core0.new_zeros(1, self.in_features))

    def extra_repr(self) -> str:
        m_pad, n_pad = self.padded
        pad = f", padded=({m_pad}, {n_pad})" if (m_pad, n_pad) != (self.out_features, self.in_features) else ""
        shape = lambda s: "x".join(map(str, s))  # noqa: E731
        return (f"{self.in_features}, {self.out_features}, in_shape={shape(self.in_shape)}, "
                f"out_shape={shape(self.out_shape)}, ranks={self.tt_ranks}, order={self.order}{pad}, "
                f"bias={self.bias is not None}")


def sequential_ranks(tensor: Tensor, rule: RankRule) -> tuple[int, ...]:
    """The TT-ranks TT-SVD of ``tensor`` picks under ``rule``: bond k from the spectrum of the
    unfolding left after bonds 1..k-1 were truncated (Oseledets 2011, Alg. 1; ``Tolerance(eps)``
    keeps each discarded tail below ``eps ||A|| / sqrt(d - 1)``, which bounds the whole error). A
    rule's 0 is reported as 0 (the unfolding looks like noise), so callers can skip the layer."""
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("its weights have NaN or Inf values; refusing to read their spectra")
    total, bonds = float((tensor * tensor).sum()), max(tensor.dim() - 1, 1)
    raw: list[int] = []

    def pick(z: Tensor) -> int:
        raw.append(int(rule.rank_of(Spectrum(singular_values(z), tuple(z.shape), total), min(z.shape), bonds)))
        return raw[-1]

    tt_svd(tensor, rule=pick)
    return tuple(raw)


def bond_unfoldings(tensor: Tensor) -> list[list[Tensor]]:
    """Per bond k of a tensor train over ``tensor``'s axes: ``[[tensor as (n_1..n_k) x (n_{k+1}..n_d)]]``.
    TT-SVD at ranks r_k has ``||A - A_hat||^2 <= sum_k`` (the discarded sigma^2 of bond k's
    unfolding) (Oseledets 2011, Thm 2.2): these spectra rate the bonds."""
    shape = tensor.shape
    return [[tensor.reshape(math.prod(shape[:k + 1]), -1)] for k in range(len(shape) - 1)]


def _padded_weight(linear: nn.Linear, out_shape: Sequence[int], in_shape: Sequence[int]) -> Tensor:
    """``linear.weight`` (detached, its own dtype), zero-padded to (prod out_shape, prod in_shape):
    a copy only where there is padding."""
    w = linear.weight.detach()
    pad = (0, math.prod(in_shape) - w.shape[1], 0, math.prod(out_shape) - w.shape[0])
    return F.pad(w, pad) if any(pad) else w
