"""What every factorized layer is: a chain of real modules that can rebuild its dense layer."""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Optional

import torch
from torch import Tensor, nn

from factorch.layers.conv_spec import ConvSpec, dense_conv
from factorch.rank import RankSpace, RankSpec, resolve
from factorch.rank.space import Ranks


class FactorizedLayer(nn.Module):
    """Base of every factorized layer.

    A subclass holds its factors as ordinary child modules (so hooks, ``state_dict`` and
    ``count`` see real convs/linears), and provides:

    * its constructor: the dense layer's arguments plus resolved int ranks (out-of-range ranks are
      refused), initialised for training from scratch: the kernel the factors imply has the
      variance of PyTorch's default init of the dense layer;
    * ``space(config, **options)``: its ``RankSpace`` from the geometry alone (modes, full ranks,
      params and MACs as functions of the ranks); ``rank_space(dense, **options)`` adds the
      spectra of ``operands(dense)``;
    * ``operands(dense, **options)``: the tensors it factorizes, one per group (float64, or the
      weight in its own dtype where the decomposition reads it in float64 block by block: SVD,
      TT-SVD): the one place both the rank rules' spectra and ``from_dense``'s factors come from
      (a data-aware step substitutes it);
    * ``from_dense_at(dense, ranks)``: decompose a trained layer at exactly these resolved int ranks
      (math in float64, result in the dense layer's dtype and device); ``empty_at(dense, ranks)``:
      the same structure, freshly initialised (used on the ``meta`` device to cost a candidate, and
      to train from scratch). Ranks outside ``[1, full]`` are refused (``RankSpace.check``), never
      resolved again: the decision path (``factorch.registry``) resolved them once already;
    * ``from_dense(dense, rank)`` / ``empty_like(dense, rank)``: the same for any rank spec, resolved
      exactly once by ``factorch.rank.resolve`` (``resolve_rank``), then the int path;
    * ``dense_weight()``: the kernel the factors represent, in float64 on the layer's device, and
      ``dense_kernel(dense)`` the dense layer's in the same layout (its ``weight``, by default);
    * ``to_dense()``: the equivalent dense layer, built from the current (possibly trained) factors;
    * ``spec()``: constructor arguments, so ``factorch.io`` can rebuild the structure (with
      ``options(config)`` for structure choices that the dense layer does not determine);
    * ``input_factor``: the name of the child module that alone applies the input channels (a 1x1
      conv or linear, weight ``(g R, C/g, ...)``): data-aware decomposition (``factorch.calibration``)
      factorizes the operand with its input mode whitened and un-whitens this factor. None where
      the input mode is no single factor (tensor trains split it over cores): weight-only factors.

    Subclasses are found by class name when loading a checkpoint (``registry``).
    """

    registry: ClassVar[dict[str, type["FactorizedLayer"]]] = {}
    input_factor: ClassVar[Optional[str]] = None
    structure: ClassVar[tuple[str, ...]] = ()  # keyword options that shape the rank space (TT: shapes, order)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "from_dense_at" in cls.__dict__:  # concrete layers only, not shared bases
            FactorizedLayer.registry[cls.__name__] = cls

    @property
    def ranks(self) -> tuple[int, ...]:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """The from-scratch init: ``init_factors`` (the implied kernel has the variance of
        PyTorch's default init of the dense layer), then ``balance_`` (the factors share the
        kernel's scale so that SGD moves it no faster than it moves a dense layer's). Skipped
        inside ``skip_init()``: the factors are about to be overwritten."""
        if _skipping:
            return
        self.init_factors()
        self.balance_()

    def init_factors(self) -> None:
        """Fill the factors: the kernel they imply has the variance of PyTorch's default init of
        the dense layer, ``1 / (3 fan_in)`` (``default_variance``), the bias its default too."""
        raise NotImplementedError

    def probe_input(self, generator: torch.Generator) -> Tensor:
        """A small random input of this layer's geometry (``balance_`` runs the layer on it): four
        rows of ``in_features`` for a factorized ``nn.Linear``."""
        like = next(self.parameters())
        return torch.randn((4, self.in_features), generator=generator, device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def balance_(self) -> None:
        """Rescale the factors, their product (the kernel) unchanged, so that one gradient step
        changes the kernel by the same amount through every factor.

        The kernel ``W`` is linear in each factor ``F_i``; a step ``-lr dL/dF_i`` changes it by
        ``T_i = ||J_i J_i^T dL/dW||`` (times lr), and scaling the factors by ``c_i`` with
        ``prod c_i = 1`` turns ``T_i`` into ``T_i / c_i^2``. ``c_i^2 = T_i / (prod T)^(1/k)``
        equalises them, which minimises their sum (the AM-GM inequality): a chain initialised
        with every factor at unit gain and a small core (Tucker) moves its kernel several times
        faster than SGD moves the dense kernel (3.8x for a Tucker-2 5x5 conv, 13x for Tucker-3,
        measured), which made from-scratch training diverge at the dense model's learning rate.
        ``T_i`` is measured on a seeded random input and upstream gradient (the global RNG is not
        used); nothing happens on the meta device or for a single factor."""
        factors = [p for name, p in self.named_parameters() if not name.endswith("bias")]
        if len(factors) < 2 or any(p.is_meta for p in factors):
            return
        generator = torch.Generator(device=factors[0].device).manual_seed(0)
        x = self.probe_input(generator)
        with torch.enable_grad():
            y = self(x)
            g = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
            grads = torch.autograd.grad((y * g).sum(), factors, allow_unused=True)
        w0 = self.dense_weight()
        moves = []
        for p, grad in zip(factors, grads):
            if grad is None:
                return
            saved = p.detach().clone()
            p.sub_(grad)  # the kernel is linear in p: the change is exact, whatever the step
            moves.append(float((self.dense_weight() - w0).norm()))
            p.copy_(saved)
        if not all(math.isfinite(t) and t > 0 for t in moves):
            return
        mean = math.exp(sum(math.log(t) for t in moves) / len(moves))  # geometric
        for p, t in zip(factors, moves):
            p.mul_(math.sqrt(t / mean))

    @classmethod
    def space(cls, config: Any, **options: Any) -> RankSpace:
        """The rank space of a layer with this geometry (no spectra)."""
        raise NotImplementedError

    @classmethod
    def dense_config(cls, dense: nn.Module) -> Any:
        """The geometry ``space`` takes, read from a dense layer (a ``ConvSpec`` for convs)."""
        return ConvSpec.of(dense)

    @classmethod
    def dense_args(cls, dense: nn.Module, **options: Any) -> dict[str, Any]:
        """Constructor keyword arguments (all but ``rank``) for the dense layer's structure."""
        return {**cls.dense_config(dense).as_dict(), **options}

    @classmethod
    def operands(cls, dense: nn.Module, **options: Any) -> list[Tensor]:
        raise NotImplementedError

    @classmethod
    def unfold(cls, operand: Tensor, **options: Any) -> list[list[Tensor]]:
        """Per mode, the (tied) matrices of one operand whose singular values rate that mode."""
        raise NotImplementedError

    @classmethod
    def rank_space(cls, dense: nn.Module, **options: Any) -> RankSpace:
        """``space`` of the dense layer's geometry, with the spectra of its ``operands``."""
        space = cls.space(cls.dense_config(dense), **options)
        space.unfoldings = lambda: [cls.unfold(op, **options) for op in cls.operands(dense, **options)]
        return space

    @classmethod
    def resolve_rank(cls, dense: nn.Module, rank: RankSpec, **options: Any) -> Ranks:
        """The int ranks ``rank`` (any spec) gives for ``dense``: the one resolver,
        ``factorch.rank.resolve``, against ``rank_space(dense, **options)``."""
        return resolve(rank, cls.rank_space(dense, **options)).ranks

    @classmethod
    def empty_at(cls, dense: nn.Module, ranks: Ranks, **options: Any) -> "FactorizedLayer":
        """A freshly initialised layer with ``dense``'s structure at exactly ``ranks`` (resolved ints,
        each in ``[1, full]``: the constructor's ``RankSpace.check`` refuses others)."""
        return cls(**cls.dense_args(dense, **options), rank=ranks)

    @classmethod
    def from_dense_at(cls, dense: nn.Module, ranks: Ranks, **kwargs: Any) -> "FactorizedLayer":
        """Decompose ``dense`` at exactly ``ranks`` (resolved ints, checked like ``empty_at``);
        ``kwargs``: the ``structure`` options and the fit's own (e.g. CP's ``restarts``)."""
        raise NotImplementedError

    @classmethod
    def empty_like(cls, dense: nn.Module, rank: RankSpec, **options: Any) -> "FactorizedLayer":
        """``empty_at`` the ranks ``rank`` (any spec) resolves to, resolved once (``resolve_rank``)."""
        return cls.empty_at(dense, cls.resolve_rank(dense, rank, **options), **options)

    @classmethod
    def from_dense(cls, dense: nn.Module, rank: RankSpec, **kwargs: Any) -> "FactorizedLayer":
        """``from_dense_at`` the ranks ``rank`` (any spec: an int is a ceiling per mode, a tuple exact,
        a fraction or a rule read from ``dense``) resolves to, resolved once (``resolve_rank``, with
        the ``structure`` options among ``kwargs``)."""
        options = {k: v for k, v in kwargs.items() if k in cls.structure}
        ranks = cls.resolve_rank(dense, rank, **options)
        with skip_init():
            return cls.from_dense_at(dense, ranks, **kwargs)

    def dense_weight(self) -> Tensor:
        raise NotImplementedError

    @classmethod
    def dense_kernel(cls, dense: nn.Module) -> Tensor:
        """The dense layer's kernel in ``dense_weight``'s layout on its device (what the
        approximation error compares, block by block in float64): its ``weight`` itself for most
        layers, not copied."""
        return dense.weight.detach()

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


def alias(cls: type[FactorizedLayer], old_name: str) -> type[FactorizedLayer]:
    """``cls`` also under ``old_name`` in the checkpoint registry: the 2-D-only class it generalised
    (checkpoints name their layers' classes). Returns ``cls``, so ``Old = alias(New, "Old")``
    keeps the old name importable too."""
    FactorizedLayer.registry[old_name] = cls
    return cls


_skipping: list[bool] = []  # non-empty inside ``skip_init()``


@contextmanager
def skip_init() -> Iterator[None]:
    """Factorized layers constructed inside skip their from-scratch init (``reset_parameters``; the
    children keep PyTorch's default init): their factors are overwritten right after, by a
    decomposition (``FactorizedLayer.from_dense``, ``registry.Proposal.build``) or a checkpoint's
    weights (``factorch.io``). ``balance_`` rebuilds the dense kernel once per factor: for
    ``nn.Linear(16384, 16384)`` at rank 4096 three 16384 x 4096 x 16384 products (minutes) and
    6 GB before the SVD had started."""
    _skipping.append(True)
    try:
        yield
    finally:
        _skipping.pop()


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


def default_variance(fan_in: int) -> float:
    """The weight variance of PyTorch's default ``nn.Conv2d``/``nn.Linear`` init:
    ``kaiming_uniform_(a=sqrt(5))`` is uniform on ``+-1/sqrt(fan_in)``, variance ``1 / (3 fan_in)``."""
    return 1.0 / (3.0 * fan_in)


def init_uniform_(t: Tensor, variance: float) -> None:
    """Fill ``t`` uniformly on ``+-sqrt(3 variance)`` (zero mean, that variance): PyTorch's default
    layers are initialised uniformly too, and a product of uniform factors has far lighter tails
    than one of Gaussians."""
    bound = math.sqrt(3.0 * variance)
    with torch.no_grad():
        t.uniform_(-bound, bound)


def init_bias(bias: Optional[Tensor], fan_in: int) -> None:
    """PyTorch's default bias init: uniform on ``+-1/sqrt(fan_in)`` of the dense layer."""
    if bias is not None:
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            bias.uniform_(-bound, bound)


class FactorizedConv(FactorizedLayer):
    """A factorized convolution of any dimensionality, plain or transposed: keeps the dense geometry
    in ``self.config`` (a ``ConvSpec``) and its bias on the last factor conv (``dense_bias`` says
    where, if elsewhere). ``dense_weight`` is in the dense layer's own layout (``ConvSpec.weight_shape``)."""

    def probe_input(self, generator: torch.Generator) -> Tensor:
        like = next(self.parameters())
        shape = self.config.smallest_input(like).shape
        return torch.randn((4, *shape[1:]), generator=generator, device=like.device, dtype=like.dtype)

    def dense_bias(self) -> Tensor | None:
        return self.last.bias

    def to_dense(self) -> nn.Module:
        like = next(self.parameters())
        return dense_conv(self.config, self.dense_weight(), self.dense_bias(), like).train(self.training)

    def spec(self) -> dict[str, Any]:
        return {"config": self.config.as_dict(), "rank": list(self.ranks)}


def read_kernel(conv: nn.Module) -> Tensor:
    """A factor conv's weight as the kernel ``(N, C/g, *k)`` in float64 (``ConvSpec.as_kernel``: a
    transposed conv's weight has its input channels first)."""
    return ConvSpec.of(conv).as_kernel(as_float64(conv.weight))


def write_kernel(conv: nn.Module, kernel: Tensor) -> None:
    """Copy a kernel ``(N, C/g, *k)`` (any dtype) into a factor conv's weight, in its layout."""
    with torch.no_grad():
        conv.weight.copy_(ConvSpec.of(conv).as_weight(kernel).reshape(conv.weight.shape))
