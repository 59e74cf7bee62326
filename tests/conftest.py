import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def conv_reference(x, weight, conv_spec, bias=None):
    """Independent reference: pad explicitly as nn.Conv2d does, then F.conv2d with no padding."""
    import torch.nn.functional as F

    s = conv_spec
    if isinstance(s.padding, str):
        if s.padding == "valid":
            pads = [0, 0, 0, 0]
        else:  # 'same': total d*(k-1) per axis, left = total // 2 (PyTorch's convention)
            pads = []
            for d, k in reversed(list(zip(s.dilation, s.kernel_size))):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
    else:
        pads = [s.padding[1], s.padding[1], s.padding[0], s.padding[0]]
    mode = {"zeros": "constant"}.get(s.padding_mode, s.padding_mode)
    x = F.pad(x, pads, mode=mode) if any(pads) else x
    return F.conv2d(x, weight, bias, s.stride, 0, s.dilation, s.groups)


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
