"""Inference speed: dense vs compressed models, per batch size, runtime and thread count.

Compressed = Tucker-2 + SVD at ``fc.Budget(macs=0.5)`` with ranks in multiples of ``--multiple`` (16: the
channel block of ONNX Runtime's NCHWc kernels on AVX-512; random weights, seeded), then ``fc.deploy_``
(batch norm folded, factors merged where fewer MACs, layout and each layer's form timed at the
row's batch size, one thread). The dense model is deployed too (batch norm folded, layout chosen):
both sides in their fastest form. Per (model, batch, threads) every variant -- eager, compiled
(``torch.compile``), ONNX Runtime (``fc.export``, verified, then an ``InferenceSession`` with that many
intra-op threads; the compressed models deployed for it: ``fc.deploy_`` with
``fc.Profiler(runtime="onnxruntime")`` at the cell's batch and threads, ``pad_to=--pad-to``) for dense and compressed, the compressed model before ``fc.deploy_`` (eager) and
the same budget with free ranks (``multiple=1``, deployed; ONNX Runtime) -- is timed
in ONE ``time_interleaved`` call (warm-up, interleaved, median), so every ratio is side by side.
Each cell is measured in ``--passes`` passes (minutes apart: each pass runs every cell of a model);
the table gives the range over passes where they differ.

Columns: ``MACs x`` = dense / compressed MACs (the MAC limit of the speed-up); ``speed-up`` =
dense / compressed latency in that runtime; ``of MAC limit`` = speed-up / MACs x. ``best`` rows
compare the fastest dense form with the fastest compressed form. ``latency budget`` rows:
``fc.Budget(latency=0.5)`` (one thread, batch 1) decomposed, then measured after the fact next to
the dense model.

    python benchmarks/inference.py [--models resnet18,resnet50,vgg16_imagenet,vgg19,resnet56]
        [--batches 1,32] [--threads 1,all] [--passes 2] [--device cpu|cuda] [--smoke]

Run with ``OMP_WAIT_POLICY=PASSIVE`` on a shared CPU (recorded in the results).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import factorch as fc
import common
from common import write_results
from factorch.measure.latency import time_interleaved, wall_clock
from factorch.measure.onnx_runtime import graph_call
from factorch.measure.results import environment, markdown_table

# name -> (zoo name, classes, input (C, H, W)); ImageNet geometry for the first three
MODELS = {"resnet18": ("resnet18", 1000, (3, 224, 224)), "resnet50": ("resnet50", 1000, (3, 224, 224)),
          "vgg16_imagenet": ("vgg16_imagenet", 1000, (3, 224, 224)), "vgg19": ("vgg19", 10, (3, 32, 32)),
          "resnet56": ("resnet56", 10, (3, 32, 32))}
# cells cut to keep the full CPU run near 30 minutes (the notes say so)
NO_LARGE_BATCH = {"vgg16_imagenet"}           # 15.5 GMACs per image: batch 32 takes ~10 s per call here
ONE_THREAD_LARGE_BATCH = {"resnet50"}         # batch 32 only at one thread


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batches", default="1,32")
    p.add_argument("--threads", default="1,all", help="comma list; 'all' is torch's default thread count")
    p.add_argument("--runtimes", default="eager,compile,onnxruntime")
    p.add_argument("--compile-models", default="resnet18,vgg19,resnet56",
                   help="models torch.compile'd (compiling ResNet-18 took 134 s here; ResNet-50 and VGG-16 "
                        "would take most of the run's time)")
    p.add_argument("--latency-budget", default="resnet18,resnet50", help="models also given fc.Budget(latency=F)")
    p.add_argument("--latency-fraction", type=float, default=0.5, help="F (default 0.5)")
    p.add_argument("--multiple", type=int, default=16, help="rank grid of the compressed models (default 16)")
    p.add_argument("--pad-to", type=int, default=16,
                   help="ONNX Runtime rows: fc.deploy_(pad_to=B), chains padded to B channels where faster (default 16)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--runs", type=int, default=15, help="timed rounds at batch 1 (a third of them at batch 32)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny: resnet20 at batch 1 and 2, one run, results elsewhere")
    p.add_argument("--stem", default=None, help="results file stem (default inference_<device>)")
    args = p.parse_args()
    if args.smoke:
        MODELS["resnet20"] = ("resnet20", 10, (3, 32, 32))
        args.models, args.batches, args.threads, args.passes = "resnet20", "1,2", "1", 1
        args.runs, args.warmup, args.compile_models, args.latency_budget = 1, 0, "", "resnet20"
        args.latency_fraction = 0.9
    return args


def profiler(args: argparse.Namespace, batch: int, runs: int) -> fc.Profiler:
    return fc.Profiler(batch=batch, threads=1 if args.device == "cpu" else None, warmup=args.warmup, runs=runs,
                       device=args.device)


def compressed(dense: nn.Module, x: torch.Tensor, rank, multiple: int) -> tuple[nn.Module, fc.Report]:
    model = copy.deepcopy(dense)
    report = fc.decompose_(model, [fc.Tucker2(rank, multiple=multiple), fc.SVD(rank, multiple=multiple)],
                           example_input=x)
    return model, report


def deployed(model: nn.Module, x: torch.Tensor, p: fc.Profiler, pad_to: Optional[int] = None
             ) -> tuple[nn.Module, fc.DeployReport]:
    model = copy.deepcopy(model)
    return model, fc.deploy_(model, x, profiler=p, pad_to=pad_to)


def onnx_runner(model: nn.Module, x: torch.Tensor, threads: int, device: str, folder: Path):
    """``fc.export`` (verified against eager), then an ONNX Runtime session with ``threads`` intra-op
    threads, set up as ``fc.Profiler(runtime="onnxruntime")`` sets up its own."""
    path = folder / f"m{len(list(folder.iterdir()))}.onnx"
    fc.export(model.cpu() if device == "cpu" else model, x[:1], "onnx", path)
    return graph_call(path, x, threads)


def compiled(model: nn.Module, x: torch.Tensor) -> tuple[object, float]:
    """``torch.compile(model)`` and the seconds its first call took (the compilation)."""
    fn = torch.compile(copy.deepcopy(model))
    t0 = time.perf_counter()
    with torch.no_grad():
        fn(x)
    return fn, time.perf_counter() - t0


def eager(model: nn.Module, x: torch.Tensor):
    def call() -> None:
        with torch.no_grad():
            model(x)
    return call


def ort_deployed(args, p: fc.Profiler, threads: int, models: dict[str, Optional[nn.Module]], x1: torch.Tensor
                 ) -> dict[str, tuple[nn.Module, fc.DeployReport]]:
    """The compressed models deployed for the ONNX Runtime rows: each layer's form timed in ONNX
    Runtime at the cell's batch and threads (``fc.Profiler(runtime="onnxruntime")``)."""
    if "onnxruntime" not in args.runtimes.split(","):
        return {}
    timed = dataclasses.replace(p, runtime="onnxruntime", threads=threads)
    return {k: deployed(m, x1, timed, pad_to=args.pad_to) for k, m in models.items() if m is not None}


