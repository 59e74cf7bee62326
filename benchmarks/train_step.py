"""Training step time: dense CIFAR VGG-19 vs the same network Tucker-2 compressed to ~1M params.

Elhoushi et al. (2019, Table 1) decompose VGG-19 to 749K params and train it 2.06x faster
end to end on a K40c. Here: one SGD step (forward, backward, update) on a batch of synthetic
CIFAR-shaped inputs, dense and decomposed models measured in alternation in one process, in the
execution settings a user gets from ``factorch train``: ``before``, fp32 NCHW (the default until
the memory-format rule; ``--no-channels-last`` now), ``default``, fp32 in the layout ``factorch
train`` picks by default (``loop.uses_channels_last``: channels_last for a conv model on CPU and
CUDA), and ``amp``, bfloat16/float16 autocast (``--amp``) in that layout. Each setting compares
dense and decomposed under the same setting. Goal: >= 6x at ~1.0M params, batch 64,
without a flag.
Ranks: a uniform fraction of each layer's parameters (``Tucker2(f)``, ``SVD(0.5)`` for the
classifier); EVBMF ranks need trained weights. f=0.05 gives ~1M params, f=0.037 the paper's ~750K.

    python benchmarks/train_step.py [--model vgg19] [--batch 64] [--fractions 0.05] [--settings before,default[,amp]]
        [--device cpu|cuda] [--threads N]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import factorch as fc
from factorch.measure.latency import autocast, time_interleaved, wall_clock
from factorch.measure.results import environment
from factorch.training.loop import to_memory_format, uses_channels_last
from common import write_results

SETTINGS = {  # name -> (channels_last: None = factorch train's rule, autocast)
    "before": (False, False),
    "default": (None, False),
    "amp": (None, True),
}


def step_fn(model, x, y, amp: bool):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp and x.device.type == "cuda")

    def step():
        with autocast(x.device, amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg19", help="a CIFAR model of the zoo (default vgg19; names the results file)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--fractions", default="0.05", help="Tucker-2 fractions of params kept, comma-separated "
                   "(0.05: ~1.0M params; 0.037: Elhoushi et al.'s ~750K)")
    p.add_argument("--settings", default="before,default", help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); names the results file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fractions = [float(f) for f in args.fractions.split(",")]
    torch.manual_seed(0)
    example = torch.zeros(1, 3, 32, 32, device=args.device)
    dense = fc.models.create(args.model).to(args.device)
    smalls = []
    for f in fractions:
        small = fc.models.create(args.model).to(args.device)
        fc.decompose_(small, [fc.Tucker2(f), fc.SVD(0.5)], example_input=example)
        smalls.append(small)
    counts = [fc.count(m, example) for m in (dense, *smalls)]
    names = [f"{args.model} dense"] + [f"{args.model} Tucker-2 ({f:g} of params per layer)" for f in fractions]
    x0 = torch.randn(args.batch, 3, 32, 32, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    rows = []
    for setting in args.settings.split(","):
        if setting not in SETTINGS:
            p.error(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
        choice, amp = SETTINGS[setting]
        channels_last = uses_channels_last(choice, dense, args.device)
        models = [to_memory_format(m, channels_last) for m in (dense, *smalls)]
        x = x0.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        times = time_interleaved({name: step_fn(m, x, y, amp) for name, m in zip(names, models)},
                                 warmup=args.warmup, runs=args.repeats, timer=wall_clock(args.device))
        for name, c in zip(names, counts):
            t = times[name]
            rows.append({"setting": setting, "layout": "channels_last" if channels_last else "NCHW",
                         "amp": amp, "model": name, "params": c.params, "MACs": c.macs,
                         "step_s": round(t, 4), "speedup_vs_dense": round(times[names[0]] / t, 2)})
            print(rows[-1], flush=True)
    env = environment(args.device)
    stem = f"train_step_{args.model}_{'gpu' if args.device.startswith('cuda') else 'cpu'}"
    stem += f"_{args.threads}thread" if args.threads else ""
    notes = [f"One SGD step (forward + backward + update), batch {args.batch}, 3x32x32 synthetic inputs; "
             f"median of {args.repeats} alternating runs after {args.warmup} warm-up steps each. "
             "speedup_vs_dense compares with the dense model in the same setting."]
    for path in write_results(stem, rows, env, notes):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
