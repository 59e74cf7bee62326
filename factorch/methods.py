"""Method configs: what to decompose a layer into and at which rank (frozen dataclasses).

The "how" of ``decompose_`` lives here; ``handlers.py`` says which layers each method applies to.
Every config validates its rank spec on construction (``rank.validate_rank``).

``multiple=m`` (every method, keyword only): the ranks a rule, a fraction or a budget chooses are
multiples of ``m`` (or a mode's full rank): the factor convs then have channel counts the
runtime's blocked kernels take whole (``docs/math.md``, "Ranks in multiples of the channel
block"). Ranks given as ints or tuples are taken as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Optional

from factorch.rank import EVBMF, RankSpec, validate_rank


@dataclass(frozen=True, repr=False)
class Method:
    """Base config. ``name`` is the CLI's ``--method`` value; subclasses register themselves."""

    rank: RankSpec = field(default_factory=EVBMF)
    multiple: int = field(default=1, kw_only=True)
    name: ClassVar[str] = ""
    n_modes: ClassVar[Optional[int]] = 1  # ranks in a tuple spec; None: any number (TT: one per bond)
    by_name: ClassVar[dict[str, type["Method"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            Method.by_name[cls.name] = cls

    def __post_init__(self) -> None:
        try:
            validate_rank(self.rank, self.n_modes)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None
        if isinstance(self.multiple, bool) or not isinstance(self.multiple, int) or self.multiple < 1:
            raise ValueError(f"{type(self).__name__} multiple must be an int >= 1 (e.g. 16, the channel block of "
                             f"AVX-512 convolution kernels), got {self.multiple!r}")

    def __repr__(self) -> str:
        """The dataclass repr, without ``multiple`` when it is 1 (so configs written before it existed
        read the same: a run checkpoint compares its settings by repr)."""
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr and f.name != "multiple"]
        shown += [f"multiple={self.multiple!r}"] if self.multiple != 1 else []
        return f"{type(self).__name__}({', '.join(shown)})"

    @classmethod
    def from_name(cls, name: str, rank: RankSpec, multiple: int = 1) -> "Method":
        """``Method.from_name("tucker2", EVBMF())``; a clear error names the known methods."""
        try:
            method_type = cls.by_name[name]
        except KeyError:
            raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(cls.by_name))}") from None
        return method_type(rank, multiple=multiple)


@dataclass(frozen=True, repr=False)
class Tucker2(Method):
    """Tucker-2 on the channel modes: a conv (Conv1d/2d/3d, ConvTranspose1d/2d/3d) with a kernel larger
    than 1x1 -> ``TuckerConv``.

    ``rank``: int (both modes), ``(out_rank, in_rank)``, a fraction of parameters, or a rule."""

    name: ClassVar[str] = "tucker2"
    n_modes: ClassVar[int] = 2


@dataclass(frozen=True, repr=False)
class Tucker3(Method):
    """Tucker-3: a conv (any dimensionality, plain or transposed) with a kernel larger than 1x1 ->
    ``Tucker3Conv``: the two channel modes and the flattened spatial mode (prod(k)) factorized, by
    HOOI (Gobieski et al., course project; ``docs/math.md``, "Tucker-3 with a factorized spatial mode").

    ``rank``: int (every mode), ``(out_rank, in_rank, spatial_rank)``, a fraction of parameters, or
    a rule (EVBMF, Energy, Tolerance: on each mode's singular values)."""

    name: ClassVar[str] = "tucker3"
    n_modes: ClassVar[int] = 3


@dataclass(frozen=True, repr=False)
class CP(Method):
    """CP (ALS): a conv (any dimensionality, plain or transposed) with a kernel larger than 1x1 ->
    ``CPConv`` (one depthwise one-axis conv per spatial axis). ``restarts``: ALS runs kept
    by best fit (the first from the SVD init, the others from seeded random starts)."""

    restarts: int = 1
    name: ClassVar[str] = "cp"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or self.restarts < 1:
            raise ValueError(f"CP restarts must be an int >= 1, got {self.restarts!r}")


@dataclass(frozen=True, repr=False)
class SVD(Method):
    """Truncated SVD: Linear -> ``SVDLinear``, a pointwise conv (1x1, k1, 1x1x1; plain or transposed)
    -> ``SVDConv``, MultiheadAttention -> ``SVDMultiheadAttention`` (its q, k, v and output
    projections).

    ``rank``: int (every projection of an attention), a fraction, a rule, or, for an attention,
    ``(q, k, v, out)`` (a tuple given to a linear layer is an error naming it)."""

    name: ClassVar[str] = "svd"
    n_modes: ClassVar[Optional[int]] = None


@dataclass(frozen=True, repr=False)
class TT(Method):
    """Tensor-train: Linear -> ``TTLinear`` (TT-matrix, Novikov et al. 2015), a conv (any dimensionality,
    plain or transposed, 1x1 and larger, groups=1) -> ``TTConv`` (``conv_order`` "efficient" = HODEC's
    order, or "conventional" = Garipov's).

    ``rank``: int (every inner TT-rank, capped at each bond's full rank), a tuple (one per bond), a
    fraction of parameters, ``Tolerance(eps)`` (TT-SVD with ``||W - W_hat|| <= eps ||W||``), or
    ``EVBMF``/``Energy`` applied to each unfolding TT-SVD meets."""

    conv_order: str = "efficient"
    name: ClassVar[str] = "tt"
    n_modes: ClassVar[Optional[int]] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.conv_order not in ("efficient", "conventional"):
            raise ValueError(f"TT conv_order must be 'efficient' or 'conventional', got {self.conv_order!r}")
