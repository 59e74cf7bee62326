"""Tucker-3 against Tucker-2 at equal parameter counts on Fashion-MNIST (Gobieski et al. vs Kim et al.).

``vgg7``; both methods get the same ``fc.Budget(params=f)`` over the kxk convs (the first conv, one
input channel, and the classifier stay dense), for each ``f`` in ``--budgets``, and are trained

* (a) from scratch in factorized form (``fc.decompose_(..., from_scratch=True)`` before the first
  step), ``--epochs`` epochs;
* (b) decomposed after ``--decompose-at`` epochs of the dense run (HOOI on the trained kernels),
  then trained to the same total, the optimizer handed over (``rebuild_optimizer``).

The dense run itself is the baseline. Reported per run: final test accuracy, parameters, MACs per
28x28 image (``fc.count``) and the measured training step time (forward, backward and SGD step at
batch 128; every final model timed side by side, interleaved, after a warm-up; median), as a ratio
to the dense step. Also the approximation error of both methods at each budget on the trained
dense model's convs, at the decomposition epoch and at the end of the dense run, with the test
accuracy right after decomposing (no training after).

Library building blocks only (``factorch.data.load``, ``factorch.training.train_epoch``,
``evaluate``, ``make_optimizer``, ``rebuild_optimizer``), not ``factorch train``.

    python benchmarks/tucker3_fashion.py --subset 10000 --test-subset 2000 --epochs 5 --decompose-at 2
"""
from __future__ import annotations

import argparse
import copy
import math
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

import factorch as fc
from common import RESULTS, write_results
from factorch.data import load
from factorch.measure.latency import time_interleaved, wall_clock
from factorch.measure.plots import pyplot, save_figure
from factorch.measure.results import environment, markdown_table
from factorch.training import evaluate, make_optimizer, rebuild_optimizer, train_epoch

METHODS = {"tucker2": fc.Tucker2, "tucker3": fc.Tucker3}


def lr_at(epoch: int, args: argparse.Namespace) -> float:
    """Step decay: ``--lr`` until 60 % of the epochs, then a tenth."""
    return args.lr * (0.1 if epoch >= math.ceil(0.6 * args.epochs) else 1.0)


def train(model: nn.Module, opt: torch.optim.Optimizer, start: int, args, loaders, label: str) -> list[dict]:
    history = []
    for epoch in range(start, args.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, args)
        stats = train_epoch(model, loaders["train"], opt, channels_last=True, desc=label)
        acc = evaluate(model, loaders["test"], channels_last=True)
        history.append({"epoch": epoch + 1, "loss": stats["loss"], "test_acc": acc, "seconds": stats["seconds"]})
        print(f"{label}: epoch {epoch + 1}/{args.epochs} loss {stats['loss']:.4f} test {acc:.4f} "
              f"{stats['seconds']:.1f}s", flush=True)
    return history


