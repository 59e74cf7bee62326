"""How long decomposing takes, and what HOOI's stopping rule costs in error.

In one process, on the same kernels: every kxk conv of a model (default: a CIFAR VGG-19) is
decomposed by Tucker-2 HOOI at the ranks ``--rank`` gives, once with the earlier stopping rule
(``stop="error"``: the absolute change of the relative error below 1e-5, every sweep exact) and
once per tolerance of the current rule (``stop="residual"``: the residual fell by less than
``tol`` of itself; subspace steps after the first sweep, an exact sweep to finish). Per rule: the
summed time (layers alternate between the rules, so load drifts hit all alike) and the worst and
mean per-layer error against the earlier rule's. Then the whole ``fc.decompose_`` with the
defaults, and the largest kernel against TensorLy's ``partial_tucker`` at the same ranks.

HOOI's iteration count depends on the weights: a trained kernel (decaying spectrum) converges in a
few sweeps, a random-init kernel (flat spectrum) creeps for many. Pass ``--weights`` (a state_dict
or a factorch training checkpoint) to measure trained weights; without it the random-init worst
case is measured.

    python benchmarks/decompose_speed.py                                   # random-init VGG-19 at 5 %
    python benchmarks/decompose_speed.py --model vgg7 --weights runs/vgg7-fashion/checkpoint.pt \\
        --in-channels 1 --rank 0.1 --tag vgg7_trained
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import factorch as fc
from common import write_results
from factorch.cli.common import parse_rank
from factorch.decompositions import HOOI_TOL, tucker2, tucker2_to_tensor
from factorch.io import load_weights, read_checkpoint
from factorch.measure.results import environment

TOLS = (HOOI_TOL / 2, HOOI_TOL, HOOI_TOL * 2)


def tensorly_partial_tucker(w: torch.Tensor, ranks: tuple[int, int]) -> tuple[float, float]:
    import numpy as np
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    start = time.perf_counter()
    with tl.backend_context("numpy"):
        (core, (u, v)), _ = partial_tucker(w.numpy(), rank=list(ranks), modes=[0, 1])
    seconds = time.perf_counter() - start
    rebuilt = tucker2_to_tensor(*(torch.from_numpy(np.asarray(a)) for a in (core, u, v)))
    return seconds, float((rebuilt - w).norm() / w.norm())


def _timed(w: torch.Tensor, ranks: tuple[int, int], **rule) -> tuple[float, float]:
    start = time.perf_counter()
    core, u, v = tucker2(w, ranks, **rule)
    seconds = time.perf_counter() - start
    return seconds, float((tucker2_to_tensor(core, u, v) - w).norm() / w.norm())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg19")
    p.add_argument("--weights", help="a state_dict, or a checkpoint holding one (``state_dict``/``model``)")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--rank", help="as on the CLI (default: evbmf with --weights, else 0.05)")
    p.add_argument("--tag", default=None, help="results file suffix (default: MODEL_trained / MODEL_random-init)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads (default 1: on a shared machine a multi-threaded LAPACK call waits for "
                        "descheduled threads)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def model() -> torch.nn.Module:
        m = fc.models.create(args.model, args.num_classes, args.in_channels)
        if args.weights:
            load_weights(m, _state(args.weights), args.weights)
        return m

    tag = args.tag or f"{args.model}_{'trained' if args.weights else 'random-init'}"
    example = torch.zeros(1, args.in_channels, *fc.models.entry(args.model).input_size)
    args.rank = args.rank or ("evbmf" if args.weights else "0.05")
    rank = parse_rank(args.rank)

    # the kernels and ranks decompose_ would use (the first conv, C = 3 or 1, is skipped by Tucker-2)
    report = fc.plan(model(), fc.Tucker2(rank), example_input=example)
    layers = {n: m.weight.detach().double() for n, m in model().named_modules() if isinstance(m, torch.nn.Conv2d)}
    jobs = [(r.name, layers[r.name], r.ranks) for r in report.rows if r.ranks and r.decomposed]
    rules = {"error 1e-05 (earlier rule)": dict(stop="error")}
    rules.update({f"residual {t:g}" + (" (default)" if t == HOOI_TOL else ""): dict(tol=t) for t in TOLS})
    seconds = {k: 0.0 for k in rules}
    errors: dict[str, list[float]] = {k: [] for k in rules}
    for i, (_, w, ranks) in enumerate(jobs):
        order = list(rules) if i % 2 == 0 else list(reversed(rules))  # alternate who runs first
        for k in order:
            s, e = _timed(w, ranks, **rules[k])
            seconds[k] += s
            errors[k].append(e)
    base = "error 1e-05 (earlier rule)"
    rows = []
    for k in rules:
        ratios = [e / b for e, b in zip(errors[k], errors[base])]
        rows.append({"what": f"HOOI of the {len(jobs)} decomposed kxk convs, stop rule {k}", "ranks": args.rank,
                     "seconds": round(seconds[k], 3), "speedup_vs_earlier": round(seconds[base] / seconds[k], 2),
                     "worst_err_ratio": f"{max(ratios):.6f}", "mean_err_ratio": f"{statistics.mean(ratios):.6f}"})

    # the whole model through the public API, default rule, twice: the first call in a process also
    # pays PyTorch's one-time import of its meta-device kernels, which factorch's MAC costing uses
    for when in ("first call in the process", "second call"):
        m = model()
        start = time.perf_counter()
        done = fc.decompose_(m, fc.Tucker2(rank), example_input=example)
        rows.append({"what": f"whole {args.model}: fc.decompose_(Tucker2), default rule, {when}", "ranks": args.rank,
                     "seconds": round(time.perf_counter() - start, 3), "speedup_vs_earlier": "",
                     "worst_err_ratio": "", "mean_err_ratio": f"{len(done.decomposed)} layers decomposed"})

    # the largest kernel: ours (default rule) vs TensorLy at the same ranks
    name, w, ranks = max(jobs, key=lambda j: j[1].numel())
    ours_s, ours_err = _timed(w, ranks)
    tl_s, tl_err = tensorly_partial_tucker(w, ranks)
    for who, s, e in (("factorch tucker2 (default rule)", ours_s, ours_err), ("TensorLy partial_tucker", tl_s, tl_err)):
        rows.append({"what": f"{name} {'x'.join(map(str, w.shape))}, {who}", "ranks": f"{ranks[0]},{ranks[1]}",
                     "seconds": round(s, 3), "speedup_vs_earlier": "", "worst_err_ratio": "",
                     "mean_err_ratio": f"rel. error {e:.6f}"})
    for r in rows:
        print(r)
    notes = [f"Weights: {'trained (' + args.weights.split('/')[-1] + ')' if args.weights else 'random init (worst case for HOOI)'}. "
             f"Error ratios: each layer's relative error under the rule over its error under the earlier rule "
             f"(1.001 = 0.1 % worse). TensorLy/factorch time on {name}: {tl_s / ours_s:.1f}x (TensorLy on NumPy, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})."]
    for path in write_results(f"decompose_speed_{tag}", rows, environment("cpu"), notes):
        print(f"wrote {path}")


def _state(path: str) -> dict:
    """A state_dict from a plain state_dict file or a checkpoint dict holding one."""
    state = read_checkpoint(path)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                return state[key]
    return state


if __name__ == "__main__":
    main()
