"""TuckerConv2d vs tensorly-torch's factorized Tucker convolution, forward + backward, same ranks.

tltorch (``FactorizedConv(..., factorization="tucker", implementation="factorized")``) is the
peer library users reach for; its Tucker conv multiplies the spatial factors into the core at every
call and runs the 1x1 stages as ``conv1d`` over flattened maps. Both layers get the same Tucker-2
ranks (tltorch: full rank on the two spatial modes) and the same input; median of alternating runs.
Both memory layouts: NCHW, and channels_last (the layout a CPU or tensor-core GPU runs convs in
fastest; factorch's layers keep it end to end, tltorch's flattening reshape turns it back to NCHW).

    python benchmarks/tucker_vs_tltorch.py [--batch 128] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse

import torch

from common import write_results
from factorch.layers import TuckerConv2d
from factorch.measure.latency import time_interleaved, wall_clock
from factorch.measure.results import environment

# (channels in, channels out, input side): the conv shapes of CIFAR VGG-19
SHAPES = [(64, 64, 32), (128, 128, 16), (256, 256, 8), (512, 512, 4)]


def fwd_bwd(layer, x):
    def run():
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()
    return run


def compare(tltorch, c: int, n: int, side: int, fmt: torch.memory_format, args) -> dict:
    """One conv shape: both layers at the same Tucker-2 ranks, timed in alternation."""
    r_in, r_out = max(1, int(args.rank_fraction * c)), max(1, int(args.rank_fraction * n))
    conv = torch.nn.Conv2d(c, n, 3, padding=1, bias=False).to(args.device)
    ours = TuckerConv2d.from_dense(conv, (r_out, r_in)).to(memory_format=fmt)
    theirs = tltorch.FactorizedConv.from_conv(conv, rank=(r_out, r_in, 3, 3), factorization="tucker",
                                              implementation="factorized").to(args.device)
    x = torch.randn(args.batch, c, side, side, device=args.device).contiguous(memory_format=fmt).requires_grad_()
    with torch.no_grad():  # same function up to the decomposition each library computed
        rel = float((ours(x) - theirs(x)).norm() / conv(x).norm())
    times = time_interleaved({"factorch": fwd_bwd(ours, x), "tltorch": fwd_bwd(theirs, x)}, warmup=3,
                             runs=args.repeats, timer=wall_clock(args.device))
    t_ours, t_theirs = times["factorch"], times["tltorch"]
    return {"layer": f"{c}->{n} 3x3 @{side}x{side}", "ranks (out,in)": f"{r_out},{r_in}",
            "factorch_ms": round(t_ours * 1e3, 3), "tltorch_ms": round(t_theirs * 1e3, 3),
            "tltorch/factorch": round(t_theirs / t_ours, 2), "output_rel_diff": f"{rel:.1e}"}


def main() -> None:
    import tltorch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rank-fraction", type=float, default=0.25, help="R_in = f*C, R_out = f*N")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    for layout, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        for c, n, side in SHAPES:
            rows.append({"layout": layout, **compare(tltorch, c, n, side, fmt, args)})
            print(rows[-1])
    env = environment(args.device)
    env["tltorch"] = tltorch.__version__ if hasattr(tltorch, "__version__") else "installed"
    notes = [f"Forward + backward (input and weight gradients) of one layer, batch {args.batch}, fp32, "
             f"input in the row's layout; median of {args.repeats} alternating runs after 3 warm-up runs each. "
             "output_rel_diff: ||ours(x) - tltorch(x)|| / ||conv(x)|| (both approximate the same conv)."]
    stem = f"tucker_vs_tltorch_{'gpu' if args.device.startswith('cuda') else 'cpu'}"
    for path in write_results(stem, rows, env, notes):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