def governed_error(dense: nn.Module, report: fc.Report) -> float:
    """sqrt(sum ||W - W_hat||^2 / sum ||W||^2) over the decomposed layers."""
    num = den = 0.0
    for r in report.decomposed:
        w2 = float(dense.get_submodule(r.name).weight.detach().double().pow(2).sum())
        num, den = num + r.error ** 2 * w2, den + w2
    return math.sqrt(num / den)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subset", type=int, default=10000, help="seeded training subset (default 10000)")
    p.add_argument("--test-subset", type=int, default=2000, help="seeded test subset (default 2000)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--decompose-at", type=int, default=2)
    p.add_argument("--budgets", default="0.05,0.2", help="parameter fractions of the kxk convs")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--step-repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    budgets = [float(b) for b in args.budgets.split(",")]
    loaders = {"train": DataLoader(load("fashion-mnist", train=True, subset=args.subset, augment=True),
                                   batch_size=args.batch, shuffle=True),
               "test": DataLoader(load("fashion-mnist", train=False, subset=args.test_subset), batch_size=512)}
    x1 = torch.zeros(1, 1, 28, 28)
    convs = lambda m: [n for n, c in m.named_modules() if isinstance(c, nn.Conv2d) and c.kernel_size != (1, 1)]  # noqa

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return fc.models.create("vgg7", 10, 1).to(memory_format=torch.channels_last)

    runs: dict[str, dict] = {}
    start = time.perf_counter()
    # the dense run, kept at the decomposition epoch
    dense = fresh()
    opt = make_optimizer(dense, args.lr)
    hist = train(dense, opt, 0, argparse.Namespace(**{**vars(args), "epochs": args.decompose_at}), loaders, "dense")
    at_k = copy.deepcopy(dense)
    opt_k = copy.deepcopy(opt.state_dict())
    hist += train(dense, opt, args.decompose_at, args, loaders, "dense")
    runs["dense"] = dict(model=dense, method="dense", budget="", regime="dense", history=hist, opt=opt)

    errors = []
    for f in budgets:
        for name, method in METHODS.items():
            budget = fc.Budget(params=f)
            # (b) decomposed at epoch k of the dense run
            model = copy.deepcopy(at_k)
            old = make_optimizer(model, args.lr)
            old.load_state_dict(opt_k)
            report = fc.decompose_(model, method(budget), example_input=x1)
            acc0 = evaluate(model, loaders["test"], channels_last=True)
            errors.append(dict(trained=f"dense epoch {args.decompose_at}", method=name, budget=f,
                               achieved=report.budgets[0].fraction, rel_error=governed_error(at_k, report),
                               test_acc_after=acc0, ranks=" ".join("x".join(map(str, r.ranks)) for r in report.decomposed)))
            model = model.to(memory_format=torch.channels_last)
            new_opt = rebuild_optimizer(old, model)
            hist = train(model, new_opt, args.decompose_at, args, loaders, f"{name}@{args.decompose_at} {f}")
            runs[f"{name} dec@{args.decompose_at} {f}"] = dict(model=model, method=name, budget=f,
                                                               regime=f"decomposed at epoch {args.decompose_at}",
                                                               history=hist, opt=new_opt)
            # (a) from scratch in factorized form
            model = fresh()
            fc.decompose_(model, method(budget), example_input=x1, from_scratch=True)
            model = model.to(memory_format=torch.channels_last)
            scratch_opt = make_optimizer(model, args.lr)
            hist = train(model, scratch_opt, 0, args, loaders, f"{name} scratch {f}")
            runs[f"{name} scratch {f}"] = dict(model=model, method=name, budget=f, regime="from scratch",
                                               history=hist, opt=scratch_opt)
            # the error on the fully trained dense model's convs (no training after)
            final = copy.deepcopy(dense)
            rep = fc.decompose_(final, method(budget), example_input=x1)
            errors.append(dict(trained=f"dense epoch {args.epochs}", method=name, budget=f,
                               achieved=rep.budgets[0].fraction, rel_error=governed_error(dense, rep),
                               test_acc_after=evaluate(final, loaders["test"], channels_last=True),
                               ranks=" ".join("x".join(map(str, r.ranks)) for r in rep.decomposed)))
    train_minutes = (time.perf_counter() - start) / 60

    # training step time, every final model side by side (same batch, interleaved, median)
    xb = torch.randn(args.batch, 1, 28, 28).to(memory_format=torch.channels_last)
    yb = torch.randint(0, 10, (args.batch,))

    def stepper(run: dict):
        model, opt = run["model"], run["opt"]

        def step() -> None:
            model.train()
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    names = list(runs)
    medians = time_interleaved({n: stepper(runs[n]) for n in names}, warmup=2, runs=args.step_repeats,
                               timer=wall_clock("cpu"))
    rows = []
    for n in names:
        run = runs[n]
        counts = fc.count(run["model"], x1)
        conv_params = sum(counts.under(c)[0] for c in convs(run["model"])) if run["method"] == "dense" else None
        rows.append({"run": n, "method": run["method"], "regime": run["regime"], "budget_params": run["budget"],
                     "params": counts.params, "macs": counts.macs,
                     "test_acc": round(run["history"][-1]["test_acc"], 4),
                     "best_test_acc": round(max(h["test_acc"] for h in run["history"]), 4),
                     "step_ms": round(medians[n] * 1e3, 2), "step_vs_dense": round(medians["dense"] / medians[n], 2),
                     "train_s": round(sum(h["seconds"] for h in run["history"]), 1),
                     **({"note": f"kxk conv params {conv_params}"} if conv_params else {"note": ""})})
    for r in rows:
        print(r)
    notes = [f"Data: Fashion-MNIST, seeded subsets of {args.subset} training and {args.test_subset} test images "
             f"(factorch.data.load(..., subset=N), seed 0), standard augmentation; vgg7, SGD lr {args.lr} "
             f"(x0.1 from epoch {math.ceil(0.6 * args.epochs) + 1}), momentum 0.9, weight decay 5e-4, batch {args.batch}, "
             f"channels_last, {args.threads} thread(s); {args.epochs} epochs per run; all runs took {train_minutes:.1f} min.",
             f"Budgets: fc.Budget(params=f) over the kxk convs but the first (one input channel), the same for both "
             f"methods; step_ms: median of {args.step_repeats} interleaved training steps (forward, backward, SGD) at "
             f"batch {args.batch} after 2 warm-up steps; step_vs_dense: dense step time / the run's (> 1: faster)."]
    error_table = markdown_table(
        ["trained", "method", "budget", "achieved", "rel_error", "test_acc_after", "ranks"],
        [[e["trained"], e["method"], f"{e['budget']:g}", f"{e['achieved']:.4f}", f"{e['rel_error']:.4f}",
          f"{e['test_acc_after']:.4f}", e["ranks"]] for e in errors])
    errors_section = ("Approximation error at equal parameter count on the trained dense model's convs "
                      "(sqrt(sum ||W - W_hat||^2 / sum ||W||^2) over the decomposed convs; test accuracy right after "
                      "decomposing, no training after):\n\n" + error_table)
    write_results("tucker3_fashion-mnist", rows, environment("cpu"), notes, sections=[errors_section])
    figure(runs, rows, errors, args)


