"""Each layer's input statistics on the calibration batches and the whitening they give
(Wang et al. 2024, SVD-LLM, section 3.1; ``docs/math.md``, "Data-aware factors").

What a layer's input-channel factor sees is summarised by the second moment of its input vectors
``C = E[x x^T]`` (float64), gathered by forward hooks in one streaming pass over the fit batches:
memory is one ``(C/g)^2`` matrix per group of each layer, whatever the number of batches.

* ``nn.Linear``: the rows of its input ``(..., C)``: exact, ``E||(W - W_hat) x||^2 = ||(W - W_hat) S||^2``.
* pointwise conv (1x1, 1x1x1, k1; ``nn.Conv1d/2d/3d``): the input pixels it reads (after its
  padding, at its stride): exact too.
* k conv of any dimensionality: every input pixel, per group. The exact weighting of a kernel of
  ``K = prod(k)`` offsets is the ``(C K)^2`` patch second moment; its diagonal blocks (one per
  kernel offset) are this matrix up to border effects, so the channel weighting drops only the
  correlations *between* offsets. It is what whitening one mode of a Tucker/CP kernel can use (a
  patch weighting does not factor over the modes).
* transposed conv (``nn.ConvTranspose1d/2d/3d``, any kernel): every input pixel, per group. Each
  input pixel ``x`` is scattered through the kernel, ``W_k^T x`` to offset ``k``; where the
  scattered windows do not overlap (stride >= the dilated kernel) the output error is exactly
  ``sum_k E||(W_k - W_hat_k)^T x||^2``, this matrix's weighting, and where they overlap it drops the
  correlations between offsets, as for a plain conv. The input factor (``first``, a plain
  pointwise conv on the input) is what it whitens; a transposed pointwise conv's cropping
  (padding) is ignored: cropped pixels are weighted too.

The sequential correction (``Calibration(sequential=True)``, the default) is in ``factorch.calibration.safety``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorch.calibration.batches import MAX_CHANNELS, Calibration
from factorch.decompositions.whitening import damped_cholesky, unwhiten, whitening_transform
from factorch.layers.base import FactorizedLayer
from factorch.layers.conv_spec import CONVS, ConvSpec
from factorch.measure.count import probe

# ---- input vectors and their statistics ----------------------------------------------------------

def _linear_rows(linear: nn.Linear, x: Tensor) -> Tensor:
    """(1, rows, C): every row of the (..., C) input."""
    return x.reshape(1, -1, x.shape[-1])


def _conv_rows(conv: nn.Module, x: Tensor) -> Tensor:
    """(g, rows, C/g): the input pixels of a conv of any dimensionality (see the module docstring),
    per group."""
    spec = ConvSpec.of(conv)
    if math.prod(spec.kernel_size) == 1 and not spec.transposed:  # exactly the pixels it reads: padded, strided
        pad = spec.explicit_padding()
        if any(pad):
            x = F.pad(x, pad, mode="constant" if spec.padding_mode == "zeros" else spec.padding_mode)
        x = x[(..., *(slice(None, None, s) for s in spec.stride))]
    b, c = x.shape[:2]
    g = conv.groups
    return x.reshape(b, g, c // g, -1).permute(1, 0, 3, 2).reshape(g, -1, c // g)


@dataclass(frozen=True)
class InputKind:
    """How a layer type's input vectors are read: ``rows(module, x)`` -> (groups, n, c) and
    ``size(module)`` -> (groups, c)."""

    rows: Callable[[Any, Tensor], Tensor]
    size: Callable[[Any], tuple[int, int]]


KINDS = {nn.Linear: InputKind(_linear_rows, lambda m: (1, m.in_features)),
         **{conv: InputKind(_conv_rows, lambda m: (m.groups, m.in_channels // m.groups)) for conv in CONVS}}


def input_kind(module: nn.Module) -> Optional[InputKind]:
    """The ``InputKind`` of ``module``'s type (the most specific registered base), None if none."""
    return next((KINDS[k] for k in type(module).__mro__ if k in KINDS), None)


@dataclass
class InputStats:
    """Streaming sums over a layer's input vectors: ``total`` (g, c, c) = sum of ``x x^T`` per group
    and ``rows`` (how many vectors); ``cross`` (g, c, c) = sum of ``x x~^T`` for the sequential form."""

    total: Tensor
    rows: int = 0
    cross: Optional[Tensor] = None

    @classmethod
    def empty(cls, module: nn.Module, device: torch.device) -> "InputStats":
        g, c = input_kind(module).size(module)
        return cls(torch.zeros(g, c, c, dtype=torch.float64, device=device))

    def add(self, rows: Tensor, dense_rows: Optional[Tensor] = None) -> None:
        """Add (g, n, c) input vectors; ``dense_rows``: the dense model's vectors at the same positions."""
        self.total += rows.transpose(1, 2) @ rows
        if dense_rows is not None:
            cross = dense_rows.transpose(1, 2) @ rows
            self.cross = cross if self.cross is None else self.cross + cross
        self.rows += rows.shape[1]

    @property
    def moment(self) -> Tensor:
        """``E[x x^T]`` per group, (g, c, c)."""
        return self.total / max(self.rows, 1)


