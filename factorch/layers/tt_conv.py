"""Tensor-train convolution in two orders: ``efficient`` (after HODEC, Yin et al., CVPR 2022) and
``conventional`` (Garipov et al. 2016, "Ultimate tensorization"); ``docs/math.md``, "TT convolution".

The kernel ``W (N, C, *k)`` of a 1-, 2- or 3-D conv, plain or transposed (``ConvSpec.as_kernel``),
with ``C = c_1...c_q``, ``N = u_1...u_p`` (row-major channel factors) and ``s = prod(k)`` (the
spatial axes are one mode: the spatial core is one k conv of the layer's dimensionality) is a
tensor train over a chain of modes:

* efficient: ``(u_p, ..., u_1, s, c_1, ..., c_q)``: output cores, ONE spatial core, input cores. It
  runs as input cores at input resolution (1x1 convs, ``C -> b_0`` channels), one k conv
  ``b_0 -> a_0`` with the original stride/padding/dilation/padding_mode/output_padding (a
  transposed conv for a transposed layer), then output cores at
  output resolution (1x1 convs ``a_0 -> N``). No intermediate holds more than
  ``max(C, N, rank x mode)`` channels per pixel, so MACs fall with the parameters:
  ``sum_j HW (c_1..c_j) b_j b_{j-1} + H'W' s b_0 a_0 + sum_k H'W' (u_1..u_k) a_{k-1} a_k``.
* conventional: ``(s, c_1 n_1, ..., c_d n_d)`` (a TT-matrix over the channels behind a spatial
  core; needs ``p = q = d``). It runs as every input channel convolved separately with the
  ``r_0`` spatial filters (``C r_0`` maps at output resolution), then one 1x1 conv per channel core:
  ``H'W' s C r_0 + sum_k H'W' (c_{k+1}..c_d)(n_1..n_{k-1}) c_k r_{k-1} n_k r_k`` -- often more than
  the dense conv (``docs/math.md``, "TT convolution").

A mode's distance from the spatial core tracks its significance (the core next to it carries
``c_1``/``u_1``), so both chains run as real conv modules with the not-yet-contracted
factors folded into the batch: ``factorch.measure.count`` sees every MAC. Every factor conv is
bias-free (a 1x1 linear map commutes with any padding mode and with a transposed conv's scatter);
the bias is added at the end. Grouped convs are refused (``groups`` must be 1): the chain splits the
channel modes over several cores, which a block-diagonal (per group) kernel does not factor into.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from factorch.decompositions.tt import balanced_factors, max_tt_ranks, tt_params, tt_svd, tt_to_tensor
from factorch.layers.base import FactorizedConv, alias, check_finite, default_variance, init_bias, \
    init_uniform_, read_kernel, traced_for_script, write_kernel
from factorch.layers.conv_spec import ConvSpec
from factorch.layers.tt_linear import bond_unfoldings, sequential_ranks
from factorch.rank import Mode, RankSpace
from factorch.rank.space import Ranks

ORDERS = ("efficient", "conventional")
Shape = Optional[Sequence[int]]


def tt_conv_shapes(in_channels: int, out_channels: int, in_shape: Shape = None, out_shape: Shape = None
                   ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Channel factors ``(c_1..c_q)``, ``(u_1..u_p)``: given ones must multiply to the channel counts
    exactly (convs are not padded); by default two balanced factors each, as HODEC's "TT-general"
    ``[n_1, n_2, kh kw, c_1, c_2]`` (a 3-channel input becomes 3 x 1)."""
    shapes = []
    for name, shape, size in (("in_shape", in_shape, in_channels), ("out_shape", out_shape, out_channels)):
        if shape is None:
            shapes.append(balanced_factors(size, 2))
            continue
        if not isinstance(shape, (tuple, list)) or not shape or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
            raise ValueError(f"{name} must be a non-empty sequence of ints >= 1, got {shape!r}")
        if math.prod(shape) != size:
            raise ValueError(f"{name} {tuple(shape)} must multiply to {size}, got {math.prod(shape)}")
        shapes.append(tuple(int(v) for v in shape))
    return shapes[0], shapes[1]


