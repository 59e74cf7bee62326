"""Peak memory of decomposing a big Linear, measured in a fresh process (Linux: the peak resident
size ``VmHWM``, reset through ``/proc/self/clear_refs``), against the multiples of the weight
``docs/math.md`` states ("Cost of computing a decomposition"), plus a quarter for allocator slack:
what these tests guard against costs several times the weight (a float64 copy is 2x, each dense
rebuild 2x more; before, both cases took 6.7-7.6x)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLEAR_REFS = Path("/proc/self/clear_refs")

CHILD = r"""
import ctypes, json, sys
import torch
from torch import nn
import factorch as fc

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

method = {"svd": fc.SVD(0.1), "tt": fc.TT(8)}[sys.argv[1]]
fc.decompose_(nn.Sequential(nn.Linear(64, 64)), method, min_share=0)  # warm up: lazy imports, buffers
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4096, 4096))
ctypes.CDLL(None).malloc_trim(0)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak starts from here
before = status("VmRSS")
report = fc.decompose_(model, method, min_share=0)
peak = status("VmHWM")
print(json.dumps({"multiple": (peak - before) / (4096 * 4096 * 4), "route": report.rows[0].note or "",
                  "ranks": list(report.rows[0].ranks)}))
"""


def _peak_multiple(kind: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, kind], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


needs_proc = pytest.mark.skipif(not CLEAR_REFS.exists() or not sys.platform.startswith("linux"),
                                reason="peak resident size is read from Linux /proc")


@needs_proc
def test_svd_of_a_4096_linear_stays_within_its_stated_multiple():
    """``fc.SVD(0.1)``: the randomized route at rank 204, the layer and the report's error column.
    Stated: at most 4x the float32 weight; measured 3.5x. Before: 6.7x (a float64 copy, the
    from-scratch init's dense rebuilds, the error column's float64 copies)."""
    found = _peak_multiple("svd")
    assert found["ranks"] == [204]
    assert found["multiple"] <= 1.25 * 4.0, found


@needs_proc
def test_tt_of_a_4096_linear_stays_within_its_stated_multiple():
    """``fc.TT(8)``: TT-SVD reads the float32 weight in float64 blocks, the error column rebuilds
    it in place; stated at most 5.5x: measured 4.2-5.3x in fresh processes on different runs (the
    allocator's arenas vary). Before: 7.6-8.8x."""
    found = _peak_multiple("tt")
    assert found["multiple"] <= 1.25 * 5.5, found
