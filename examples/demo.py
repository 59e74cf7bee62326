"""Compress a trained model in one call, fine-tune it, and put it back (the core API, end to end).

Trains a CIFAR ResNet-20 (one input channel) on scikit-learn's bundled digits (1,797 8x8 images,
upsampled to 16x16; no download), then:
1. ``fc.decompose_`` with Tucker-2 (EVBMF ranks) for kxk convs and SVD for the classifier;
2. one epoch of fine-tuning of the small model;
3. ``fc.save``/``fc.load`` round trip and ``fc.reconstruct_`` back to dense layers, checking
   that outputs are unchanged.

Run: ``make demo`` (or ``python examples/demo.py``); about a minute on 2 CPU cores.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import factorch as fc


def digits(seed: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0   # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)  # (1797, 1, 16, 16)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:360], perm[360:]
    return (x[train], y[train]), (x[test], y[test])


def accuracy(model, data) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(data[0]).argmax(1) == data[1]).float().mean())


def train(model, data, epochs: int, lr: float) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * ((len(data[1]) + 63) // 64))
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(data[1])).split(64):
            loss = F.cross_entropy(model(data[0][idx]), data[1][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return time.perf_counter() - start


def main() -> None:
    torch.manual_seed(0)
    train_set, test_set = digits()
    model = fc.models.create("resnet20", num_classes=10, in_channels=1)
    example = torch.zeros(1, 1, 16, 16)
    dense = fc.count(model, example)
    t = train(model, train_set, epochs=12, lr=0.1)
    acc_dense = accuracy(model, test_set)
    print(f"dense ResNet-20: {dense.params:,} params, {dense.macs:,} MACs, test acc {acc_dense:.3f} ({t:.0f} s)")

    report = fc.decompose_(model, [fc.Tucker2(fc.EVBMF(weaken=0.5)), fc.SVD(fc.Energy(0.95))],
                           filter_fn=lambda m, name: name != "conv1", example_input=example)
    print(report)
    acc_dec = accuracy(model, test_set)
    t = train(model, train_set, epochs=2, lr=0.01)
    acc_ft = accuracy(model, test_set)
    small = fc.count(model, example)
    print(f"decomposed: {small.params:,} params ({dense.params / small.params:.2f}x fewer), "
          f"{small.macs:,} MACs ({dense.macs / small.macs:.2f}x fewer); "
          f"test acc {acc_dec:.3f} right after, {acc_ft:.3f} after 2 epochs of fine-tuning ({t:.0f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "small.pt"
        fc.save(model, path)
        loaded = fc.load(path).eval()
        model.eval()
        x = test_set[0][:64]
        same = torch.equal(loaded(x), model(x))
        print(f"save/load: {path.stat().st_size / 1e3:.0f} kB checkpoint, identical outputs: {same}")
    with torch.no_grad():
        y = model(x)
        names = fc.reconstruct_(model)
        diff = float((model(x) - y).abs().max())
    print(f"reconstruct_: {len(names)} layers back to dense, max output change {diff:.1e}, "
          f"test acc {accuracy(model, test_set):.3f}, params {fc.count(model, example).params:,}")


if __name__ == "__main__":
    main()
