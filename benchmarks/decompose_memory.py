"""Peak memory and time of each decomposition route, as a multiple of the weight it decomposes.

Every case runs in a fresh subprocess: build the weight (a default-init ``nn.Linear(n, n)`` or
``nn.Conv2d(c, c, 3)``), warm up on a small layer (lazy imports and one-time buffers are no
multiple of the weight), reset the process's peak resident size (``/proc/self/clear_refs``), run
the case, read the peak (``VmHWM``). ``multiple`` is the peak above the resident size before the
call, over the weight's bytes (float32): what a decomposition needs on top of the model.

Cases (``--cases``, each ``kind:size[:rank]``):

* ``full``, ``gram``, ``randomized``: ``truncated_svd`` of the ``(n, n)`` weight by that route, at
  rank ``n / 4`` (what ``fc.SVD(0.5)`` asks for) unless given;
* ``svd``: ``fc.decompose_`` with ``fc.SVD(0.5)`` on the Linear (the route ``auto`` picks, the layer,
  the report's error column);
* ``tt``: ``fc.decompose_`` with ``fc.TT(8)`` on the Linear (TT-SVD, the layer, the error column);
* ``hooi``: ``fc.decompose_`` with ``fc.Tucker2(0.5)`` on ``Conv2d(c, c, 3)`` (HOOI);
* ``cp``: ``fc.decompose_`` with ``fc.CP(rank)`` on ``Conv2d(c, c, 3)`` (CP-ALS; rank 64 unless given).

    OMP_NUM_THREADS=1 python benchmarks/decompose_memory.py \\
        --cases full:2048 gram:4096 randomized:4096 svd:4096 tt:4096 hooi:512 cp:512:64 --repeat 2

Results: ``benchmarks/results/decompose_memory.md``; ``docs/math.md``, "Cost of computing a
decomposition", quotes them.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time


def _status(key: str) -> int:
    """``VmRSS``/``VmHWM`` of this process in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def child(kind: str, size: int, rank: int | None) -> dict:
    """Run one case in this process; the measurement as a dict."""
    import torch
    from torch import nn

    import factorch as fc
    from factorch.decompositions import svd_method, truncated_svd

    torch.manual_seed(0)
    conv = kind in ("hooi", "cp")
    layer = nn.Conv2d(size, size, 3, padding=1) if conv else nn.Linear(size, size)
    model = nn.Sequential(layer)
    weight = layer.weight.detach()
    route = ""
    if kind in ("full", "gram", "randomized"):
        r = rank or size // 4
        run = lambda: truncated_svd(weight, r, kind)  # noqa: E731
        route = f"{kind} rank {r}"
    else:
        method = {"svd": fc.SVD(0.5), "tt": fc.TT(rank or 8), "hooi": fc.Tucker2(0.5), "cp": fc.CP(rank or 64)}[kind]
        example = torch.zeros(1, size, 8, 8) if conv else None
        run = lambda: fc.decompose_(model, method, example_input=example, min_share=0)  # noqa: E731
        if kind == "svd":
            r = size // 4
            route = f"auto = {svd_method((size, size), r)} rank {r}"
    if kind not in ("full", "gram", "randomized"):  # warm up: lazy imports and one-time buffers are no multiple
        small = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1) if conv else nn.Linear(64, 64))
        fc.decompose_(small, method, example_input=torch.zeros(1, 8, 8, 8) if conv else None, min_share=0)
    else:
        truncated_svd(torch.randn(64, 64), 8, kind)
    ctypes.CDLL(None).malloc_trim(0)  # give freed heap back, so the peak starts from what is in use
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak := current
    before = _status("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    out = run()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _status("VmHWM")
    if not route:
        row = out.rows[0]
        route = f"{row.method} ranks {row.ranks} error {row.error:.4f}"
    return {"case": f"{kind}:{size}", "route": route, "weight_MB": round(weight.numel() * 4 / 2 ** 20, 1),
            "peak_extra_MB": round((peak - before) / 2 ** 20, 1),
            "multiple": round((peak - before) / (weight.numel() * 4), 2), "seconds": round(seconds, 2), "cpu_s": round(cpu, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["full:2048", "gram:4096", "randomized:4096", "svd:4096",
                                                       "tt:4096", "hooi:512", "cp:512:64"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--tag", default="")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, size, *rank = args.child.split(":")
        print(json.dumps(child(kind, int(size), int(rank[0]) if rank else None)))
        return
    rows = []
    for case in args.cases:
        for _ in range(args.repeat):
            done = subprocess.run([sys.executable, __file__, "--child", case], capture_output=True, text=True,
                                  env=os.environ, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import write_results
    from factorch.measure.results import environment

    notes = ["multiple: peak resident size above the level before the call (VmHWM after resetting it), over the "
             "float32 weight's bytes; each case in a fresh process."]
    write_results("decompose_memory" + (f"_{args.tag}" if args.tag else ""), rows, environment("cpu"), notes)


if __name__ == "__main__":
    main()
