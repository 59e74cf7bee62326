"""CP of conv kernels: factorch's CP before (TensorLy's parafac, ``algorithm="tensorly"``) and after
(our ALS, ``algorithm="als"``), and tensorly-torch, on the same kernels in one process.

Rows (with their speed goals):

* ``conv 512x512x3x3`` (``nn.Conv2d`` default init) at rank 128: goal <= 40 s at an error no worse
  than tensorly-torch's;
* ``structured 256``: 256 x 256 x 3 x 3 with decaying channel spectra (exp(-k/8) on both channel
  modes of a random core) plus 1e-3 noise, at rank 64;
* ``--weights W.pt``: every 3x3 conv with at least 16 input channels of a trained CIFAR VGG
  (``--model``), at rank ``out_channels * --vgg-rank`` (before and after; tltorch with ``--vgg-tltorch``).

tensorly-torch: ``tltorch.FactorizedConv.from_conv(conv, rank=R, factorization="cp",
implementation="factorized")``, which runs TensorLy's ``parafac`` on the float32 kernel (pytorch
backend, SVD init, 100 sweeps, ``l2_reg=1e-5``); its error is that of ``weight.to_tensor()``.
Each method runs once per kernel; ``cpu_s`` is the process CPU time (less sensitive to other load).

    nice python benchmarks/cp_speed.py [--rows goal,structured] [--weights W.pt --model vgg11 --in-channels 1]
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import torch
from torch import nn

import factorch as fc
from common import write_results
from factorch.decompositions import cp_als, cp_to_tensor
from factorch.measure.results import environment


def structured(n: int, c: int, decay: float = 8.0, noise: float = 1e-3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64)).Q
    core = torch.randn(n, c, 3, 3, generator=g, dtype=torch.float64)
    core *= torch.exp(-torch.arange(n, dtype=torch.float64) / decay)[:, None, None, None]
    core *= torch.exp(-torch.arange(c, dtype=torch.float64) / decay)[None, :, None, None]
    return torch.einsum("abij,na,cb->ncij", core, u, v) + noise * torch.randn(n, c, 3, 3, generator=g,
                                                                              dtype=torch.float64)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def tltorch_cp(w: torch.Tensor, rank: int) -> torch.Tensor:
    import tltorch

    conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], bias=False)
    with torch.no_grad():
        conv.weight.copy_(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = tltorch.FactorizedConv.from_conv(conv, rank=rank, factorization="cp", implementation="factorized")
    return layer.weight.to_tensor().detach().double()


def compare(name: str, w: torch.Tensor, rank: int, with_tltorch: bool) -> list[dict]:
    w = w.double()
    methods = {"factorch before (TensorLy parafac)": lambda: cp_to_tensor(cp_als(w, rank, algorithm="tensorly")),
               "factorch after (ALS)": lambda: cp_to_tensor(cp_als(w, rank))}
    if with_tltorch:
        methods["tensorly-torch"] = lambda: tltorch_cp(w.float(), rank)
    rows = []
    for label, fn in methods.items():
        rebuilt, wall, cpu = timed(fn)
        err = float((rebuilt - w).norm() / w.norm())
        rows.append({"kernel": name, "rank": rank, "method": label, "seconds": round(wall, 1), "cpu_s": round(cpu, 1),
                     "rel_error": f"{err:.5f}"})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="goal,structured", help="comma list of goal, structured")
    p.add_argument("--weights", help="a trained VGG state_dict (or checkpoint) for its conv rows")
    p.add_argument("--model", default="vgg11")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--vgg-rank", type=float, default=0.25, help="CP rank as a fraction of out_channels")
    p.add_argument("--vgg-tltorch", action="store_true", help="tensorly-torch on the VGG convs too")
    p.add_argument("--tag", default="cpu")
    args = p.parse_args()
    torch.manual_seed(0)
    env = environment("cpu")
    rows = []
    wanted = set(args.rows.split(",")) if args.rows else set()
    if "goal" in wanted:
        rows += compare("conv 512x512x3x3 (init)", nn.Conv2d(512, 512, 3).weight.detach(), 128, True)
    if "structured" in wanted:
        rows += compare("structured 256x256x3x3", structured(256, 256), 64, True)
    if args.weights:
        from factorch.io import load_weights, read_checkpoint

        model = fc.models.create(args.model, args.num_classes, args.in_channels)
        state = read_checkpoint(args.weights)
        load_weights(model, state.get("state_dict", state) if isinstance(state, dict) else state, args.weights)
        for name, conv in model.named_modules():
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.in_channels >= 16:
                rank = max(1, int(args.vgg_rank * conv.out_channels))
                rows += compare(f"trained {args.model} {name} {conv.out_channels}x{conv.in_channels}x3x3",
                                conv.weight.detach(), rank, args.vgg_tltorch)
    env["load average (1 min) at the end"] = f"{os.getloadavg()[0]:.2f}"
    notes = ["One run per method and kernel, in the order listed. seconds: wall; cpu_s: process CPU time over "
             "both threads (on a loaded machine wall time stretches, CPU time much less). rel_error: "
             "||W - W_hat||_F / ||W||_F of the rebuilt kernel."]
    for path in write_results(f"cp_speed_{args.tag}", rows, env, notes):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