def _shapes(spec: ConvSpec, in_shape: Shape, out_shape: Shape, order: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Checked channel factors for a TT-conv of ``spec`` (groups 1, a known order)."""
    if spec.groups != 1:
        raise ValueError(f"TTConv handles groups=1 only, got groups={spec.groups}")
    if order not in ORDERS:
        raise ValueError(f"TTConv order must be one of {', '.join(ORDERS)}, got {order!r}")
    c_s, n_s = tt_conv_shapes(spec.in_channels, spec.out_channels, in_shape, out_shape)
    if order == "conventional" and len(c_s) != len(n_s):
        raise ValueError(f"the conventional order pairs input and output factors: in_shape {c_s} "
                         f"and out_shape {n_s} need the same length")
    return c_s, n_s


def chain_modes(in_shape: Sequence[int], out_shape: Sequence[int], kernel_size: Sequence[int],
                order: str) -> tuple[int, ...]:
    """The modes of the kernel's tensor train for ``order`` (see the module docstring)."""
    s = math.prod(kernel_size)
    if order == "efficient":
        return (*reversed(out_shape), s, *in_shape)
    return (s, *(c * n for c, n in zip(in_shape, out_shape)))


def kernel_to_chain(w: Tensor, in_shape: Sequence[int], out_shape: Sequence[int], order: str) -> Tensor:
    """(N, C, *k) -> the chain tensor whose TT the layer holds."""
    p, q = len(out_shape), len(in_shape)
    t = w.reshape(*out_shape, *in_shape, -1)  # (u_1..u_p, c_1..c_q, s)
    if order == "efficient":
        perm = [*range(p - 1, -1, -1), p + q, *range(p, p + q)]  # (u_p..u_1, s, c_1..c_q)
        return t.permute(perm).reshape(chain_modes(in_shape, out_shape, w.shape[2:], order))
    perm = [p + q] + [i for k in range(p) for i in (p + k, k)]  # (s, c_1, n_1, c_2, n_2, ...)
    return t.permute(perm).reshape(chain_modes(in_shape, out_shape, w.shape[2:], order))


def chain_to_kernel(t: Tensor, in_shape: Sequence[int], out_shape: Sequence[int],
                    kernel_size: Sequence[int], order: str) -> Tensor:
    """Inverse of ``kernel_to_chain``: the chain tensor -> (N, C, *k)."""
    p, q = len(out_shape), len(in_shape)
    n, c = math.prod(out_shape), math.prod(in_shape)
    if order == "efficient":
        t = t.reshape(*reversed(out_shape), -1, *in_shape)  # (u_p..u_1, s, c_1..c_q)
        perm = [*range(p - 1, -1, -1), *range(p + 1, p + 1 + q), p]  # (u_1..u_p, c_1..c_q, s)
    else:
        t = t.reshape(-1, *(v for pair in zip(in_shape, out_shape) for v in pair))  # (s, c_1, n_1, ...)
        perm = [2 + 2 * k for k in range(p)] + [1 + 2 * k for k in range(q)] + [0]
    return t.permute(perm).reshape(n, c, *kernel_size)


class TTConv(FactorizedConv):
    """A conv (1-, 2- or 3-D, plain or transposed; geometry arguments as ``TuckerConv``) whose kernel is
    a tensor train; ``order`` "efficient" (default) or "conventional".

    Modules: efficient: ``inputs`` (1x1 convs, run first), ``spatial``, ``outputs`` (1x1 convs);
    conventional: ``spatial`` (1 -> r_0 channels, per input channel), ``channels`` (1x1 convs).
    ``rank``: an int (every inner TT-rank) or one int per bond (``len(in_shape) + len(out_shape)``
    bonds efficient, ``d`` conventional), each at most the bond's full rank (``from_dense`` and
    ``empty_like`` resolve fractions and rules, and cap an int). A new layer's kernel has the
    variance of PyTorch's default conv init (``reset_parameters``).
    """

    structure = ("in_shape", "out_shape", "order")

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int | tuple[int, ...], stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 in_shape: Shape = None, out_shape: Shape = None, order: str = "efficient",
                 transposed: bool = False, output_padding=0) -> None:
        super().__init__()
        self.config = spec = ConvSpec.create(in_channels, out_channels, kernel_size, stride, padding,
                                             dilation, groups, bias, padding_mode, transposed, output_padding)
        self.in_shape, self.out_shape = _shapes(spec, in_shape, out_shape, order)
        self.order = order
        self.tt_ranks = self.space(spec, in_shape, out_shape, order).check(rank)
        r = (1, *self.tt_ranks, 1)
        if order == "efficient":
            p = len(self.out_shape)
            # input core j (chain index p + j, mode c_j) as conv (c_j b_j -> b_{j-1}); run c_q first
            self.inputs = nn.ModuleList(spec.pointwise(c * r[p + j + 1], r[p + j])
                                        for j, c in reversed(list(enumerate(self.in_shape, start=1))))
            self.spatial = spec.make(in_channels=r[p + 1], out_channels=r[p], bias=False)
            # output core k (chain index p - k, mode u_k) as conv (a_{k-1} -> u_k a_k); run u_1 first
            self.outputs = nn.ModuleList(spec.pointwise(r[p - k + 1], u * r[p - k])
                                         for k, u in enumerate(self.out_shape, start=1))
        else:
            self.spatial = spec.make(in_channels=1, out_channels=r[1], bias=False)
            self.channels = nn.ModuleList(spec.pointwise(c * r[k], n * r[k + 1])
                                          for k, (c, n) in enumerate(zip(self.in_shape, self.out_shape), start=1))
        self.bias = nn.Parameter(torch.zeros(spec.out_channels)) if spec.bias else None
        self.reset_parameters()

    def init_factors(self) -> None:
        """From scratch: every core entry zero-mean uniform with variance ``s^2``,
        ``s^(2D) prod_k r_k = 1 / (3 C kh kw)`` (D cores): a
        kernel entry is a sum of ``prod r_k`` products of D independent entries, so it has the
        variance of PyTorch's default conv init (``ConvSpec.fan_in``), and entries are uncorrelated."""
        n_cores = len(self.tt_ranks) + 1
        target = default_variance(self.config.fan_in)
        variance = (target / math.prod(self.tt_ranks)) ** (1.0 / n_cores)
        for name, p in self.named_parameters():
            if name != "bias":
                init_uniform_(p, variance)
        init_bias(self.bias, self.config.fan_in)

    @property
    def ranks(self) -> tuple[int, ...]:
        return self.tt_ranks

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        y = self._efficient(x) if self.order == "efficient" else self._conventional(x)
        return y if self.bias is None else y + self.bias.reshape(-1, *(1,) * (y.dim() - 2))

    def _efficient(self, x: Tensor) -> Tensor:
        b, size = x.shape[0], x.shape[2:]  # S: the spatial sizes (1 to 3 axes)
        t = x  # memory (B, c_1..c_j, b_j, *S): fold c_1..c_{j-1} into the batch, contract (c_j, b_j)
        for conv in self.inputs:
            t = conv(t.reshape(-1, conv.in_channels, *size))  # (B c_1..c_{j-1}, b_{j-1}, *S)
        t = self.spatial(t)  # (B, a_0, *S'): the only k conv, with the layer's geometry
        size = t.shape[2:]
        for conv in self.outputs:  # memory (B, u_1..u_{k-1}, a_{k-1}, *S') -> (.., u_k a_k, ..)
            t = conv(t.reshape(-1, conv.in_channels, *size))
        return t.reshape(b, -1, *size)  # (B, N, *S')

    def _conventional(self, x: Tensor) -> Tensor:
        b, c, size = x.shape[0], x.shape[1], x.shape[2:]
        d, n_sp = len(self.in_shape), x.dim() - 2
        t = self.spatial(x.reshape(b * c, 1, *size))  # (B C, r_0, *S'): each channel separately
        size = t.shape[2:]
        t = t.reshape(b, *self.in_shape, -1, *size)  # (B, c_1..c_d, r_0, *S')
        tail = list(range(d + 1, d + 2 + n_sp))  # r, *S'
        for i, conv in enumerate(self.channels):
            # state (B, n_1..n_i, c_{i+1}..c_d, r_i, *S'): bring c_{i+1} next to r_i, fold the rest
            head, cs = list(range(i + 1)), list(range(i + 1, d + 1))
            t = t.permute(*head, *cs[1:], cs[0], *tail)
            t = conv(t.reshape(-1, conv.in_channels, *size))  # (.., n_{i+1} r_{i+1}, *S')
            t = t.reshape(b, *self.out_shape[:i], *self.in_shape[i + 1:], self.out_shape[i], -1, *size)
            t = t.permute(*head, d, *range(i + 1, d), *tail)  # n_{i+1} after n_i
        return t.reshape(b, -1, *size)  # (B, n_1..n_d, *S')

    # ---- cores <-> conv weights --------------------------------------------------------------
    def chain_cores(self) -> list[Tensor]:
        """The TT cores ``(r_{k-1}, mode_k, r_k)`` along the chain, float64, from the conv weights."""
        f = read_kernel  # (out, in, *k) whatever the conv's layout
        s = math.prod(self.config.kernel_size)
        if self.order == "efficient":
            outs = [f(conv).reshape(u, -1, conv.in_channels).permute(1, 0, 2)  # (a_k, u_k, a_{k-1})
                    for conv, u in zip(self.outputs, self.out_shape)]
            a, b0 = self.spatial.out_channels, self.spatial.in_channels
            spatial = f(self.spatial).reshape(a, b0, s).permute(0, 2, 1)  # (a_0, s, b_0)
            ins = [f(conv).reshape(conv.out_channels, c, -1)  # (b_{j-1}, c_j, b_j)
                   for conv, c in zip(self.inputs, reversed(self.in_shape))]
            return [*reversed(outs), spatial, *reversed(ins)]
        spatial = f(self.spatial).reshape(-1, s).T[None]  # (1, s, r_0)
        chans = [f(conv).reshape(n, -1, c, conv.in_channels // c).permute(3, 2, 0, 1).reshape(
                 conv.in_channels // c, c * n, -1) for conv, c, n in zip(self.channels, self.in_shape, self.out_shape)]
        return [spatial, *chans]

    def _load_cores(self, cores: list[Tensor]) -> None:
        """Copy chain cores (any dtype) into the conv weights: the inverse of ``chain_cores()``."""
        k = self.config.kernel_size
        with torch.no_grad():
            if self.order == "efficient":
                p = len(self.out_shape)
                for i, conv in enumerate(self.outputs, start=1):  # core (a_k, u_k, a_{k-1}) -> (u_k a_k, a_{k-1})
                    conv.weight.copy_(cores[p - i].permute(1, 0, 2).reshape(conv.weight.shape))
                a, _, b0 = cores[p].shape
                write_kernel(self.spatial, cores[p].permute(0, 2, 1).reshape(a, b0, *k))
                for j, conv in zip(range(len(self.in_shape), 0, -1), self.inputs):  # (b_{j-1}, c_j b_j)
                    conv.weight.copy_(cores[p + j].reshape(conv.weight.shape))
            else:
                write_kernel(self.spatial, cores[0][0].T.reshape(-1, 1, *k))
                for conv, core, c, n in zip(self.channels, cores[1:], self.in_shape, self.out_shape):
                    r0, _, r1 = core.shape  # (r_{k-1}, c n, r_k) -> (n r_k, c r_{k-1})
                    conv.weight.copy_(core.reshape(r0, c, n, r1).permute(2, 3, 1, 0).reshape(conv.weight.shape))

    # ---- rank space and decomposition ---------------------------------------------------------
    @classmethod
    def space(cls, spec: ConvSpec, in_shape: Shape = None, out_shape: Shape = None,
              order: str = "efficient") -> RankSpace:
        """One mode per bond of the chain tensor (``chain_modes``, full ranks ``max_tt_ranks``);
        params ``sum_k r_{k-1} n_k r_k``; MACs per example, with ``r`` the ranks along the chain
        padded by 1s and ``H', W'`` the output size (the not-yet-contracted modes are batch):

        * efficient, ``p = len(out_shape)``: input core j (j = q..1) runs at H W on
          ``c_1..c_{j-1}`` copies: ``(c_1..c_{j-1}) H W c_j r_{p+j+1} r_{p+j}``; the spatial core
          ``H' W' kh kw r_{p+1} r_p``; output core k (k = 1..p) ``(u_1..u_{k-1}) H' W' r_{p-k+1} u_k r_{p-k}``;
        * conventional: the spatial core per input channel ``C H' W' kh kw r_1``; channel core k
          ``(n_1..n_{k-1}) (c_{k+1}..c_d) H' W' c_k r_k n_k r_{k+1}``.
        """
        c_s, n_s = _shapes(spec, in_shape, out_shape, order)
        modes = chain_modes(c_s, n_s, spec.kernel_size, order)
        k = math.prod(spec.kernel_size)
        p, q = len(n_s), len(c_s)

        def macs(ranks: tuple[int, ...], shape: tuple[int, ...]) -> int:
            size = tuple(shape[-spec.dims:])
            hw, hwo = math.prod(size), math.prod(spec.output_size(size))
            core = hw if spec.transposed else hwo  # a transposed core scatters every input position
            r = (1, *ranks, 1)
            if order == "efficient":
                ins = sum(math.prod(c_s[:j - 1]) * hw * c_s[j - 1] * r[p + j + 1] * r[p + j] for j in range(1, q + 1))
                outs = sum(math.prod(n_s[:i - 1]) * hwo * r[p - i + 1] * n_s[i - 1] * r[p - i]
                           for i in range(1, p + 1))
                return ins + core * k * r[p + 1] * r[p] + outs
            chans = sum(math.prod(n_s[:i - 1]) * math.prod(c_s[i:]) * hwo * c_s[i - 1] * r[i] * n_s[i - 1] * r[i + 1]
                        for i in range(1, q + 1))
            return spec.in_channels * core * k * r[1] + chans

        return RankSpace(cls.__name__, tuple(Mode(f"bond {i + 1}", f) for i, f in enumerate(max_tt_ranks(modes))),
                         params=lambda r: tt_params(modes, r), macs=macs,
                         dense_params=math.prod(spec.weight_shape()), dense_macs=spec.macs,
                         bias=spec.out_channels if spec.bias else 0, error_modes=len(modes) - 1,
                         fraction="uniform", unit="bond")

    @classmethod
    def operands(cls, conv, in_shape: Shape = None, out_shape: Shape = None,
                 order: str = "efficient") -> list[Tensor]:
        """The kernel (N, C, *k) (``ConvSpec.as_kernel``), float64 (groups=1)."""
        return [read_kernel(conv)]

    @classmethod
    def rank_space(cls, conv, in_shape: Shape = None, out_shape: Shape = None,
                   order: str = "efficient") -> RankSpace:
        """``space`` with the bond spectra of the chain tensor and TT-SVD choosing ranks under a rule."""
        space = super().rank_space(conv, in_shape=in_shape, out_shape=out_shape, order=order)
        c_s, n_s = tt_conv_shapes(conv.in_channels, conv.out_channels, in_shape, out_shape)
        space.rule_ranks = lambda rule: sequential_ranks(kernel_to_chain(cls.operands(conv)[0], c_s, n_s, order), rule)
        return space

    @classmethod
    def unfold(cls, kernel: Tensor, in_shape: Shape = None, out_shape: Shape = None,
               order: str = "efficient") -> list[list[Tensor]]:
        """Bond k: the chain tensor as ``(first k modes) x rest`` (Oseledets 2011, Thm 2.2)."""
        c_s, n_s = tt_conv_shapes(kernel.shape[1], kernel.shape[0], in_shape, out_shape)
        return bond_unfoldings(kernel_to_chain(kernel, c_s, n_s, order))

    @classmethod
    def from_dense_at(cls, conv, ranks: Ranks, in_shape: Shape = None, out_shape: Shape = None,
                      order: str = "efficient") -> "TTConv":
        """TT-SVD of ``conv``'s kernel (float64), in ``conv``'s dtype and device."""
        check_finite("conv weight", conv.weight)
        layer = cls.empty_at(conv, ranks, in_shape=in_shape, out_shape=out_shape, order=order)._place(conv.weight)
        (kernel,) = cls.operands(conv)
        layer._load_cores(tt_svd(kernel_to_chain(kernel, layer.in_shape, layer.out_shape, order), layer.tt_ranks))
        if conv.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(conv.bias)
        return layer.train(conv.training)

    def dense_weight(self) -> Tensor:
        return self.config.as_weight(chain_to_kernel(tt_to_tensor(self.chain_cores()), self.in_shape, self.out_shape,
                                                     self.config.kernel_size, self.order))

    def dense_bias(self) -> Optional[Tensor]:
        return self.bias

    def spec(self) -> dict[str, Any]:
        return {"config": {**self.config.as_dict(), "in_shape": list(self.in_shape),
                           "out_shape": list(self.out_shape), "order": self.order}, "rank": list(self.tt_ranks)}

    @classmethod
    def options(cls, config: dict[str, Any]) -> dict[str, Any]:
        return {"in_shape": config.get("in_shape"), "out_shape": config.get("out_shape"),
                "order": config.get("order", "efficient")}

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script``: a trace (``traced_for_script``) on an input just large enough for
        the kernel, the padding and the stride."""
        return traced_for_script(self, self.config.smallest_input(self.spatial.weight))

    def extra_repr(self) -> str:
        s = self.config
        shape = lambda v: "x".join(map(str, v))  # noqa: E731
        kind = "transposed, " if s.transposed else ""
        return (f"{s.in_channels}, {s.out_channels}, {kind}kernel_size={s.kernel_size}, order={self.order}, "
                f"in_shape={shape(self.in_shape)}, out_shape={shape(self.out_shape)}, ranks={self.tt_ranks}")


TTConv2d = alias(TTConv, "TTConv2d")
