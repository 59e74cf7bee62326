"""Compress a model in one call, measure what it buys, fine-tune it, and put it back (the core
API, end to end).

Trains a VGG-7 (one input channel) on scikit-learn's bundled digits (1,797 8x8 images, upsampled
to 16x16; no download) for 3 epochs, then:
1. ``fc.decompose_``: Tucker-2 at a tenth of each kxk conv's parameters, else SVD keeping 95 % of
   the energy (the report names every layer left dense, and why);
2. the cost of one training step, dense against decomposed, side by side
   (``fc.profile.compare``: interleaved, warm-up, median; one thread, stable on a busy machine);
3. 2 epochs of fine-tuning of the small model;
4. ``fc.save``/``fc.load`` round trip and ``fc.reconstruct_`` back to dense layers, checking that
   outputs are unchanged.

Run: ``python examples/demo.py`` (the experiment with its table and figure: ``make demo``).
One thread throughout, as ``make demo``; the README gives its measured duration.
"""
from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import factorch as fc
from factorch import data
from factorch.measure.latency import compare

BATCH = 64


def tensors(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as two tensors: images (N, 1, 16, 16), normalised, and labels (N,)."""
    split = data.load("digits", train=train)
    xs, ys = zip(*(split[i] for i in range(len(split))))
    return torch.stack(xs), torch.tensor(ys)


def accuracy(model, split) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(split[0]).argmax(1) == split[1]).float().mean())


def train(model, split, epochs: int, lr: float) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * ((len(split[1]) + BATCH - 1) // BATCH))
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(split[1])).split(BATCH):
            loss = F.cross_entropy(model(split[0][idx]), split[1][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train_set, test_set = tensors(train=True), tensors(train=False)
    model = fc.models.create("vgg7", num_classes=10, in_channels=1)
    example = torch.zeros(1, 1, 16, 16)
    dense = fc.count(model, example)
    t = train(model, train_set, epochs=3, lr=0.05)
    acc_dense = accuracy(model, test_set)
    print(f"dense VGG-7: {dense.params:,} params, {dense.macs:,} MACs, test acc {acc_dense:.3f} ({t:.0f} s)")

    dense_model = copy.deepcopy(model)
    report = fc.decompose_(model, [fc.Tucker2(0.1), fc.SVD(fc.Energy(0.95))],
                           filter_fn=lambda m, name: name != "features.0", example_input=example)
    print(report)
    acc_dec = accuracy(model, test_set)
    step = compare({"dense": dense_model, "decomposed": model}, (1, 16, 16),
                   fc.Profiler(batch=BATCH, backward=True, warmup=5, runs=30, threads=1))
    speedup = step["dense"].forward_backward / step["decomposed"].forward_backward
    print(f"one training step (forward+backward, batch {BATCH}, median of 30 interleaved): dense "
          f"{1e3 * step['dense'].forward_backward:.1f} ms, decomposed {1e3 * step['decomposed'].forward_backward:.1f} "
          f"ms: {speedup:.2f}x")
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
