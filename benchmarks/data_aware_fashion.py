"""Data-aware (calibration) vs weight-only decomposition of trained models on Fashion-MNIST.

Two models are trained here (seeded): ``vgg7`` (1-channel input) and the LeNet-300-100 ``mlp``.
Each is decomposed whole at three MAC budgets, ``fc.Budget(macs=0.5 / 0.3 / 0.15)`` over the
layers it governs (vgg7: Tucker-2 for every 3x3 conv but the first, which has one input channel
and stays dense, and SVD for the classifier; mlp: SVD for all three layers), in these variants:

* ``weight-only``: ranks from the weights' spectra, factors fitted to the weights;
* ``data-aware``: ``fc.Calibration(batches, sequential=False)``: ranks from the whitened spectra,
  data-aware factors fitted to the dense model's inputs, the held-out safety rule
  (``factorch.calibration.safety``);
* ``data-aware sequential``: as ``data-aware``, each layer fitted to the inputs the already
  decomposed layers produce (``calibration=batches``: the default);

and two diagnostics that separate the ranks' effect from the factors' (no fine-tuning):

* ``weight-only factors, data-aware ranks``: the ``data-aware`` variant's ranks, weight-only factors;
* ``data-aware factors, weight-only ranks``: the ``weight-only`` variant's ranks, data-aware factors.

For each: test accuracy right after the decomposition and (not the diagnostics) after one
fine-tuning pass over ``--ft-subset`` training images (SGD, momentum 0.9, weight decay 5e-4, lr
``--ft-lr``), the MACs kept and which factors each layer kept.
Calibration batches: ``--calibration-batches`` seeded batches of ``--batch`` training images (no
labels used); the last quarter is the safety rule's held-out part.

    python benchmarks/data_aware_fashion.py [--epochs 3] [--data-dir DIR] [--threads 2]

Trained weights are cached under runs/data_aware/ (keyed by the training settings), so a rerun
only repeats the decompositions.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import factorch as fc
import factorch.data  # noqa: F401  (a subpackage: not imported by `import factorch`)
from factorch.measure.results import environment
from factorch.training import evaluate, make_optimizer, train_epoch
from factorch.training.checkpoint import seed_everything
from common import RESULTS, write_results

LEVELS = (0.5, 0.3, 0.15)
VARIANTS = ("weight-only", "data-aware", "data-aware sequential")
DIAGNOSTICS = ("weight-only factors, data-aware ranks", "data-aware factors, weight-only ranks")
CACHE = Path(__file__).resolve().parent.parent / "runs" / "data_aware"


def tensors(train: bool, root, subset=None) -> TensorDataset:
    ds = fc.data.load("fashion-mnist", root=root, train=train, subset=subset)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return TensorDataset(torch.stack(xs), torch.as_tensor(ys))


class Batches:
    """Batches sliced straight from in-memory tensors (a DataLoader collates item by item: slow on
    a loaded CPU); reshuffled on every pass from ``generator`` when given."""

    def __init__(self, data: TensorDataset, batch: int, generator: torch.Generator | None = None) -> None:
        self.x, self.y = data.tensors
        self.batch, self.generator = batch, generator

    def __len__(self) -> int:
        return (len(self.y) + self.batch - 1) // self.batch

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=self.generator) if self.generator is not None else None
        for i in range(0, len(self.y), self.batch):
            idx = order[i:i + self.batch] if order is not None else slice(i, i + self.batch)
            yield self.x[idx], self.y[idx]


def trained(name: str, train: TensorDataset, args) -> nn.Module:
    """``name`` trained for ``args.epochs`` epochs (SGD, lr ``args.lr`` then x0.1 for the last epoch), cached."""
    path = CACHE / f"{name}_e{args.epochs}_lr{args.lr:g}_b{args.batch}_s{args.seed}_n{len(train)}.pt"
    model = fc.models.create(name, 10, 1)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model
    seed_everything(args.seed)
    optimizer = make_optimizer(model, args.lr)
    loader = Batches(train, args.batch, torch.Generator().manual_seed(args.seed))
    for epoch in range(args.epochs):
        if epoch == args.epochs - 1 and args.epochs > 1:
            for group in optimizer.param_groups:
                group["lr"] = args.lr * 0.1
        stats = train_epoch(model, loader, optimizer, desc=f"{name} epoch {epoch + 1}")
        print(f"{name} epoch {epoch + 1}: loss {stats['loss']:.4f} train acc {stats['acc']:.4f} "
              f"({stats['seconds']:.0f} s)", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def methods(name: str, level: float) -> dict:
    """The whole-model config at one MAC budget: one ``Budget`` object shared by both methods."""
    budget = fc.Budget(macs=level)
    if name == "mlp":
        return {"_default": fc.SVD(budget)}
    return {"features.0": None, "_default": [fc.Tucker2(budget), fc.SVD(budget)]}


def at_ranks(report: fc.Report) -> dict:
    """Exactly the ranks of ``report``'s decomposed layers, per layer."""
    return {r.name: fc.Method.from_name(r.method, r.ranks if len(r.ranks) > 1 else r.ranks[0])
            for r in report.decomposed} | {"_default": None}