def model_place(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    ref = next(model.parameters(), None)
    return (ref.device, ref.dtype) if ref is not None else (torch.device("cpu"), torch.get_default_dtype())


def check_shapes(batches: Sequence[Tensor], example_input: Any) -> None:
    """Every batch has the example input's shape (or the first batch's), batch size aside."""
    ref = example_input[0] if isinstance(example_input, tuple) else example_input
    what = "example_input"
    if not isinstance(ref, Tensor):
        ref, what = batches[0], "the first calibration batch"
    want = tuple(ref.shape[1:])
    for i, x in enumerate(batches):
        if tuple(x.shape[1:]) != want:
            raise ValueError(f"calibration batch {i} has shape {tuple(x.shape)}; expected (B, "
                             f"{', '.join(map(str, want))}) like {what}")


def to_model(model: nn.Module, x: Tensor) -> Tensor:
    """A calibration batch on the model's device, float inputs in the model's dtype."""
    device, dtype = model_place(model)
    return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)


def run(model: nn.Module, x: Tensor, modules: dict[str, nn.Module], record) -> Any:
    """``probe`` on one calibration batch moved to the model (``to_model``); examples the model
    cannot take are one ``ValueError`` naming their shape (the user's: batches may be split)."""
    x = to_model(model, x)
    try:
        return probe(model, x, modules, record)
    except RuntimeError as e:
        raise ValueError(f"calibration examples of shape {tuple(x.shape[1:])} (batch dimension aside) do not fit "
                         f"the model: {str(e).strip().splitlines()[0][:200]}") from None


def collect(model: nn.Module, batches: Sequence[Tensor], layers: dict[str, nn.Module]
            ) -> tuple[dict[str, InputStats], list[str]]:
    """One eval-mode pass over ``batches`` with hooks on ``layers``: each layer's ``InputStats``
    (float64, on the model's device) and the layer names in the order they first ran. Inputs with
    NaN or Inf values are one ``ValueError`` naming the layer."""
    device, _ = model_place(model)
    stats = {name: InputStats.empty(m, device) for name, m in layers.items()}
    order: list[str] = []

    def record(name: str, module: nn.Module, args: tuple, out: Any) -> None:
        if name not in order:
            order.append(name)
        stats[name].add(input_kind(module).rows(module, args[0]).to(torch.float64))

    for i, x in enumerate(batches):
        run(model, x, layers, record)
    for name, s in stats.items():
        if not bool(torch.isfinite(s.total).all()):
            raise ValueError(f"calibration: the inputs of layer {name!r} have NaN or Inf values (or overflow "
                             "float64) on the calibration batches")
    return stats, order


def layer_whitenings(model: nn.Module, calibration: Calibration, layers: dict[str, nn.Module], example_input: Any
                     ) -> tuple[dict[str, "Whitening"], dict[str, str], list[str]]:
    """Check the batches, gather the statistics of ``layers`` on the fit batches (one pass) and
    whiten each: ``(whitening per layer, note per layer, layer names in the order they ran)``.
    A layer with no usable statistics (too many inputs, inputs all zero, not run) gets no
    whitening, so weight-only factors, and a note saying why."""
    fit, _ = calibration.split()
    check_shapes(calibration.batches, example_input)
    notes: dict[str, str] = {}
    usable = {}
    for name, module in layers.items():
        kind = input_kind(module)
        if kind is None:  # an attention: four projections, four inputs (factorch.layers.attention)
            notes[name] = f"calibration not used: no input statistics for {type(module).__name__}; weight-only factors"
            continue
        c = kind.size(module)[1]
        if c > MAX_CHANNELS:
            notes[name] = (f"calibration not used: {c} inputs need a {c * c * 8 / 2 ** 30:.1f} GiB second moment "
                           f"(over {MAX_CHANNELS}); weight-only factors")
            continue
        usable[name] = module
    stats, order = collect(model, fit, usable)
    whitenings = {}
    for name, s in stats.items():
        if s.rows == 0 or not float(s.moment.diagonal(dim1=1, dim2=2).sum()) > 0.0:
            why = "did not run on" if s.rows == 0 else "has all-zero inputs on"
            notes[name] = f"calibration not used: the layer {why} the calibration batches; weight-only factors"
            continue
        whitenings[name] = Whitening.of(s, calibration.damping)
        if whitenings[name].note:
            notes[name] = "calibration: " + whitenings[name].note
    return whitenings, notes, order


