"""Training throughput per epoch, original vs Tucker-2 decomposed: VGG-19, ResNet-56, DenseNet-40.

Elhoushi et al. (2019) report total training-time speedups of 2.06x (VGG-19, Table 1),
1.29x (DenseNet-40, Table 2) and 1.08x (ResNet-56, Table 3) on a K40c/P100 for "Dec. @ 10/20".
This measures the per-epoch part of that: SGD steps (forward, backward, update) per second of the
dense model, the model with every candidate conv decomposed, and the model as ``factorch train``'s
decomposition event leaves it by default (``keep_if_faster``: each conv timed dense and factorized,
forward+backward at the training batch, in the run's layout, and kept dense where factorizing is
not faster; the event's own profiler, ``events.training_profiler``), on synthetic CIFAR-shaped
batches (3x32x32, 10 classes), all measured in alternation in one process (median of
``--repeats``, after warm-up, CUDA synchronised). The memory format is ``factorch train``'s
(``--channels-last``/``--no-channels-last``; default: the run's rule, channels_last for these conv
models on CPU and CUDA), the same for every model. The "dec@10 of 200" column turns the ratio into
the paper's total: ``200 / (10 + 190 / ratio)``.

Ranks: EVBMF needs trained weights (random init gives rank 0), so each model is decomposed at a
uniform fraction of every kxk conv's parameters (``fc.Tucker2(f)``; the first conv and the
classifier stay dense, as in the paper), with ``f`` found by bisection so the decomposed model has
the paper's parameter count after EVBMF: VGG-19 749K (Table 1, dec@10), DenseNet-40 270K (Table 2,
dec@20), ResNet-56 508K (Table 3, dec@10).

    python benchmarks/train_throughput.py [--device cpu|cuda] [--batch 128] [--steps 3] [--repeats 5]
        [--amp] [--[no-]channels-last] [--[no-]keep-if-faster] [--models vgg19,resnet56,densenet40]
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

import factorch as fc
from factorch.measure.latency import time_interleaved, wall_clock
from factorch.measure.results import environment
from factorch.selection import layer_filter
from factorch.training.events import training_profiler
from factorch.training.loop import to_memory_format, uses_channels_last
from common import write_results

# the paper's decomposed parameter counts and total speedups (Tables 1-3)
PAPER = {"vgg19": (749_000, 2.06), "densenet40": (270_000, 1.29), "resnet56": (508_000, 1.08)}
EXAMPLE = (1, 3, 32, 32)


def decomposed_params(model: torch.nn.Module, fraction: float) -> int:
    """Parameters of ``model`` after Tucker-2 at ``fraction``, as ``fc.plan`` reports them per layer
    (``from_scratch``: the ranks a fraction gives depend on the geometry alone, so nothing is
    decomposed to count them; layers the plan leaves dense count as dense)."""
    totals = fc.plan(model, fc.Tucker2(fraction), filter_fn=layer_filter(False, [], model),
                     example_input=torch.zeros(EXAMPLE), from_scratch=True).totals()
    return sum(p.numel() for p in model.parameters()) - totals["params_before"] + totals["params_after"]


def fraction_for(model: torch.nn.Module, target: int) -> float:
    lo, hi = 1e-3, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if decomposed_params(model, mid) < target else (lo, mid)
    # ranks move in integer steps: keep the side whose count is closer to the target
    return min((lo, hi), key=lambda f: abs(decomposed_params(model, f) - target))


def step_fn(model, x, y, steps: int, amp: bool):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    dtype = torch.float16 if x.device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp and x.device.type == "cuda")

    def run():
        for _ in range(steps):
            with torch.autocast(x.device.type, dtype=dtype, enabled=amp):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="SGD steps per timed run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="memory format (default: factorch train's rule)")
    p.add_argument("--keep-if-faster", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the model the decomposition event keeps (default on)")
    p.add_argument("--models", default="vgg19,resnet56,densenet40")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        dense = fc.models.create(name)
        target, paper_speedup = PAPER[name]
        f = fraction_for(dense, target)
        dense = dense.to(args.device)
        channels_last = uses_channels_last(args.channels_last, dense, args.device)
        example = torch.zeros(EXAMPLE, device=args.device)
        small = copy.deepcopy(dense)
        report = fc.decompose_(small, fc.Tucker2(f), filter_fn=layer_filter(False, [], small), example_input=example)
        models = [dense, small]
        if args.keep_if_faster:  # what the decomposition event of `factorch train` keeps, by its own timing
            kept = copy.deepcopy(dense)
            timing = training_profiler(True, args.batch, channels_last, args.amp)
            kept_report = fc.decompose_(kept, fc.Tucker2(f), filter_fn=layer_filter(False, [], kept),
                                        example_input=example, keep_if_faster=timing)
            models.append(kept)
        for m in models:
            to_memory_format(m, channels_last)
        counts = [fc.count(m, example) for m in models]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x = torch.randn(args.batch, 3, 32, 32, device=args.device).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (args.batch,), device=args.device)
        variants = ["dense", "decomposed", "kept"][:len(models)]
        medians = time_interleaved({v: step_fn(m, x, y, args.steps, args.amp) for v, m in zip(variants, models)},
                                   warmup=args.warmup, runs=args.repeats, timer=wall_clock(args.device))
        times = [medians[v] for v in variants]
        img_s = [args.batch * args.steps / t for t in times]
        ratio = times[0] / times[1]
        print(f"{name}: fraction {f:.4f}, {len(report.decomposed)} convs decomposed, params "
              f"{counts[0].params:,} -> {counts[1].params:,}, {img_s[0]:.1f} -> {img_s[1]:.1f} img/s, {ratio:.2f}x",
              flush=True)
        row = {"model": name, "layout": "channels_last" if channels_last else "NCHW", "fraction": round(f, 4),
               "convs_decomposed": len(report.decomposed), "params": counts[0].params, "params_dec": counts[1].params,
               "MACs": counts[0].macs, "MACs_dec": counts[1].macs,
               "MACs_ratio": round(counts[0].macs / counts[1].macs, 2),
               "img_s": round(img_s[0], 1), "img_s_dec": round(img_s[1], 1),
               "epoch_speedup": round(ratio, 3),
               "total_dec10_of_200": round(200 / (10 + 190 / ratio), 3),
               "paper_total": paper_speedup}
        if args.keep_if_faster:
            kept_ratio = times[0] / times[2]
            dense_kept = [r.name for r in kept_report.skipped if r.skipped.startswith("kept dense")]
            print(f"  keep_if_faster: {len(kept_report.decomposed)} factorized, {len(dense_kept)} kept dense, "
                  f"{counts[2].params:,} params, {img_s[2]:.1f} img/s, {kept_ratio:.2f}x", flush=True)
            row.update({"convs_kept_dense": len(dense_kept), "params_kept": counts[2].params,
                        "img_s_kept": round(img_s[2], 1), "epoch_speedup_kept": round(kept_ratio, 3),
                        "total_dec10_of_200_kept": round(200 / (10 + 190 / kept_ratio), 3)})
        rows.append(row)
    env = environment(args.device)
    tag = "gpu" if args.device.startswith("cuda") else "cpu"
    notes = [f"Batch {args.batch}, {args.steps} SGD steps per timed run, median of {args.repeats} alternating runs "
             f"after {args.warmup} warm-up run(s); AMP {'on' if args.amp else 'off'}; layout per row "
             f"({'given' if args.channels_last is not None else 'factorch train default'}), the same for all models.",
             "_kept: the model as the decomposition event leaves it with keep_if_faster (factorch train's default): "
             "convs whose factorized form was not faster forward+backward at this batch stay dense.",
             "Ranks: Tucker-2 at a uniform fraction of each kxk conv's parameters, chosen so the parameter count "
             "matches the paper's EVBMF result (first conv and classifier dense). paper_total: the paper's "
             "measured total training speedup; total_dec10_of_200: this run's ratio applied to 10 dense + 190 "
             "decomposed epochs."]
    tag += "_amp" if args.amp else ""
    tag += {None: "", True: "_channels_last", False: "_nchw"}[args.channels_last]
    paths = write_results(f"train_throughput_{tag}", rows, env, notes)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
