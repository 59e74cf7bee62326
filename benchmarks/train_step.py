"""Training step time: dense CIFAR VGG-19 vs the same network Tucker-2 compressed to ~1M params.

Seed 000 (Elhoushi et al., Table 1) decomposes VGG-19 to 749K params and trains it 2.06x faster
end to end on a K40c. Here: one SGD step (forward, backward, update) on a batch of synthetic
CIFAR-shaped inputs, dense and decomposed models measured in alternation in one process.
Ranks: a uniform fraction of each layer's parameters (``Tucker2(0.05)``, ``SVD(0.5)`` for the
classifier) so the model lands near 1M params; EVBMF ranks need trained weights.

    python benchmarks/train_step.py [--batch 128] [--fraction 0.05] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import factorch as fc
from common import environment, time_alternating, write_results


def step_fn(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--fraction", type=float, default=0.05)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.manual_seed(0)
    dense = fc.models.create("vgg19").to(args.device)
    small = fc.models.create("vgg19").to(args.device)
    example = torch.zeros(1, 3, 32, 32, device=args.device)
    fc.decompose_(small, [fc.Tucker2(args.fraction), fc.SVD(0.5)], example_input=example)
    counts = [fc.count(m, example) for m in (dense, small)]
    x = torch.randn(args.batch, 3, 32, 32, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    t_dense, t_small = time_alternating([step_fn(dense, x, y), step_fn(small, x, y)],
                                        repeats=args.repeats, warmup=2, device=args.device)
    rows = [
        {"model": "VGG-19 dense", "params": counts[0].params, "MACs": counts[0].macs,
         "step_s": round(t_dense, 4), "speedup": 1.0},
        {"model": f"VGG-19 Tucker-2 ({args.fraction:g} of params per layer)", "params": counts[1].params,
         "MACs": counts[1].macs, "step_s": round(t_small, 4), "speedup": round(t_dense / t_small, 2)},
    ]
    env = environment(args.device)
    stem = f"train_step_vgg19_{'gpu' if args.device.startswith('cuda') else 'cpu'}"
    notes = [f"One SGD step (forward + backward + update), batch {args.batch}, 3x32x32 synthetic inputs; "
             f"median of {args.repeats} alternating runs after 2 warm-up steps each."]
    for path in write_results(stem, rows, env, notes):
        print(f"wrote {path}")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