# ---- whitening one layer ------------------------------------------------------------------------

@dataclass(eq=False)
class Whitening:
    """How one layer's factors are fitted to its inputs (``factorch.decompositions.whitening``): per
    group, ``transform`` ``A`` (c, c) multiplies the operand's input mode, and the lower-triangular
    ``factor`` ``S`` un-whitens the input-side factor (``rows S^-1``). ``damping``: the largest
    ``lambda`` a group needed; ``note``: what the report should say (damping grown, dead channels)."""

    transform: Tensor
    factor: Tensor
    damping: float
    note: str = ""
    _copies: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, stats: InputStats, damping: float) -> "Whitening":
        """From a layer's statistics: the plain form, or (``stats.cross`` set) the sequential one."""
        moment = stats.moment.cpu()
        cross = stats.cross.cpu() / max(stats.rows, 1) if stats.cross is not None else None
        transforms, factors, lams = [], [], []
        notes = []
        for k, c in enumerate(moment):
            if not float(c.diagonal().sum()) > 0.0:  # a group whose inputs are all zero: weight-only
                eye = torch.eye(c.shape[0], dtype=c.dtype)
                transforms.append(eye), factors.append(eye), lams.append(0.0)
                notes.append(f"group {k} has all-zero inputs")
                continue
            s, lam = damped_cholesky(c, damping)
            delta = lam * float(c.diagonal().mean())
            transforms.append(whitening_transform(s, None if cross is None else cross[k], delta))
            factors.append(s)
            lams.append(lam)
        dead = int((moment.diagonal(dim1=1, dim2=2) == 0).sum())
        if dead:
            notes.append(f"{dead} dead input channel(s)")
        if stats.rows < moment.shape[-1]:
            notes.append(f"{stats.rows} calibration vectors < {moment.shape[-1]} inputs")
        if max(lams) > damping:
            notes.append(f"damping raised to {max(lams):.1e} for Cholesky")
        return cls(torch.stack(transforms), torch.stack(factors), max(lams), ", ".join(notes))

    def whitened(self, module: nn.Module) -> nn.Module:
        """A float64 CPU copy of ``module`` whose weight's input mode is multiplied by ``A`` per
        group: ``W'[n, d, ...] = sum_c W[n, c, ...] A[c, d]`` (cached; a transposed conv's weight,
        input channels first, through its kernel view ``ConvSpec.as_kernel``). Its rank space has
        the whitened spectra; ``from_dense_at`` of it fits the factors of ``W'``."""
        key = id(module)
        if key not in self._copies:
            spec = ConvSpec.of(module) if isinstance(module, CONVS) else None
            w = module.weight.detach().to(device="cpu", dtype=torch.float64)
            w = spec.as_kernel(w) if spec is not None else w
            groups = w.chunk(len(self.transform), dim=0)  # (N/g, c, ...) each
            whitened = torch.cat([torch.einsum("nc...,cd->nd...", wg, a) for wg, a in zip(groups, self.transform)])
            whitened = spec.as_weight(whitened) if spec is not None else whitened
            clone = copy.deepcopy(module).to(device="cpu", dtype=torch.float64)
            with torch.no_grad():
                clone.weight.copy_(whitened)
            self._copies[key] = clone
        return self._copies[key]

    def build(self, layer_cls: type[FactorizedLayer], module: nn.Module, ranks: tuple[int, ...],
              options: dict[str, Any], kwargs: dict[str, Any]) -> FactorizedLayer:
        """``layer_cls.from_dense_at`` of the whitened copy at exactly ``ranks``, its input factor (the child
        ``layer_cls.input_factor``, weight (g R, c, ...)) multiplied by ``S^-1`` per group; in
        ``module``'s dtype and device."""
        layer = layer_cls.from_dense_at(self.whitened(module), ranks, **options, **kwargs)
        factor = getattr(layer, layer_cls.input_factor).weight
        g, c = self.factor.shape[:2]
        rows = factor.detach().reshape(g, -1, c)  # (g, R, c)
        plain = torch.stack([unwhiten(r, s) for r, s in zip(rows, self.factor)])
        with torch.no_grad():
            factor.copy_(plain.reshape(factor.shape))
        ref = module.weight
        return layer.to(device=ref.device, dtype=ref.dtype)