def runtimes(args, name, models: dict[str, nn.Module], x, threads, folder, notes,
             ort_models: dict[str, nn.Module]) -> dict[str, object]:
    """name -> call, for every runtime and model variant (a failure is a note, not a crash);
    ``ort_models``: the variants deployed for ONNX Runtime, used in its rows."""
    calls: dict[str, object] = {}
    for runtime in args.runtimes.split(","):
        for variant, model in models.items():
            if runtime != "eager" and variant == "undeployed" or runtime != "onnxruntime" and variant == "offgrid" or \
                    runtime == "compile" and name not in args.compile_models.split(","):
                continue
            key = f"{runtime}/{variant}"
            try:
                if runtime == "eager":
                    calls[key] = eager(model, x)
                elif runtime == "compile":
                    fn, seconds = compiled(model, x)
                    notes.append(f"{name} batch {x.shape[0]} {variant}: torch.compile took {seconds:.0f} s")
                    calls[key] = eager(fn, x)
                elif runtime == "onnxruntime":
                    calls[key] = onnx_runner(ort_models.get(variant, model), x, threads, args.device, folder)
            except Exception as e:  # a runtime that fails here is recorded, the others still run
                notes.append(f"{name} {key} failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    return calls


def thread_counts(args) -> list[int]:
    return sorted({torch.get_num_threads() if t == "all" else int(t) for t in args.threads.split(",")})


def rows_of(name: str, batch: int, threads: int, macs: tuple[int, int], medians: list[dict[str, float]]) -> list[dict]:
    """Table rows of one cell from its passes' medians (seconds): per runtime, then the best of each side."""
    ratio = macs[0] / macs[1]
    first = medians[0]
    pairs = [(rt, f"{rt}/dense", f"{rt}/compressed") for rt in dict.fromkeys(k.split("/")[0] for k in first)
             if f"{rt}/dense" in first and f"{rt}/compressed" in first]
    out = []
    for rt, d_key, c_key in pairs:
        row = _row(name, batch, threads, rt, ratio, [m[d_key] for m in medians], [m[c_key] for m in medians])
        if rt == "eager" and "eager/undeployed" in first:
            row["before deploy ms"] = _ms([m["eager/undeployed"] for m in medians])
        if f"{rt}/offgrid" in first:
            row["free ranks ms"] = _ms([m[f"{rt}/offgrid"] for m in medians])
        out.append(row)
    if len(pairs) > 1:
        best = lambda m, side: min(m[k] for _, *ks in pairs for k in ks if k.endswith(side))  # noqa: E731
        which = lambda side: min((k for _, *ks in pairs for k in ks if k.endswith(side)), key=first.get)  # noqa: E731
        rt = f"best: dense {which('/dense').split('/')[0]}, compressed {which('/compressed').split('/')[0]}"
        out.append(_row(name, batch, threads, rt, ratio, [best(m, "/dense") for m in medians],
                        [best(m, "/compressed") for m in medians]))
    return out


def _row(name, batch, threads, runtime, ratio, dense: list[float], comp: list[float]) -> dict:
    speedups = [d / c for d, c in zip(dense, comp)]
    return {"model": name, "batch": batch, "threads": threads, "runtime": runtime, "MACs x": f"{ratio:.2f}",
            "dense ms": _ms(dense), "compressed ms": _ms(comp), "speed-up": _span(speedups, "{:.2f}") + "x",
            "of MAC limit": _span([v / ratio for v in speedups], "{:.2f}")}


def _ms(seconds: list[float]) -> str:
    return _span([s * 1e3 for s in seconds], "{:.3g}")


def _span(values: list[float], fmt: str) -> str:
    """One value, or ``lo-hi`` over the passes where they differ in the shown digits."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def op_profile(models: dict[str, nn.Module], x: torch.Tensor, top: int = 6) -> str:
    """Where the time goes (``torch.profiler``, self CPU time per operator, one eager call each)."""
    from torch.profiler import ProfilerActivity, profile

    rows = []
    for variant, model in models.items():
        with torch.no_grad():
            model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(x)
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events) or 1
        rows += [[variant, e.key, e.count, f"{e.self_cpu_time_total / 1e3:.1f}", f"{e.self_cpu_time_total / total:.0%}"]
                 for e in events[:top]]
    return markdown_table(["model", "operator", "calls", "self CPU ms", "share"], rows)


def main() -> int:
    args = parse()
    torch.manual_seed(0)
    results, sections, notes = [], [], []
    folder = Path(tempfile.mkdtemp())
    start = time.time()
    for name in args.models.split(","):
        zoo, classes, shape = MODELS[name]
        dense = fc.models.create(zoo, num_classes=classes).eval().to(args.device)
        x1 = torch.randn(1, *shape, device=args.device)
        t0 = time.time()
        comp, _ = compressed(dense, x1, fc.Budget(macs=0.5), args.multiple)
        free = compressed(dense, x1, fc.Budget(macs=0.5), 1)[0] if args.multiple != 1 else None
        macs = (fc.count(dense, x1).macs, fc.count(comp, x1).macs)
        print(f"{name}: decomposed in {time.time() - t0:.0f} s, MACs {macs[0] / 1e9:.3f}G -> {macs[1] / 1e9:.3f}G",
              flush=True)
        cells = []
        for batch in map(int, args.batches.split(",")):
            if batch > 1 and name in NO_LARGE_BATCH:
                continue
            runs = args.runs if batch == 1 else max(3, args.runs // 3)
            p = profiler(args, batch, runs)
            dense_dep, _ = deployed(dense, x1, p)
            comp_dep, report = deployed(comp, x1, p)
            free_dep = deployed(free, x1, p)[0] if free is not None else None
            print(f"  batch {batch}: deployed: {report.forms()}, layout {report.layout}", flush=True)
            if name == "resnet50" and batch == 1:
                sections.append(f"### fc.deploy_ report, ResNet-50, batch 1, one thread\n\n```\n{report}\n```")
                sections.append("### Where the time goes: ResNet-50, batch 1, one thread, eager (torch.profiler)\n\n"
                                + op_profile({"dense": dense_dep, "compressed": comp_dep}, x1))
            x = torch.randn(batch, *shape, device=args.device)
            for threads in thread_counts(args):
                if batch > 1 and name in ONE_THREAD_LARGE_BATCH and threads > 1:
                    continue
                torch.set_num_threads(threads)
                variants = {"dense": dense_dep, "compressed": comp_dep, "undeployed": comp}
                if free_dep is not None:
                    variants["offgrid"] = free_dep
                in_ort = ort_deployed(args, p, threads, {"compressed": comp, "offgrid": free}, x1)
                if name == "resnet50" and batch == 1 and threads == 1 and in_ort:
                    sections.append("### fc.deploy_ report in ONNX Runtime (Profiler(runtime='onnxruntime')), "
                                    f"ResNet-50, batch 1, one thread\n\n```\n{in_ort['compressed'][1]}\n```")
                ort_models = {k: v[0] for k, v in in_ort.items()}
                cells.append((batch, threads, runs, runtimes(args, name, variants, x, threads, folder, notes, ort_models)))
        medians = {i: [] for i in range(len(cells))}
        for _ in range(args.passes):
            for i, (batch, threads, runs, calls) in enumerate(cells):
                torch.set_num_threads(threads)
                medians[i].append(time_interleaved(calls, warmup=args.warmup, runs=runs, timer=wall_clock(args.device)))
        for i, (batch, threads, _, _) in enumerate(cells):
            rows = rows_of(name, batch, threads, macs, medians[i])
            results += rows
            print("\n".join(str(r) for r in rows), flush=True)
        if name in args.latency_budget.split(","):
            row, line = latency_budget_row(args, name, dense, x1, macs)
            results.append(row)
            notes.append(f"{name}: {line}")
            print(row, line, sep="\n", flush=True)
        del cells
    torch.set_num_threads(max(thread_counts(args)))
    env = environment(args.device)
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "unset")
    env["wall time (min)"] = f"{(time.time() - start) / 60:.1f}"
    columns = ["model", "batch", "threads", "runtime", "MACs x", "dense ms", "compressed ms", "before deploy ms",
               "free ranks ms", "speed-up", "of MAC limit"]
    rows = [{c: r.get(c) for c in columns} for r in results]
    if args.smoke and not os.environ.get("BENCH_RESULTS_DIR"):
        common.RESULTS = Path(tempfile.mkdtemp())  # never over the measured files
    write_results(args.stem or f"inference_{'cpu' if args.device == 'cpu' else 'gpu'}", rows, env,
                  notes=notes + NOTES, sections=sections)
    return 0


def latency_budget_row(args, name, dense, x1, macs) -> tuple[dict, str]:
    """``fc.Budget(latency=0.5)`` at batch 1, one thread: the model measured after the fact,
    interleaved with the dense one, and the budget's own report line."""
    p = profiler(args, 1, args.runs)
    f = args.latency_fraction
    try:
        model, report = compressed(dense, x1, fc.Budget(latency=f, profiler=p), args.multiple)
    except ValueError as e:  # an unreachable fraction is a result too
        return {"model": name, "batch": 1, "threads": 1, "runtime": f"eager, fc.Budget(latency={f:g}): refused"}, str(e)
    torch.set_num_threads(1)
    t = time_interleaved({"dense": eager(dense, x1), "budget": eager(model, x1)}, warmup=args.warmup,
                         runs=args.runs, timer=wall_clock(args.device))
    got = t["budget"] / t["dense"]
    ratio = macs[0] / fc.count(model, x1).macs
    row = {"model": name, "batch": 1, "threads": 1, "runtime": f"eager, fc.Budget(latency={f:g}): {got:.3f} of dense",
           "MACs x": f"{ratio:.2f}", "dense ms": _ms([t["dense"]]), "compressed ms": _ms([t["budget"]]),
           "speed-up": f"{1 / got:.2f}x", "of MAC limit": f"{1 / got / ratio:.2f}"}
    return row, str(report.budgets[0])


NOTES = [
    "weights are random (seeded); ranks from fc.Budget(macs=0.5) over Tucker-2 + SVD on those weights, in multiples "
    "of --multiple (or a mode's full rank)",
    "free ranks ms: the same budget with multiple=1 (any rank), deployed the same way, in ONNX Runtime: what the rank "
    "grid buys over free ranks padded at deployment (fc.deploy_(pad_to=16) in the onnxruntime rows: each chain's "
    "inner channels padded with zero channels where that measures faster)",
    "deployment: eager and compile rows run fc.deploy_ timed in eager PyTorch at one thread (layout and forms); "
    "onnxruntime rows run fc.deploy_ timed in ONNX Runtime (fc.Profiler(runtime='onnxruntime')) at the row's batch "
    "and threads; the dense model is deployed too (batch norm folded)",
    "MACs x: dense / compressed MACs of the compressed model as fc.Budget(macs=0.5) left it; where fc.deploy_ "
    "rebuilds a layer dense (faster so) the deployed model runs more MACs than that",
    "ONNX Runtime sessions run with session.intra_op.allow_spinning=0: variants are interleaved, each in its own "
    "session, and a pool thread spinning after its call would take a core from the next variant's call",
    "2-thread rows: this machine has 2 cores, shared with other jobs; a 2-thread call waits for its slower thread's "
    "time slice, so these are the least steady rows (compare them with the previous runs named in the notes below)",
    "timing: factorch.measure.latency.time_interleaved (warm-up, variants interleaved, median), wall clock",
    "cut to keep the run under an hour: VGG-16 (ImageNet) at batch 1 only, ResNet-50 at batch 32 with one thread "
    "only, torch.compile only for the --compile-models",
]

if __name__ == "__main__":
    sys.exit(main())
