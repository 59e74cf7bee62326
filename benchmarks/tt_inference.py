"""Inference time of Novikov et al. 2015's 25088x4096 fully-connected layer: dense vs TT-matrix, TT-ranks 4.

Novikov et al. (NeurIPS 2015, Table 3) time VGG's first FC layer (25088 -> 4096) against a TT-layer
with all TT-ranks 4: CPU 16.1 ms -> 1.2 ms for one image (13x), 97.2 -> 94.7 ms for 100; GPU
2.7 -> 1.9 ms and 33 -> 12.9 ms (2.6x). Here, in one process, measured in alternation after a
warm-up (median), ``torch.inference_mode``:

* dense ``nn.Linear(25088, 4096)`` (411 MB of fp32 weights read per call);
* ``TTLinear`` with Novikov et al.'s shapes, 25088 = 2x7x8x8x7x4 and 4096 = 4x4x4x4x4x4 (d = 6);
* the same factors reordered as factorch orders them (inputs ascending 2x4x7x7x8x8, outputs
  descending), which cuts the contraction's MACs from 3.65 M to 2.00 M;
* ``TTLinear`` with factorch's automatic shapes: d = round(log_8 25088) = 5, balanced factors,
  7x7x8x8x8 -> 8x8x4x4x4 (2.12 M MACs);
* the same layer's cores through the base commit's contraction (``--baseline REV``, default the
  commit before the speed work on the TT contraction): its ``_rtl``/``_ltr`` functions, read from ``git show
  REV:factorch/layers/tt_linear.py``, with its forward's steps around them (route by MACs, bias).
  The "before" of the TT-at-batch-1 row, measured in the same process, interleaved.

On CUDA each model is also timed replayed from a captured CUDA graph (no launch overhead, the
same kernels), unless ``--no-graphs``.

    python benchmarks/tt_inference.py [--device cpu|cuda] [--batches 1,100] [--threads 2,1] [--repeats 50]
                                      [--baseline REV]

On a CPU shared with other busy processes, run with ``OMP_WAIT_POLICY=PASSIVE``: OpenMP's default
spin-waiting threads then stall each other (we saw a 0.3 ms TT call take 130 ms); the policy is
recorded in the results.
"""
from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import torch
from torch import nn

import factorch as fc
from common import write_results
from factorch.measure.latency import time_interleaved, wall_clock
from factorch.measure.results import environment

SEED_SHAPES = ((2, 7, 8, 8, 7, 4), (4, 4, 4, 4, 4, 4))
BASE_COMMIT = "544001b"  # main before the speed work on the TT contraction
SEED_MS = {("cpu", 1): (16.1, 1.2), ("cpu", 100): (97.2, 94.7), ("cuda", 1): (2.7, 1.9), ("cuda", 100): (33.0, 12.9)}


