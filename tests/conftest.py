import subprocess
import sys

import pytest
import torch

# DDP tests run 2 CPU processes under torchrun (Gloo)
needs_gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with Gloo is not available")


def torchrun(args, **kw):
    """``python -m torch.distributed.run --standalone --nproc_per_node=2 *args`` (5 minutes at most)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def conv_reference(x, weight, conv_spec, bias=None):
    """Independent reference for a conv of any dimensionality: pad explicitly as nn.Conv*d does, then
    F.conv{1,2,3}d with no padding; a transposed conv runs unpadded (the full scatter, plus
    output_padding zero rows at the end) and is then cropped by its padding on both sides."""
    import torch.nn.functional as F

    s = conv_spec
    d = len(s.kernel_size)
    if s.transposed:
        conv_t = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[d]
        full = conv_t(x, weight, bias, s.stride, 0, s.output_padding, s.groups, s.dilation)
        crop = (slice(None), slice(None)) + tuple(slice(p, n - p) for p, n in zip(s.padding, full.shape[2:]))
        return full[crop]
    if isinstance(s.padding, str):
        if s.padding == "valid":
            pads = [0, 0] * d
        else:  # 'same': total d*(k-1) per axis, left = total // 2 (PyTorch's convention)
            pads = []
            for dil, k in reversed(list(zip(s.dilation, s.kernel_size))):
                total = dil * (k - 1)
                pads += [total // 2, total - total // 2]
    else:
        pads = [v for p in reversed(s.padding) for v in (p, p)]
    mode = {"zeros": "constant"}.get(s.padding_mode, s.padding_mode)
    x = F.pad(x, pads, mode=mode) if any(pads) else x
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
    return conv(x, weight, bias, s.stride, 0, s.dilation, s.groups)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on a machine whose 2 cores are shared with other jobs, a
    multi-threaded LAPACK call waits for descheduled threads (eigvalsh of a 512x512 Gram matrix:
    seconds instead of 30 ms). Tests that do a lot of linear algebra ask for it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def kept_checkpoints(monkeypatch, tmp_path):
    """While a training run writes its checkpoints, copy each epoch's aside to the returned folder
    as ``epoch<N>.pt`` (to resume from every epoch boundary); ``monkeypatch.undo()`` stops it."""
    import shutil

    import factorch.training.run as run_module

    save_run, into = run_module.save_run, tmp_path / "kept-checkpoints"
    into.mkdir()

    def saving(path, **kw):
        save_run(path, **kw)
        shutil.copy(path, into / f"epoch{kw['epoch']}.pt")
    monkeypatch.setattr(run_module, "save_run", saving)
    return into


def kill_after_epochs(argv, out, epochs):
    """Run ``python -m factorch *argv --out out`` and kill -9 it once ``out/metrics.jsonl`` holds
    ``epochs`` finished epochs (the next one under way): a crash mid-epoch, for resume tests."""
    import os
    import signal
    import subprocess
    import sys
    import time

    metrics = out / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "factorch", *argv, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while (len(metrics.read_text().splitlines()) if metrics.exists() else 0) < epochs and \
                proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
