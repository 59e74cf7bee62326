"""How long decomposing takes: a whole CIFAR VGG-19 with Tucker-2, and one 512x512x3x3 kernel
against TensorLy's ``partial_tucker`` at equal ranks (time and error side by side).

HOOI's iteration count depends on the weights: a trained kernel (decaying spectrum) converges in
a few sweeps, a random-init kernel (flat spectrum) creeps for many. Pass ``--weights`` (a VGG-19
state_dict, e.g. from ``factorch train``) to measure trained weights; without it the random-init
worst case is measured. Ranks: ``--rank`` as on the CLI (default ``evbmf`` with ``--weights``;
without, ``0.05``: random init gives EVBMF rank 0 everywhere).

    python benchmarks/decompose_speed.py [--weights W.pt --in-channels 1] [--rank evbmf] [--tag trained]
"""
from __future__ import annotations

import argparse
import time

import torch

import factorch as fc
from common import environment, write_results
from factorch.cli.common import parse_rank
from factorch.decompositions import tucker2, tucker2_to_tensor
from factorch.io import load_weights, read_checkpoint


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="VGG-19 state_dict (or a training checkpoint holding one)")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--rank", help="as on the CLI (default: evbmf with --weights, else 0.05)")
    p.add_argument("--tag", default=None, help="results file suffix (default: trained / random-init)")
    args = p.parse_args()
    torch.manual_seed(0)

    def vgg19() -> torch.nn.Module:
        model = fc.models.create("vgg19", args.num_classes, args.in_channels)
        if args.weights:
            load_weights(model, _state(args.weights), args.weights)
        return model

    tag = args.tag or ("trained" if args.weights else "random-init")
    example = torch.zeros(1, args.in_channels, 32, 32)
    args.rank = args.rank or ("evbmf" if args.weights else "0.05")
    rank = parse_rank(args.rank)

    # twice, on fresh copies: the first call in a process also pays PyTorch's one-time import of
    # its meta-device kernels (torch._dynamo among them), which factorch's MAC costing uses
    rows = []
    for when in ("first call in the process", "second call"):
        model = vgg19()
        start = time.perf_counter()
        report = fc.decompose_(model, fc.Tucker2(rank), example_input=example)
        whole = time.perf_counter() - start
        rows.append({"what": f"whole VGG-19, Tucker-2 (HOOI) on every kxk conv, {when}", "ranks": args.rank,
                     "seconds": round(whole, 3), "layers_decomposed": len(report.decomposed),
                     "params_after": report.totals()["params_after"], "rel_error": "per layer in the report"})
    print(report)

    # the largest kernel: ours vs TensorLy at the ranks our rule chose (or a quarter if it skipped)
    name = "features.49"
    row = next(r for r in report.rows if r.name == name)
    w = vgg19().features[49].weight.detach().double()
    ranks = row.ranks if row.decomposed else (128, 128)
    start = time.perf_counter()
    core, u, v = tucker2(w, ranks)
    ours_s = time.perf_counter() - start
    ours_err = float((tucker2_to_tensor(core, u, v) - w).norm() / w.norm())
    tl_s, tl_err = tensorly_partial_tucker(w, ranks)
    rows.append({"what": f"{name} 512x512x3x3, factorch tucker2", "ranks": f"{ranks[0]},{ranks[1]}",
                 "seconds": round(ours_s, 3), "layers_decomposed": 1, "params_after": "", "rel_error": round(ours_err, 6)})
    rows.append({"what": f"{name} 512x512x3x3, TensorLy partial_tucker", "ranks": f"{ranks[0]},{ranks[1]}",
                 "seconds": round(tl_s, 3), "layers_decomposed": 1, "params_after": "", "rel_error": round(tl_err, 6)})
    for r in rows:
        print(r)
    notes = [f"Weights: {'trained (' + args.weights.split('/')[-1] + ')' if args.weights else 'random init (worst case for HOOI)'}. "
             f"TensorLy/factorch time on the 512 kernel: {tl_s / ours_s:.1f}x."]
    for path in write_results(f"decompose_speed_vgg19_{tag}", rows, environment("cpu"), notes):
        print(f"wrote {path}")


def _state(path: str) -> dict:
    """A state_dict from a plain state_dict file or a checkpoint dict holding one."""
    state = read_checkpoint(path)
    return state.get("state_dict", state) if isinstance(state, dict) else state


if __name__ == "__main__":
    main()