def run_variant(name, dense, variant, level, calib, example, test_loader, ft_loader, args, reports):
    model = copy.deepcopy(dense)
    config = methods(name, level)
    if variant in DIAGNOSTICS:  # the other variant's ranks, exactly
        config = at_ranks(reports["data-aware" if variant.endswith("data-aware ranks") else "weight-only"])
    aware = variant.startswith("data-aware")
    calibration = fc.Calibration(calib, damping=args.damping, sequential=variant != "data-aware") \
        if aware else None
    start = time.perf_counter()
    report = fc.decompose_(model, config, example_input=example, calibration=calibration)
    seconds = time.perf_counter() - start
    acc = evaluate(model, test_loader)
    acc_ft = None
    if variant not in DIAGNOSTICS:
        optimizer = make_optimizer(model, args.ft_lr)
        train_epoch(model, ft_loader, optimizer, desc=f"{name} {variant} {level} fine-tune")
        acc_ft = evaluate(model, test_loader)
    counts = fc.count(model, example)
    kept = [r.factors for r in report.decomposed if r.factors]
    out_err = report.decomposed[-1].output_error if kept else None
    return report, {
        "model": name, "macs_budget": level, "variant": variant,
        "macs_kept": round(counts.macs / fc.count(dense, example).macs, 4),
        "params": counts.params, "acc": round(acc, 4), "acc_finetuned": round(acc_ft, 4) if acc_ft is not None else "",
        "layers_data_aware": kept.count("data-aware"), "layers_weight_only": kept.count("weight-only"),
        "heldout_output_error": round(out_err, 4) if out_err is not None else "",
        "ranks": " ".join("x".join(map(str, r.ranks)) for r in report.decomposed),
        "decompose_s": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="training epochs of each model (default 3)")
    p.add_argument("--lr", type=float, default=0.05, help="training lr (SGD momentum 0.9; default 0.05)")
    p.add_argument("--ft-lr", type=float, default=0.001, help="fine-tuning lr (default 0.001, as factorch sweep's)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--damping", type=float, default=fc.Calibration([torch.zeros(2, 1)]).damping)
    p.add_argument("--models", default="vgg7,mlp")
    p.add_argument("--train-subset", type=int, default=None, help="train on N images (default all)")
    p.add_argument("--ft-subset", type=int, default=10000, help="fine-tune on N seeded training images (default 10000)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory (default: the Debian package's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stem", default="data_aware_fashion-mnist")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train, test = tensors(True, args.data_dir, args.train_subset), tensors(False, args.data_dir)
    test_loader = Batches(test, 500)
    g = torch.Generator().manual_seed(args.seed + 1)
    picks = torch.randperm(len(train), generator=g)[:args.calibration_batches * args.batch]
    calib = list(train.tensors[0][picks].split(args.batch))  # inputs only: no labels
    example = train.tensors[0][:1]
    keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed + 3))[:args.ft_subset]
    ft_set = TensorDataset(*(t[keep] for t in train.tensors))
    rows = []
    for name in args.models.split(","):
        dense = trained(name, train, args).eval()
        base = evaluate(dense, test_loader)
        rows.append({"model": name, "macs_budget": 1.0, "variant": "dense", "macs_kept": 1.0,
                     "params": sum(p.numel() for p in dense.parameters()), "acc": round(base, 4),
                     "acc_finetuned": "", "layers_data_aware": "", "layers_weight_only": "",
                     "heldout_output_error": "", "ranks": "", "decompose_s": ""})
        print(rows[-1], flush=True)
        for level in LEVELS:
            reports = {}
            for variant in VARIANTS + DIAGNOSTICS:
                seed_everything(args.seed)  # the same fine-tuning data order for every variant
                ft_loader = Batches(ft_set, args.batch, torch.Generator().manual_seed(args.seed + 2))
                reports[variant], row = run_variant(name, dense, variant, level, calib, example, test_loader,
                                                    ft_loader, args, reports)
                row["drop"] = round(base - row["acc"], 4)
                row["drop_finetuned"] = round(base - row["acc_finetuned"], 4) if row["acc_finetuned"] != "" else ""
                rows.append(row)
                print(row, flush=True)
    for r in rows:
        r.setdefault("drop", "")
        r.setdefault("drop_finetuned", "")
    env = environment("cpu")
    minutes = (time.perf_counter() - start) / 60
    notes = [
        f"Training: {args.epochs} epochs, SGD lr {args.lr:g} (x0.1 for the last epoch), momentum 0.9, weight decay "
        f"5e-4, batch {args.batch}, seed {args.seed}, {len(train)} training / {len(test)} test images. "
        f"Fine-tuning: one pass over {len(ft_set)} seeded training images, SGD lr {args.ft_lr:g}, momentum 0.9, "
        "weight decay 5e-4, the same data order for every variant (the diagnostics are not fine-tuned).",
        f"Calibration: {args.calibration_batches} seeded batches of {args.batch} training images (inputs only); the "
        f"last quarter held out for the safety rule; damping {args.damping:g}.",
        "macs_budget: fc.Budget(macs=...) over the governed layers; macs_kept: MACs of the whole model (the "
        "dense first conv included) over the dense model's. drop: dense accuracy minus this accuracy.",
        "heldout_output_error: relative error of the logits on the held-out calibration batches, whole model.",
        f"Whole run: {minutes:.1f} min (training included).",
    ]
    summary_section = "\n".join(["## Summary (computed from the table)", "", *summary(rows)])
    for path in write_results(args.stem, rows, env, notes, sections=[summary_section]):
        print(f"wrote {path}")
    plot(rows, RESULTS / f"{args.stem}.png")


