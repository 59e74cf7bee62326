"""Data-aware (calibration) vs weight-only decomposition of trained models on Fashion-MNIST: is
the default (``calibration=batches``) ever below weight-only factors?

Three models are trained here (seeded): ``vgg7`` (1-channel input), ``lenet5`` and the
LeNet-300-100 ``mlp``. Each is decomposed at every point of a grid of ranks:

* three MAC budgets, ``fc.Budget(macs=0.5 / 0.3 / 0.15)`` over the layers it governs (vgg7 and
  lenet5: Tucker-2 for every conv but the first, which has one input channel and stays dense,
  and SVD for the Linears; mlp: SVD for all three layers);
* two fixed aggressive settings: vgg7: Tucker-2 at ranks (16, 16) and at (4, 4) on every conv
  but the first (the classifier dense); lenet5: Tucker-2 (4, 4) on ``conv2``, alone and with SVD
  8 on ``fc1`` and ``fc2``; mlp: SVD 8 and SVD 4 on both hidden layers.

At each point, with no fine-tuning:

* ``weight_only``: the same config without calibration (ranks from the weights' spectra);
* ``default``: ``calibration=batches`` (sequential, ranks from the whitened spectra, the held-out
  safety rule of ``factorch.calibration.safety``: top-1 agreement with the dense model, then KL);
* ``weight_only_default_ranks``: weight-only factors at exactly the default's ranks: the model
  the rule's whole-model check compares against (the same as ``weight_only`` at fixed ranks);
* ``output_error_rule``: ``fc.Calibration(batches, outputs="values")``: the default, but the
  rule judging by the relative logit error (the rule before it judged predictions);
* ``plain``: ``fc.Calibration(batches, sequential=False)``.

Per model: test accuracy; against the dense model, on the held-out calibration batches (what the
rule sees) the top-1 agreement and the mean ``KL(p_dense || p)``, and on the test split the
top-1 agreement. Calibration batches: ``--calibration-batches`` seeded batches of ``--batch``
training images (no labels used); the last quarter is the rule's held-out part.

    python benchmarks/data_aware_fashion.py [--epochs 2] [--train-subset 20000] [--threads 1]

Trained weights are cached under runs/data_aware/ (keyed by the training settings), so a rerun
only repeats the decompositions.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import factorch as fc
import factorch.data  # noqa: F401  (a subpackage: not imported by `import factorch`)
from factorch.calibration.safety import Reference
from factorch.measure.results import environment
from factorch.training import make_optimizer, train_epoch
from factorch.training.checkpoint import seed_everything
from common import RESULTS, write_results

BUDGETS = (0.5, 0.3, 0.15)
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


def budget_config(name: str, level: float) -> dict:
    """The whole-model config at one MAC budget: one ``Budget`` object shared by both methods."""
    budget = fc.Budget(macs=level)
    if name == "mlp":
        return {"_default": fc.SVD(budget)}
    first = {"vgg7": "features.0", "lenet5": "conv1"}[name]  # one input channel: nothing to factor
    return {first: None, "_default": [fc.Tucker2(budget), fc.SVD(budget)]}


def fixed_configs(name: str) -> list[tuple[str, dict]]:
    """The fixed ranks of model ``name``, aggressive and more so: (label, config) each."""
    def convs(ranks: tuple[int, int]) -> dict:
        return {"features.0": None, "classifier": None, "_default": fc.Tucker2(ranks)}

    return {
        "vgg7": [("tucker2 16x16 convs", convs((16, 16))), ("tucker2 4x4 convs", convs((4, 4)))],
        "lenet5": [("tucker2 4x4 conv2", {"conv2": fc.Tucker2((4, 4)), "_default": None}),
                   ("tucker2 4x4 conv2, svd 8 fc1-2",
                    {"conv2": fc.Tucker2((4, 4)), "fc1": fc.SVD(8), "fc2": fc.SVD(8), "_default": None})],
        "mlp": [("svd 8 hidden", {"hidden.0": fc.SVD(8), "hidden.1": fc.SVD(8), "_default": None}),
                ("svd 4 hidden", {"hidden.0": fc.SVD(4), "hidden.1": fc.SVD(4), "_default": None})],
    }[name]


def grid(name: str) -> list[tuple[str, Callable[[], dict]]]:
    """Every grid point of model ``name``: (label, a function giving a fresh config)."""
    fixed = [(label, lambda i=i: fixed_configs(name)[i][1]) for i, (label, _) in enumerate(fixed_configs(name))]
    return [(f"macs={level:g}", lambda level=level: budget_config(name, level)) for level in BUDGETS] + fixed


def at_ranks(report: fc.Report) -> dict:
    """Exactly the ranks of ``report``'s decomposed layers, per layer."""
    return {r.name: fc.Method.from_name(r.method, r.ranks if len(r.ranks) > 1 else r.ranks[0])
            for r in report.decomposed} | {"_default": None}


