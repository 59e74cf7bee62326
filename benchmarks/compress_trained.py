"""Which recipe recovers a compressed trained model best: direct decomposition + fine-tuning, ADMM
from the trained weights (Yin et al. 2021) + fine-tuning, distillation from the dense model
(Hinton et al. 2015), data-aware factors (Wang et al. 2024; Zhang et al. 2016) -- at the same
ranks (a MACs budget) and the same total recovery epochs, several seeds each.

Every run is one ``factorch compress`` command (a subprocess; ``--jobs`` at a time, one CPU thread
each), into ``RUNS/<recipe>-s<seed>/``; a finished run is skipped and an interrupted one resumed,
so the script can be stopped and started again. Then the table: per recipe the mean and standard
deviation over the seeds of the compressed accuracy and of its difference to the dense model, the
FLOPs and parameter reductions, and the speed-ups of the first seed's model over the dense one,
all timed side by side in one comparison after the runs (interleaved, one thread).

    python benchmarks/compress_trained.py --weights runs/vgg7-fashion-dense/model.pt --runs runs/compress
        -> benchmarks/results/compress_trained_fashion-mnist/results.{csv,md}
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import factorch as fc
from common import RESULTS
from factorch.measure.latency import Profiler, compare
from factorch.measure.results import environment, markdown_table, write_csv, write_markdown

# name -> compress arguments (the recovery epochs are added: --finetune-epochs, --admm-epochs)
RECIPES = {
    "tucker2 direct": ["--method", "tucker2", "--calibration-batches", "0"],
    "tucker2 data-aware": ["--method", "tucker2", "--calibration-batches", "8"],
    "tucker2 admm": ["--method", "tucker2", "--calibration-batches", "0", "ADMM"],
    "tucker2 direct + distill": ["--method", "tucker2", "--calibration-batches", "0", "--distill"],
    "tucker2 data-aware + distill": ["--method", "tucker2", "--calibration-batches", "8", "--distill"],
    "tt direct": ["--method", "tt", "--calibration-batches", "0"],
    "tt admm": ["--method", "tt", "--calibration-batches", "0", "ADMM"],
}


def command(recipe: str, seed: int, args: argparse.Namespace, out: Path) -> list[str]:
    extra = RECIPES[recipe]
    admm = "ADMM" in extra
    phases = (["--admm-epochs", str(args.admm_epochs), "--admm-rho", str(args.admm_rho),
               "--finetune-epochs", str(args.epochs - args.admm_epochs)] if admm
              else ["--finetune-epochs", str(args.epochs)])
    return [sys.executable, "-m", "factorch", "compress", "--model", args.model, "--weights", args.weights,
            "--dataset", args.dataset, "--rank", args.rank, "--lr", str(args.lr), "--seed", str(seed),
            "--device", "cpu", *[a for a in extra if a != "ADMM"], *phases, "--out", str(out)]


def run_one(recipe: str, seed: int, args: argparse.Namespace) -> Path:
    out = Path(args.runs) / f"{recipe.replace(' + ', '+').replace(' ', '-')}-s{seed}"
    if (out / "results.csv").exists():
        return out
    cmd = command(recipe, seed, args, out) + (["--resume"] if (out / "checkpoint.pt").exists() else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(Path(args.runs) / f"{out.name}.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="the trained dense model (factorch checkpoint)")
    p.add_argument("--model", default="vgg7")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--rank", default="budget:macs=0.39",
                   help="the target of every recipe (default: 0.39 of the governed layers' MACs, so that with the "
                        "first conv and the classifier dense the whole vgg7 keeps under 40%%: 60%% fewer MACs)")
    p.add_argument("--epochs", type=int, default=4, help="recovery epochs of every recipe (default 4)")
    p.add_argument("--admm-epochs", type=int, default=2, help="of which ADMM in the ADMM recipes (default 2)")
    p.add_argument("--admm-rho", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one CPU thread each (default 2)")
    p.add_argument("--runs", required=True, help="where the runs go (not committed)")
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma list of recipes")
    args = p.parse_args()
    recipes = [r.strip() for r in args.recipes.split(",")]
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    jobs = [(r, s) for s in range(args.seeds) for r in recipes]
    with ThreadPoolExecutor(args.jobs) as pool:
        dirs = dict(zip(jobs, pool.map(lambda job: run_one(*job, args), jobs)))
    table(args, recipes, dirs)


def table(args: argparse.Namespace, recipes: list[str], dirs: dict) -> None:
    """Mean +- std per recipe, the speed-ups timed together, the files."""
    runs = {job: next(csv.DictReader((d / "results.csv").open())) for job, d in dirs.items()}
    dense_acc = float(runs[jobs_of(recipes[0], dirs)[0]]["dense_acc"])
    torch.set_num_threads(1)
    data = fc.data.info(args.dataset)
    shape = (data.in_channels, *fc.data.load(args.dataset, train=False)[0][0].shape[1:])
    dense = fc.load(args.weights)
    models = {r: fc.load(dirs[(r, 0)] / "model.pt") for r in recipes}
    timing = Profiler(warmup=5, runs=30, threads=1)
    infer = compare({"dense": dense, **models}, shape, Profiler(batch=1, warmup=5, runs=30, threads=1))
    step = compare({"dense": dense, **models}, shape, Profiler(batch=128, backward=True, warmup=3, runs=10, threads=1))
    rows = []
    for r in recipes:
        got = [runs[job] for job in jobs_of(r, dirs)]
        accs = [100 * float(g["acc"]) for g in got]
        first = got[0]
        rows.append({"recipe": r, "seeds": len(got), "acc_mean": statistics.mean(accs),
                     "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "diff_mean": statistics.mean(accs) - 100 * dense_acc,
                     "accs": " ".join(f"{a:.2f}" for a in accs),
                     "flops_reduction": float(first["flops_reduction"]), "params_reduction": float(first["params_reduction"]),
                     "speedup_inference": infer["dense"].forward / infer[r].forward,
                     "speedup_training": step["dense"].forward_backward / step[r].forward_backward})
    out = RESULTS / f"compress_trained_{args.dataset}"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", rows, digits=None)
    cells = [[r["recipe"], f"{r['acc_mean']:.2f} +- {r['acc_std']:.2f}", f"{r['diff_mean']:+.2f}", r["accs"],
              f"{100 * r['flops_reduction']:.1f}%", f"{100 * r['params_reduction']:.1f}%",
              f"{r['speedup_inference']:.2f}x", f"{r['speedup_training']:.2f}x"] for r in rows]
    table_md = markdown_table(["Recipe", "Accuracy % (mean +- std)", "vs dense (points)", "Per seed",
                               "FLOPs reduction", "Params reduction", "Speed-up inference (batch 1)",
                               "Speed-up training step (batch 128)"], cells)
    write_markdown(out / "results.md", f"{args.model} on {args.dataset}: compressing the trained model",
                   environment("cpu", threads=1), table_md, extra=[
                       f"dense model: {args.weights}, test accuracy {100 * dense_acc:.2f}%",
                       f"every recipe: --rank {args.rank}, {args.epochs} recovery epochs (ADMM recipes: "
                       f"{args.admm_epochs} ADMM with rho {args.admm_rho}, then {args.epochs - args.admm_epochs} "
                       f"fine-tuning), lr {args.lr} (x0.1 at 50% and 75%), batch 128, seeds 0-{args.seeds - 1}",
                       f"speed-ups: the seed-0 model of each recipe and the dense model timed in one interleaved "
                       f"comparison after every run ({timing.warmup} warm-up calls, median of 30 (inference) / 10 "
                       f"(training step) calls, 1 CPU thread)"])
    print((out / "results.md").read_text())


def jobs_of(recipe: str, dirs: dict) -> list:
    return sorted((job for job in dirs if job[0] == recipe), key=lambda job: job[1])


if __name__ == "__main__":
    main()