def graphed(model: nn.Module, x: torch.Tensor):
    """``model(x)`` captured once in a CUDA graph; the returned function replays it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)
    return graph.replay


class BaseContraction(nn.Module):
    """``layer``'s cores through the base commit's ``_rtl``/``_ltr`` (source from git) and the
    steps of its forward around them; ``None`` when git or the revision is not available."""

    def __init__(self, layer: nn.Module, rev: str) -> None:
        super().__init__()
        repo = Path(__file__).resolve().parent.parent
        proc = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:factorch/layers/tt_linear.py"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip())
        namespace: dict = {}
        source = proc.stdout[proc.stdout.index("def _rtl("):]  # _rtl and _ltr: torch only
        exec("import torch\nfrom torch import Tensor\nfrom typing import Sequence\n" + source, namespace)
        self.rtl, self.ltr, self.layer = namespace["_rtl"], namespace["_ltr"], layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        how = self.layer.route(x.shape[0])  # the base commit's route: fewest MACs of the plain chains
        y = self.rtl(x, self.layer.cores) if how == "rtl" else self.ltr(x, self.layer.cores)
        return y + self.layer.bias


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", default="1,100")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", default="", help="CPU: comma list of torch thread counts to run (default: torch's)")
    p.add_argument("--no-graphs", action="store_true", help="on CUDA, time eager execution only")
    p.add_argument("--baseline", default=BASE_COMMIT, help="git revision whose TT contraction is the 'before' row")
    args = p.parse_args()
    torch.manual_seed(0)
    dev = args.device
    kind = "cuda" if dev.startswith("cuda") else "cpu"
    dense = nn.Linear(25088, 4096).to(dev).eval()
    seed_tt = fc.layers.TTLinear(25088, 4096, args.rank, *SEED_SHAPES).to(dev).eval()
    reordered = (tuple(sorted(SEED_SHAPES[0])), tuple(sorted(SEED_SHAPES[1], reverse=True)))
    seed_sorted = fc.layers.TTLinear(25088, 4096, args.rank, *reordered).to(dev).eval()
    auto_tt = fc.layers.TTLinear(25088, 4096, args.rank).to(dev).eval()
    models = {"dense": dense, "TT seed shapes": seed_tt, "TT seed factors reordered": seed_sorted,
              "TT auto shapes": auto_tt}
    try:
        models[f"TT auto shapes, {args.baseline}'s contraction"] = BaseContraction(auto_tt, args.baseline)
    except (RuntimeError, OSError, ValueError) as e:
        print(f"no baseline row: {e}")
    shape = lambda m: f"{'x'.join(map(str, m.in_shape))} -> {'x'.join(map(str, m.out_shape))}"  # noqa: E731
    # taken before the timing: its load average is the machine's at the start
    env = {**environment(dev), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)")}
    if kind == "cuda":
        env["tf32_matmul"] = str(torch.backends.cuda.matmul.allow_tf32)
    rows = []
    threads = [int(t) for t in args.threads.split(",") if t] if kind == "cpu" else []
    for n_threads, batch in [(t, b) for t in (threads or [torch.get_num_threads()])
                             for b in (int(b) for b in args.batches.split(","))]:
        torch.set_num_threads(n_threads)
        x = torch.randn(batch, 25088, device=dev)
        modes = [("eager", {n: (lambda m=m: m(x)) for n, m in models.items()})]
        if kind == "cuda" and not args.no_graphs:
            with torch.inference_mode():
                modes.append(("CUDA graph", {n: graphed(m, x) for n, m in models.items()}))
        for mode, fns in modes:
            with torch.inference_mode():
                medians = time_interleaved(fns, warmup=args.warmup, runs=args.repeats, timer=wall_clock(dev))
            times = [medians[name] for name in models]
            for (name, model), t in zip(models.items(), times):
                base = isinstance(model, BaseContraction)  # its layer's hooks do not fire
                counts = fc.count(model.layer if base else model, x)
                macs = model.layer._route_costs[model.layer.route(batch)][1] if base else counts.macs
                seed_dense, seed_tt_ms = SEED_MS[(kind, batch)] if batch in (1, 100) else (None, None)
                rows.append({
                    "threads": n_threads if kind == "cpu" else "-", "batch": batch, "mode": mode, "layer": name,
                    "shapes": "25088 -> 4096" if name == "dense" else shape(model.layer if base else model),
                    "order": "-" if name == "dense" else _plan(model, batch),
                    "params": counts.params, "MACs_per_example": macs,
                    "ms": round(t * 1e3, 4), "speedup_vs_dense": round(times[0] / t, 2),
                    "seed_ms": seed_dense if name == "dense" else (seed_tt_ms if name == "TT seed shapes" else ""),
                })
    notes = [
        "order: the route and, for TTLinear's auto order, the cores merged before the chain (e.g. rtl 1+1+1+2: "
        "the last two multiplied into one); the base commit's row runs the plain chain with a permuted copy "
        "of the state per step.",
        f"Median of {args.repeats} alternating calls after {args.warmup} warm-up calls each, "
        "torch.inference_mode, fp32, random weights (timing does not depend on the values).",
        "seed_ms: Novikov et al. 2015, Table 3 (their CPU/GPU, 2015); speedups here are measured "
        "side by side in this run. TT-ranks all 4; `order` is the contraction order TTLinear chose "
        "(rtl = core d first, ltr = core 1 first; the cheaper by the MAC formulas of docs/math.md).",
        "params include the 4096 bias (the TT cores alone: params - 4096). The CPU is shared with other "
        "processes: the 1-minute load average at the start is recorded above.",
    ]
    csv_path, md_path = write_results(f"tt_inference_{kind}", rows, env, notes)
    for r in rows:
        print(f"threads {r['threads']} batch {r['batch']:>4} {r['mode']:<10} {r['layer']:<26} {r['ms']:>10.3f} ms  "
              f"x{r['speedup_vs_dense']:<7} ({r['order']})")
    print(f"wrote {csv_path} and {md_path}")


def _plan(model: nn.Module, batch: int) -> str:
    if isinstance(model, BaseContraction):
        return f"{model.layer.route(batch)} (base)"
    how, sizes = model.plan(batch)
    return how if how == "dense" or set(sizes) == {1} else f"{how} {'+'.join(map(str, sizes))}"


if __name__ == "__main__":
    main()