def logits(model: nn.Module, x: Tensor) -> Tensor:
    """``model``'s outputs on ``x`` (eval mode, no gradients, chunks of 500), float64."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(chunk) for chunk in x.split(500)]).double()


class Judge:
    """A decomposed model against the dense one: test accuracy, and (``Reference.judge``, as the
    safety rule judges) top-1 agreement and mean ``KL(p_dense || p)`` on the held-out
    calibration batches and on the test split."""

    def __init__(self, dense: nn.Module, test: TensorDataset, held: list[Tensor]) -> None:
        self.test_x, self.test_y = test.tensors
        self.held = torch.cat(held)
        self.on_test = Reference.of([logits(dense, self.test_x)], "logits")
        self.on_held = Reference.of([logits(dense, self.held)], "logits")
        self.dense_acc = self.accuracy(self.on_test.outputs[0])

    def accuracy(self, out: Tensor) -> float:
        return float((out.argmax(1) == self.test_y).double().mean())

    def __call__(self, model: nn.Module) -> dict:
        out = logits(model, self.test_x)
        held, test = self.on_held.judge([logits(model, self.held)]), self.on_test.judge([out])
        return {"acc": self.accuracy(out), "agreement": held.agreement, "kl": held.kl,
                "test_agreement": test.agreement}


def decomposed(dense: nn.Module, config: dict, example: Tensor,
               calibration: Optional[fc.Calibration]) -> tuple[nn.Module, fc.Report, float]:
    """A decomposed copy of ``dense``, its report and the seconds ``decompose_`` took."""
    model = copy.deepcopy(dense)
    start = time.perf_counter()
    report = fc.decompose_(model, config, example_input=example, calibration=calibration)
    return model, report, time.perf_counter() - start


def point(name: str, label: str, make: Callable[[], dict], dense: nn.Module, calib: list[Tensor],
          example: Tensor, judge: Judge, args) -> dict:
    """One grid point's row (see the module docstring)."""
    kinds = {"default": fc.Calibration(calib, damping=args.damping),
             "output_error_rule": fc.Calibration(calib, damping=args.damping, outputs="values"),
             "plain": fc.Calibration(calib, damping=args.damping, sequential=False)}
    plain, plain_report, _ = decomposed(dense, make(), example, None)
    default, report, seconds = decomposed(dense, make(), example, kinds["default"])
    same_ranks, same_report, _ = decomposed(dense, at_ranks(report), example, None)
    ranks = lambda r: " ".join("x".join(map(str, row.ranks)) for row in r.decomposed)  # noqa: E731
    kept = [row.factors for row in report.decomposed]
    wo, de = judge(plain), judge(default)
    wo_same = wo if ranks(same_report) == ranks(plain_report) else judge(same_ranks)
    old, old_report, _ = decomposed(dense, make(), example, kinds["output_error_rule"])
    acc_old = de["acc"] if [row.factors for row in old_report.decomposed] == kept else judge(old)["acc"]
    acc_plain = judge(decomposed(dense, make(), example, kinds["plain"])[0])["acc"]
    yes = lambda a, b: "yes" if a >= b else "no"  # noqa: E731
    return {
        "model": name, "setting": label, "ranks_weight_only": ranks(plain_report), "ranks_default": ranks(report),
        "macs_kept": round(fc.count(default, example).macs / fc.count(dense, example).macs, 4),
        "acc_dense": round(judge.dense_acc, 4), "acc_weight_only": round(wo["acc"], 4), "acc_default": round(de["acc"], 4),
        "default_ge_weight_only": yes(de["acc"], wo["acc"]),
        "agreement_weight_only": round(wo["agreement"], 4), "agreement_default": round(de["agreement"], 4),
        "kl_weight_only": float(f"{wo['kl']:.3g}"), "kl_default": float(f"{de['kl']:.3g}"),
        "test_agreement_weight_only": round(wo["test_agreement"], 4),
        "test_agreement_default": round(de["test_agreement"], 4),
        "acc_weight_only_default_ranks": round(wo_same["acc"], 4),
        "agreement_weight_only_default_ranks": round(wo_same["agreement"], 4),
        "default_ge_weight_only_default_ranks": yes(de["acc"], wo_same["acc"]),
        "acc_output_error_rule": round(acc_old, 4), "acc_plain": round(acc_plain, 4),
        "layers_data_aware": f"{kept.count('data-aware')}/{len(kept)}", "decompose_s": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="training epochs of each model (default 2)")
    p.add_argument("--lr", type=float, default=0.05, help="training lr (SGD momentum 0.9; default 0.05)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--damping", type=float, default=fc.Calibration([torch.zeros(2, 1)]).damping)
    p.add_argument("--models", default="vgg7,lenet5,mlp")
    p.add_argument("--train-subset", type=int, default=20000, help="train on N seeded images (default 20000)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory (default: the loader's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stem", default="data_aware_fashion-mnist")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train, test = tensors(True, args.data_dir, args.train_subset), tensors(False, args.data_dir)
    g = torch.Generator().manual_seed(args.seed + 1)
    picks = torch.randperm(len(train), generator=g)[:args.calibration_batches * args.batch]
    calib = list(train.tensors[0][picks].split(args.batch))  # inputs only: no labels
    _, held = fc.Calibration(calib).split()
    example = train.tensors[0][:1]
    rows = []
    for name in args.models.split(","):
        dense = trained(name, train, args).eval()
        judge = Judge(dense, test, held)
        for label, make in grid(name):
            rows.append(point(name, label, make, dense, calib, example, judge, args))
            print(rows[-1], flush=True)
    env = environment("cpu")
    minutes = (time.perf_counter() - start) / 60
    notes = [
        f"Training: {args.epochs} epochs, SGD lr {args.lr:g} (x0.1 for the last epoch), momentum 0.9, weight decay "
        f"5e-4, batch {args.batch}, seed {args.seed}, {len(train)} seeded training images (a subset, to keep the "
        f"run short on a shared CPU) / {len(test)} test images. No fine-tuning: accuracy right after decomposing.",
        f"Calibration: {args.calibration_batches} seeded batches of {args.batch} training images (inputs only); "
        f"the last quarter ({sum(len(h) for h in held)} images) held out for the safety rule; damping "
        f"{args.damping:g}.",
        "acc_*: test accuracy. agreement_* / kl_*: on the held-out calibration batches, the share of images whose "
        "top-1 class is the dense model's and the mean KL(p_dense || p) of the softmax (what the safety rule "
        "compares); test_agreement_*: the top-1 agreement on the test split. weight_only: the same config without "
        "calibration; default: calibration=batches; weight_only_default_ranks: weight-only factors at the default's "
        "ranks (at fixed ranks, weight_only itself); output_error_rule: the default judged by the relative logit "
        "error (Calibration(outputs='values'): the rule before it judged predictions); plain: "
        "Calibration(sequential=False). macs_kept: the default model's MACs over the dense model's (whole model).",
        "default_ge_*: 'yes' where the default's test accuracy is at least that model's.",
        f"Whole run: {minutes:.1f} min (training included), one thread; the load average in the header is the "
        "whole machine's at the end (shared with other jobs).",
    ]
    summary_section = "\n".join(["## Summary (computed from the table)", "", *summary(rows)])
    for path in write_results(args.stem, rows, env, notes, sections=[summary_section]):
        print(f"wrote {path}")
    plot(rows, RESULTS / f"{args.stem}.png")


