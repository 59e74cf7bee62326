"""Compress a trained model in your own loop: what ``factorch compress`` does, as a few public calls.

1. train a small dense CNN on scikit-learn's bundled digits (no download) -- in practice: load yours;
2. ``fc.ADMM``: a few epochs of ADMM from the trained weights towards the target ranks (Yin et al.
   2021), then ``admm.decompose_(calibration)``: decomposed at exactly those ranks, with data-aware
   factors fitted on a few training batches (``--direct``: ``fc.decompose_(..., calibration=)`` at
   once instead);
3. fine-tune the compressed model with ``fc.distillation_loss`` against the dense one (Hinton et
   al. 2015) added to the cross-entropy;
4. print what it bought: accuracy before and after, MACs and parameters (``fc.count``).

Run: ``python examples/compress_trained.py [--direct] [--epochs 6]`` (about a minute on one thread).
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import factorch as fc
from factorch import data
from factorch.training import evaluate, make_optimizer, train_epoch


def loaders(batch: int = 64) -> tuple[DataLoader, DataLoader]:
    train = data.load("digits", train=True, augment=True)
    test = data.load("digits", train=False)
    return (DataLoader(train, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0)),
            DataLoader(test, batch_size=256))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6, help="dense training epochs (default 6)")
    p.add_argument("--admm-epochs", type=int, default=2, help="ADMM epochs (default 2)")
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    p.add_argument("--direct", action="store_true", help="decompose at once (no ADMM)")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train, test = loaders()
    x = torch.zeros(1, 1, 16, 16)

    # 1. the trained dense model (load your own instead)
    dense = fc.models.create("vgg-small", num_classes=10, in_channels=1)
    opt = make_optimizer(dense, lr=0.05)
    for _ in range(args.epochs):
        train_epoch(dense, train, opt)
    dense.eval()
    small = copy.deepcopy(dense)
    calibration = [xb for xb, _ in list(train)[:4]]  # a few input batches; labels are not needed
    methods = [fc.Tucker2(fc.Budget(macs=0.4)), fc.SVD(fc.Budget(macs=0.4))]

    # 2. ADMM from the trained weights, then decomposed at exactly the ADMM ranks (or at once)
    if args.direct:
        report = fc.decompose_(small, methods, example_input=x, calibration=calibration)
    else:
        admm = fc.ADMM(small, methods, rho=1e-2, example_input=x)
        opt = make_optimizer(small, lr=0.01)
        for _ in range(args.admm_epochs):
            admm.update()
            train_epoch(small, train, opt, extra_loss=lambda batch: admm.penalty())
            print(f"ADMM: ||W - Z|| / ||W|| = {admm.distance()['mean']:.4f}")
        report = admm.decompose_(calibration)
    print(report)
    right_after = evaluate(small, test)

    # 3. fine-tune, learning from the dense model's softened outputs too
    opt = make_optimizer(small, lr=0.01)
    for _ in range(args.finetune_epochs):
        def distill(batch):
            with torch.no_grad():
                teacher = dense(batch.inputs)
            return fc.distillation_loss(batch.outputs, teacher, temperature=4.0)
        train_epoch(small, train, opt, extra_loss=distill)

    # 4. what it bought
    before, after = fc.count(dense, x), fc.count(small, x)
    print(f"dense {evaluate(dense, test):.2%} -> right after the decomposition {right_after:.2%} -> after "
          f"fine-tuning {evaluate(small, test):.2%}; MACs {before.macs:,} -> {after.macs:,} "
          f"({1 - after.macs / before.macs:.1%} fewer), params {before.params:,} -> {after.params:,}")
    assert F.softmax(small(x), -1).sum().item() > 0.99  # the compressed model runs


if __name__ == "__main__":
    main()