def figure(runs: dict, rows: list[dict], errors: list[dict], args: argparse.Namespace) -> None:
    plt = pyplot()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = {"tucker2": "tab:blue", "tucker3": "tab:orange", "dense": "black"}
    for n, run in runs.items():
        accs = [h["test_acc"] for h in run["history"]]
        epochs = [h["epoch"] for h in run["history"]]
        ls = "-" if run["regime"] == "from scratch" else ("--" if run["method"] != "dense" else ":")
        width = 1.0 if run["budget"] == "" else 1.0 + 8 * run["budget"]  # thicker: the larger budget
        a.plot(epochs, accs, ls, color=styles[run["method"]], linewidth=width, label=n)
    a.set(xlabel="epoch", ylabel="test accuracy", title="training (solid: from scratch, dashed: decomposed)")
    a.legend(fontsize=6)
    for r in rows:
        marker = "o" if r["regime"] == "from scratch" else ("s" if r["method"] != "dense" else "*")
        b.scatter(r["params"], r["test_acc"], color=styles[r["method"]], marker=marker, s=60)
        b.annotate(f"{r['step_vs_dense']}x", (r["params"], r["test_acc"]), fontsize=7, xytext=(4, 2),
                   textcoords="offset points")
    b.set(xscale="log", xlabel="parameters", ylabel="final test accuracy",
          title="o: from scratch, s: decomposed, *: dense; label: step speed-up")
    for e in errors:
        c.scatter(e["budget"], e["rel_error"], color=styles[e["method"]],
                  marker="o" if e["trained"].endswith(str(args.epochs)) else "^", s=60, label=f"{e['method']} {e['trained']}")
    handles, labels = c.get_legend_handles_labels()
    c.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), fontsize=7)
    c.set(xlabel="Budget(params=f)", ylabel="relative error of the convs", title="approximation error at equal params")
    save_figure(fig, RESULTS / "tucker3_fashion-mnist.png")


if __name__ == "__main__":
    main()