def summary(rows: list[dict]) -> list[str]:
    """The goal check: at how many grid points the default is at least weight-only, the worst case,
    and the same for the output-error rule."""
    lines = []
    for key, what in (("acc_weight_only", "weight-only factors (same config, no calibration)"),
                      ("acc_weight_only_default_ranks", "weight-only factors at the default's ranks")):
        for mine, who in (("acc_default", "default (agreement, then KL)"),
                          ("acc_output_error_rule", "output-error rule")):
            diffs = [(r[mine] - r[key], r) for r in rows]
            worst, at = min(diffs, key=lambda d: d[0])
            below = [f"{r['model']} {r['setting']} ({100 * d:+.2f} points)" for d, r in diffs if d < 0]
            lines.append(f"- {who} vs {what}: at least as accurate at {len(rows) - len(below)} of {len(rows)} "
                         f"points; worst {100 * worst:+.2f} points ({at['model']} {at['setting']}); below at: "
                         + ("; ".join(below) if below else "none") + ".")
    return lines


def plot(rows: list[dict], path) -> None:
    """Default vs weight-only test accuracy, one point per grid point (above the diagonal: better)."""
    from factorch.measure.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, key, title in ((axes[0], "acc_weight_only", "weight-only factors, same config"),
                           (axes[1], "acc_weight_only_default_ranks", "weight-only factors at the default's ranks")):
        for name, marker in zip(dict.fromkeys(r["model"] for r in rows), "osd^v"):
            mine = [r for r in rows if r["model"] == name]
            ax.plot([100 * r[key] for r in mine], [100 * r["acc_default"] for r in mine], marker, ls="none",
                    label=f"{name}: default")
            ax.plot([100 * r[key] for r in mine], [100 * r["acc_output_error_rule"] for r in mine], marker, ls="none",
                    mfc="none", color="gray", label=f"{name}: output-error rule")
        lo = min(min(100 * r[k] for r in rows) for k in (key, "acc_default", "acc_output_error_rule")) - 2
        ax.plot([lo, 100], [lo, 100], color="gray", lw=0.8, ls=":")
        ax.set_xlabel(f"test accuracy %: {title}")
        ax.set_ylabel("test accuracy %: calibration=batches")
        ax.set_title(f"vs {title}")
        ax.legend(fontsize=7)
    save_figure(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
