"""Training step time: dense CIFAR VGG-19 vs the same network Tucker-2 compressed to ~1M params.

Seed 000 (Elhoushi et al., Table 1) decomposes VGG-19 to 749K params and trains it 2.06x faster
end to end on a K40c. Here: one SGD step (forward, backward, update) on a batch of synthetic
CIFAR-shaped inputs, dense and decomposed models measured in alternation in one process, in three
execution settings that a user picks with ``factorch train`` flags: fp32 NCHW (the default), fp32
channels_last (``--channels-last``) and bfloat16 autocast + channels_last (``--amp --channels-last``;
on CPU ``--amp`` is bfloat16). Each setting compares dense and decomposed under the same setting.
Ranks: a uniform fraction of each layer's parameters (``Tucker2(f)``, ``SVD(0.5)`` for the
classifier); EVBMF ranks need trained weights. f=0.05 gives ~1M params, f=0.037 the seed's ~750K.

    python benchmarks/train_step.py [--batch 128] [--fractions 0.05,0.037] [--device cpu|cuda] [--threads N]
"""
from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F

import factorch as fc
from common import environment, time_alternating, write_results

SETTINGS = {  # name -> (memory format, autocast dtype or None)
    "fp32 NCHW": (torch.contiguous_format, None),
    "fp32 channels_last": (torch.channels_last, None),
    "bf16 autocast, channels_last": (torch.channels_last, torch.bfloat16),
}


def step_fn(model, x, y, amp_dtype):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        ctx = (torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--fractions", default="0.05,0.037", help="Tucker-2 fractions of params kept, comma-separated")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); names the results file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fractions = [float(f) for f in args.fractions.split(",")]
    torch.manual_seed(0)
    example = torch.zeros(1, 3, 32, 32, device=args.device)
    dense = fc.models.create("vgg19").to(args.device)
    smalls = []
    for f in fractions:
        small = fc.models.create("vgg19").to(args.device)
        fc.decompose_(small, [fc.Tucker2(f), fc.SVD(0.5)], example_input=example)
        smalls.append(small)
    counts = [fc.count(m, example) for m in (dense, *smalls)]
    names = ["VGG-19 dense"] + [f"VGG-19 Tucker-2 ({f:g} of params per layer)" for f in fractions]
    x0 = torch.randn(args.batch, 3, 32, 32, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    rows = []
    for setting, (fmt, amp_dtype) in SETTINGS.items():
        models = [m.to(memory_format=fmt) for m in (dense, *smalls)]
        x = x0.contiguous(memory_format=fmt)
        times = time_alternating([step_fn(m, x, y, amp_dtype) for m in models],
                                 repeats=args.repeats, warmup=2, device=args.device)
        for name, c, t in zip(names, counts, times):
            rows.append({"setting": setting, "model": name, "params": c.params, "MACs": c.macs,
                         "step_s": round(t, 4), "speedup_vs_dense": round(times[0] / t, 2)})
            print(rows[-1])
    env = environment(args.device)
    stem = f"train_step_vgg19_{'gpu' if args.device.startswith('cuda') else 'cpu'}"
    stem += f"_{args.threads}thread" if args.threads else ""
    notes = [f"One SGD step (forward + backward + update), batch {args.batch}, 3x32x32 synthetic inputs; "
             f"median of {args.repeats} alternating runs after 2 warm-up steps each. "
             "speedup_vs_dense compares with the dense model in the same setting."]
    for path in write_results(stem, rows, env, notes):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