def summary(rows: list[dict]) -> list[str]:
    """The goal check: the accuracy drop right after decomposition at the most aggressive level,
    and every level where a data-aware variant is below weight-only (right after, and fine-tuned)."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        at = lambda level, variant: next(r for r in mine if r["macs_budget"] == level and r["variant"] == variant)  # noqa: E731
        level = min(LEVELS)
        plain = at(level, "weight-only")["drop"]
        drops = ", ".join(f"{v} {100 * at(level, v)['drop']:.1f} points ({plain / max(at(level, v)['drop'], 1e-4):.1f}x "
                          f"less)" for v in VARIANTS[1:])
        lines.append(f"- {name}, macs={level:g}: accuracy drop right after decomposition: weight-only "
                     f"{100 * plain:.1f} points; {drops}.")
        below = [f"{v} at macs={lv:g} {key.replace('acc_finetuned', 'fine-tuned').replace('acc', 'right after')} "
                 f"({100 * at(lv, v)[key]:.2f}% < {100 * at(lv, 'weight-only')[key]:.2f}%)"
                 for lv in LEVELS for v in VARIANTS[1:] for key in ("acc", "acc_finetuned")
                 if at(lv, v)[key] < at(lv, "weight-only")[key]]
        lines.append(f"- {name}: data-aware below weight-only: " + ("; ".join(below) if below else "never") + ".")
        ones = {v: [lv for lv in LEVELS for rk in at(lv, v)["ranks"].split() if "1" in rk.split("x")] for v in
                ("weight-only", "data-aware")}
        lines.append(f"- {name}: layers given a rank of 1 by the budget: weight-only spectra {len(ones['weight-only'])} "
                     f"(over the three levels), whitened spectra {len(ones['data-aware'])}.")
    return lines


def plot(rows: list[dict], path) -> None:
    from factorch.measure.plots import pyplot, save_figure

    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 7), squeeze=False)
    for j, name in enumerate(models):
        dense = next(r["acc"] for r in rows if r["model"] == name and r["variant"] == "dense")
        for i, key in enumerate(("acc", "acc_finetuned")):
            ax = axes[i][j]
            for variant, style in zip(VARIANTS + DIAGNOSTICS, ("o-", "s-", "d-", "x:", "+:")):
                pts = [(r["macs_kept"], r[key]) for r in rows if r["model"] == name and r["variant"] == variant
                       and r[key] != ""]
                if not pts:
                    continue
                ax.plot([m for m, _ in pts], [100 * a for _, a in pts], style, label=variant)
            ax.axhline(100 * dense, color="gray", lw=0.8, ls=":", label="dense")
            ax.set_xlabel("MACs kept (whole model)")
            ax.set_ylabel("test accuracy %")
            ax.set_title(f"{name}: {'right after decomposition' if i == 0 else 'after one fine-tuning pass'}")
            ax.legend(fontsize=8)
    save_figure(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
