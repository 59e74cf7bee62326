"""Params and MACs of ResNet-56's convs: dense vs conventional TT-conv vs the efficient order.

Yin et al. (CVPR 2022, HODEC) show that the conventional TT convolution (Garipov et al. 2016: spatial
core first, then channel cores as in a TT-matrix) can cost more MACs than the dense conv, and propose an
order -- input-channel cores, ONE kxk conv, output-channel cores -- whose MACs fall with the
parameters. Here every conv of CIFAR ResNet-56 (32x32 input) is replaced, at the same int TT-rank
for every bond (capped at each bond's full rank), by ``fc.layers.TTConv2d`` in both orders, and
``fc.count`` counts the real modules (hooks, the layer's real input size, stride included). Channel
factors are two per side (16 = 4x4, 32 = 8x4, 64 = 8x8; the first conv's 3 input channels are 3x1).
Only shapes matter for the counts, so layers are built on the meta device.

    python benchmarks/tt_conv_costs.py [--ranks 2,4,8,16,32]
"""
from __future__ import annotations

import argparse
from collections import OrderedDict

import torch
from torch import nn

import factorch as fc
from common import RESULTS, write_results
from factorch.measure.results import environment

ORDERS = ("conventional", "efficient")


def conv_groups(model: nn.Module, example: torch.Tensor) -> "OrderedDict[tuple, list]":
    """Convs with the same geometry and input size, in model order: key -> [(name, conv, input_shape)]."""
    rows = {r.name: r for r in fc.count(model, example).layers}
    groups: OrderedDict[tuple, list] = OrderedDict()
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shape = rows[name].input_shape
            key = (m.in_channels, m.out_channels, m.kernel_size, m.stride, shape[1:])
            groups.setdefault(key, []).append((name, m, shape))
    return groups


def costs(conv: nn.Conv2d, shape: tuple, rank: int, order: str) -> tuple[int, int, tuple]:
    """(params, MACs per example, ranks) of ``conv`` as a TTConv2d at ``rank``, counted on meta."""
    with torch.device("meta"):
        layer = fc.layers.TTConv2d.empty_like(conv, rank, order=order)
        counts = fc.count(layer, torch.empty(1, *shape))
    return counts.params, counts.macs, layer.ranks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="2,4,8,16,32")
    args = p.parse_args()
    with torch.device("meta"):
        model = fc.models.create("resnet56")
    groups = conv_groups(model, torch.empty(1, 3, 32, 32, device="meta"))
    rows, totals = [], {}
    for rank in (int(r) for r in args.ranks.split(",")):
        total = {"dense": [0, 0], **{o: [0, 0] for o in ORDERS}}
        for (c, n, k, s, hw), members in groups.items():
            _, conv, shape = members[0]
            dense = fc.count(conv, torch.empty(1, *shape, device="meta"))
            row = {"rank": rank, "layers": f"{members[0][0]} .. {members[-1][0]}" if len(members) > 1 else members[0][0],
                   "count": len(members), "conv": f"{k[0]}x{k[1]} {c}->{n} s{s[0]} @{hw[0]}x{hw[1]}",
                   "dense_params": dense.params, "dense_MACs": dense.macs}
            total["dense"][0] += dense.params * len(members)
            total["dense"][1] += dense.macs * len(members)
            for order in ORDERS:
                params, macs, ranks = costs(conv, shape, rank, order)
                tag = order[:4]
                row.update({f"{tag}_ranks": "x".join(map(str, ranks)), f"{tag}_params": params, f"{tag}_MACs": macs,
                            f"{tag}_MACs_vs_dense": round(macs / dense.macs, 3)})
                total[order][0] += params * len(members)
                total[order][1] += macs * len(members)
            rows.append(row)
        totals[rank] = total
        rows.append({"rank": rank, "layers": "all convs", "count": sum(len(m) for m in groups.values()),
                     "conv": "total", "dense_params": total["dense"][0], "dense_MACs": total["dense"][1],
                     **{k: v for order in ORDERS for k, v in (
                         (f"{order[:4]}_ranks", "-"), (f"{order[:4]}_params", total[order][0]),
                         (f"{order[:4]}_MACs", total[order][1]),
                         (f"{order[:4]}_MACs_vs_dense", round(total[order][1] / total["dense"][1], 3)))}})
    env = environment("cpu")
    env["device"] = "none (counts only, meta device)"
    notes = ["Params: conv weights plus bias (ResNet-56's convs have none). MACs per 32x32 example, "
             "counted by forward hooks on the real factor convs (fc.count). `conv`/`effi` = conventional "
             "(Garipov) / efficient (HODEC) order; ranks listed along each chain."]
    for path in write_results("tt_conv_costs_resnet56", rows, env, notes):
        print(f"wrote {path}")
    plot(totals, RESULTS / "tt_conv_costs_resnet56.png")
    for rank, total in totals.items():
        print(f"rank {rank:>3}: " + ", ".join(f"{k} {v[0] / 1e3:.1f}K params {v[1] / 1e6:.1f}M MACs"
                                          for k, v in total.items()))


def plot(totals: dict, path) -> None:
    """MACs against params of the whole network's convs, one line per order."""
    from factorch.measure.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    dense = next(iter(totals.values()))["dense"]
    ax.scatter([dense[0] / 1e3], [dense[1] / 1e6], marker="*", s=150, color="k", label="dense", zorder=3)
    for order, style in zip(ORDERS, ("o--", "s-")):
        pts = [(t[order][0] / 1e3, t[order][1] / 1e6) for t in totals.values()]
        ax.plot(*zip(*pts), style, label=f"TT-conv, {order} order")
        for rank, (x, y) in zip(totals, pts):
            ax.annotate(f"r={rank}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("conv parameters (K)")
    ax.set_ylabel("conv MACs per 32x32 image (M)")
    ax.set_title("ResNet-56 convs as tensor trains")
    ax.grid(alpha=0.3)
    ax.legend()
    print(f"wrote {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
