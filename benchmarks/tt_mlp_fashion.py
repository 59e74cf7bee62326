"""Novikov et al. 2015's MNIST experiment on Fashion-MNIST: a TT hidden layer against a matrix-rank layer.

Novikov et al. (NeurIPS 2015, section 6.1) train an MLP whose 1024x1024 layer is a TT-matrix and
compare it with the same layer restricted to a low matrix rank at a similar number of parameters:
at equal compression the TT-layer keeps more accuracy. Here, trained from scratch on
Fashion-MNIST (60k/10k, 28x28), with one architecture

    784 -> Linear(784, 1024) -> ReLU -> HIDDEN (1024 -> 1024) -> ReLU -> Linear(1024, 10)

where HIDDEN is dense, ``TTLinear`` with TT-ranks 1, 2, 4, 8 (modes 4x8x8x4 -> 4x8x8x4, the
balanced d = 4 shape of their experiment) or ``SVDLinear`` with the matrix rank R whose
``2048 R`` parameters come closest to the TT layer's (at least 1). The 784 -> 1024 input layer stays
dense in every model, so the hidden layer is the only difference (Novikov et al. also tensorize the
input layer after padding the image to 32x32; we keep it dense to isolate the comparison). Both
factorized layers start with the dense layer's output variance (``TTLinear``'s init; the SVD
layer's second factor is scaled by sqrt 3 to match ``Var W_ij = 1/(3N)``).

Training: Adam (lr 1e-3), batch 128, ``--epochs`` epochs, the same seed and data order for
every model; test accuracy after the last epoch, with ``factorch.training.train_epoch`` and
``evaluate``.

    python benchmarks/tt_mlp_fashion.py [--epochs 3] [--data-dir DIR] [--subset N]
"""
from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import factorch as fc
import factorch.data  # noqa: F401  (a subpackage: not imported by `import factorch`)
import factorch.progress  # noqa: F401
from factorch.measure.results import environment
from factorch.training import evaluate, train_epoch
from common import RESULTS, write_results

SHAPE = (4, 8, 8, 4)
TT_RANKS = (1, 2, 4, 8)


def hidden_layer(kind: str, rank: int) -> nn.Module:
    if kind == "dense":
        return nn.Linear(1024, 1024)
    if kind == "TT":
        return fc.layers.TTLinear(1024, 1024, rank, SHAPE, SHAPE)
    layer = fc.layers.SVDLinear(1024, 1024, rank)
    with torch.no_grad():  # W = A B with Var A = 1/(3R), Var B = 1/(3N): scale A so Var W = 1/(3N)
        layer.last.weight.mul_(math.sqrt(3.0))
    return layer


def mlp(hidden: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), hidden, nn.ReLU(), nn.Linear(1024, 10))


def tensors(split: str, root, subset) -> TensorDataset:
    ds = fc.data.load("fashion-mnist", root=root, train=split == "train", subset=subset)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return TensorDataset(torch.stack(xs), torch.as_tensor(ys))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory (default: the Debian package's)")
    p.add_argument("--subset", type=int, default=None, help="train on N examples (quick runs)")
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    train, test = tensors("train", args.data_dir, args.subset), tensors("test", args.data_dir, None)
    test_loader = DataLoader(test, batch_size=1000)
    variants = [("dense", 0)] + [("TT", r) for r in TT_RANKS]
    tt_params = {r: sum(p.numel() for p in hidden_layer("TT", r).parameters()) - 1024 for r in TT_RANKS}
    variants += [("matrix rank", max(1, round(tt_params[r] / 2048))) for r in TT_RANKS]
    variants = list(dict.fromkeys(variants))  # the same matrix rank twice is trained once
    rows = []
    for kind, rank in fc.progress.track(variants, desc="models"):
        torch.manual_seed(0)
        model = mlp(hidden_layer(kind, rank))
        weights = sum(p.numel() for p in model[3].parameters()) - 1024  # the hidden layer, bias excluded
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(1)  # the same data order for every model
        loader = DataLoader(train, batch_size=args.batch, shuffle=True, generator=gen)
        seconds = 0.0
        for _ in range(args.epochs):
            seconds += train_epoch(model, loader, opt)["seconds"]
        acc = evaluate(model, test_loader)
        rows.append({"hidden": kind, "rank": rank or "-", "hidden_weights": weights,
                     "compression": round(1024 * 1024 / weights, 1), "test_acc": round(acc, 4),
                     "train_s": round(seconds, 1)})
        print(rows[-1])
    env = environment("cpu")
    notes = [f"{args.epochs} epochs, Adam lr 1e-3, batch {args.batch}, seed 0, "
             f"{len(train)} training / {len(test)} test images; loop: factorch.training.train_epoch/evaluate.",
             "compression = 1024*1024 / weights of the hidden layer (bias excluded); the rest of the MLP "
             "(784x1024 + 1024x10 dense) is the same in every row. One run per row (no error bars).",
             "Why TT-rank 1 can match the dense layer where matrix rank 1 cannot: a TT-rank-1 TT-matrix is a "
             "Kronecker product of d small matrices (here 4x4, 8x8, 8x8, 4x4), whose matrix rank can be "
             "the full 1024; a matrix-rank-R layer passes everything through R numbers. TT-ranks 1 and 2 "
             "have fewer weights than the smallest matrix-rank layer (2048), so both face matrix rank 1."]
    stem = "tt_mlp_fashion"
    for path in write_results(stem, rows, env, notes):
        print(f"wrote {path}")
    plot(rows, RESULTS / f"{stem}.png")


def plot(rows: list[dict], path) -> None:
    import matplotlib.ticker

    from factorch.measure.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, style in (("TT", "s-"), ("matrix rank", "o--")):
        pts = [(r["compression"], r["test_acc"], r["rank"]) for r in rows if r["hidden"] == kind]
        ax.plot([c for c, _, _ in pts], [a for _, a, _ in pts], style, label=f"{kind} layer")
        for c, a, rank in pts:
            ax.annotate(f"r={rank}", (c, a), textcoords="offset points", xytext=(4, -10), fontsize=8)
    dense = next(r["test_acc"] for r in rows if r["hidden"] == "dense")
    ax.axhline(dense, color="k", lw=1, ls=":", label="dense layer")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("compression of the 1024x1024 layer (x)")
    ax.set_ylabel("Fashion-MNIST test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    print(f"wrote {save_figure(fig, path)}")


if __name__ == "__main__":
    main()
