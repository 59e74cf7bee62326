"""Truncated SVD of big Linear weights: LAPACK's full SVD (before) against ``truncated_svd``'s pick
(after), side by side in one process, with the error against the optimal rank-R error.

Rows (with their speed goals):

* ``nn.Linear(8192, 8192)`` (default init: a flat spectrum) at rank 1024: goal <= 30 s at an
  error within 1 % of the optimum;
* ``nn.Linear(4096, 4096)`` at rank 256, and ``torch.linalg.svdvals`` of the same matrix: goal
  faster than svdvals; ``singular_values`` (the rank rules' route) next to svdvals;
* ``--decaying``: a 4096 x 4096 low-rank-plus-noise matrix (a decaying spectrum: the float64
  iterations) at rank 256.

The optimal error ``(||W||^2 - sum_{i<=R} sigma_i^2)^(1/2)`` comes from the full SVD's leading
singular values. Each method runs once per row (the full SVD takes minutes), in the order full,
then the new route; ``cpu_s`` is the process CPU time (less sensitive to other load than wall
time); ``peak_extra_GB`` the largest resident memory above the level before the call, sampled
every 5 ms.

    nice python benchmarks/svd_speed.py [--sizes 8192:1024,4096:256] [--decaying] [--no-before --tag cpu_after]
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import torch
from torch import nn

from common import write_results
from factorch.decompositions import singular_values, svd_method, truncated_svd
from factorch.measure.results import environment


def _rss() -> int:
    """Resident bytes of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def measure(fn):
    """(result, wall seconds, CPU seconds, peak resident bytes above the start)."""
    start_rss, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    done.set()
    sampler.join()
    return result, wall, cpu, max(peak[0] - start_rss, 0)


def _error(w: torch.Tensor, out) -> float:
    u, s, vh = out
    return float((w - (u * s) @ vh).norm())


def compare(name: str, w: torch.Tensor, rank: int, with_svdvals: bool, before: bool = True) -> list[dict]:
    """Rows for one matrix; ``before=False`` skips the full SVD (minutes) and takes the optimum from
    ``singular_values`` (the Gram's eigenvalues: exact for the sum of sigma^2 it needs)."""
    rows = []
    norm2 = float((w * w).sum())
    if before:
        full, t_full, c_full, m_full = measure(lambda: truncated_svd(w, rank, "full"))
        kept = float((full[1] ** 2).sum())
    else:
        kept = float((singular_values(w)[:rank] ** 2).sum())
    optimum = max(norm2 - kept, 0.0) ** 0.5
    route = svd_method(tuple(w.shape), rank)
    new, t_new, c_new, m_new = measure(lambda: truncated_svd(w, rank))
    runs = ((("full SVD (before)", full, t_full, c_full, m_full),) if before else ()) + \
        ((f"truncated_svd auto = {route} (after)", new, t_new, c_new, m_new),)
    for label, out, t, c, m in runs:
        err = _error(w, out)
        rows.append({"matrix": name, "rank": rank, "method": label, "seconds": round(t, 2), "cpu_s": round(c, 2),
                     "peak_extra_GB": round(m / 1e9, 2), "rel_error": f"{err / norm2 ** 0.5:.6f}",
                     "error/optimal": f"{err / optimum:.5f}" if optimum > 0 else ""})
    if before:
        rows.append({"matrix": name, "rank": rank, "method": "speed-up (before/after)",
                     "seconds": round(t_full / t_new, 1), "cpu_s": round(c_full / c_new, 1), "peak_extra_GB": "",
                     "rel_error": "", "error/optimal": ""})
    if with_svdvals:
        for label, fn in (("torch.linalg.svdvals", lambda: torch.linalg.svdvals(w)),
                          ("singular_values (rank rules)", lambda: singular_values(w))):
            _, t, c, m = measure(fn)
            rows.append({"matrix": name, "rank": "all", "method": label, "seconds": round(t, 2), "cpu_s": round(c, 2),
                         "peak_extra_GB": round(m / 1e9, 2), "rel_error": "", "error/optimal": ""})
    for r in rows:
        print(r, flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="8192:1024,4096:256", help="comma list of SIZE:RANK (square Linear layers)")
    p.add_argument("--decaying", action="store_true", help="also a 4096 x 4096 low-rank + noise matrix at rank 256")
    p.add_argument("--tag", default="cpu")
    p.add_argument("--no-before", action="store_true",
                   help="skip the full SVD (the optimum from the Gram's eigenvalues instead): the new route alone")
    args = p.parse_args()
    torch.manual_seed(0)
    env = environment("cpu")
    rows = []
    for item in args.sizes.split(","):
        size, rank = (int(v) for v in item.split(":"))
        w = nn.Linear(size, size).weight.detach().double()
        rows += compare(f"nn.Linear({size}, {size}) init", w, rank, with_svdvals=size <= 4096 and not args.no_before,
                        before=not args.no_before)
    if args.decaying:
        g = torch.Generator().manual_seed(1)
        a, b = torch.randn(4096, 512, generator=g, dtype=torch.float64), torch.randn(512, 4096, generator=g,
                                                                                     dtype=torch.float64)
        w = a @ b / 512 + 0.05 * torch.randn(4096, 4096, generator=g, dtype=torch.float64)
        rows += compare("4096 x 4096, rank 512 + noise", w, 256, with_svdvals=False, before=not args.no_before)
    env["load average (1 min) at the end"] = f"{os.getloadavg()[0]:.2f}"
    notes = [
        "One run per method (the full SVD of 8192 x 8192 takes minutes), full SVD first. seconds: wall; cpu_s: "
        "process CPU time over both threads; on a loaded machine wall time stretches, CPU time much less.",
        "error/optimal: ||W - U S V^T||_F over the Eckart-Young optimum of the same rank (1 = optimal); "
        "the randomized route's stopping rule targets <= 1.01 (factorch/decompositions/svd.py).",
    ]
    for path in write_results(f"svd_speed_{args.tag}", rows, env, notes):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
