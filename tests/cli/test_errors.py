"""Errors that name the file and the value: bad labels, a bad image read in a DataLoader worker,
a full disk. Each is one ``error:`` line from the CLI (exit 2) and leaves nothing behind."""
import errno
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
from torch.utils.data import DataLoader

import factorch as fc
import factorch.data as data
from factorch.cli.main import error_message, run

pytestmark = pytest.mark.usefixtures("one_thread")  # decompositions: LAPACK on a shared machine


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _fashion_dir(root, bad_label=None):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 12)
    if bad_label is not None:
        labels[5] = bad_label
    for split in ("train", "t10k"):
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 28, 28)))
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_idx_label_out_of_range_names_file_value_and_range(tmp_path):
    _fashion_dir(tmp_path, bad_label=200)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz'?: label 200 \(example 5.*expected 0\.\.9"):
        data.load("fashion-mnist", root=str(tmp_path))


def test_cifar_label_out_of_range_names_the_batch(tmp_path):
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, 4).tolist()
        if name == "data_batch_3":
            labels[2] = 99
        (tmp_path / name).write_bytes(pickle.dumps({b"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8),
                                                    b"labels": labels}, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_3'?: label 99 .*expected 0\.\.9"):
        data.load("cifar10", root=str(tmp_path))
    assert len(data.load("cifar10", root=str(tmp_path), train=False)) == 4


def test_training_on_bad_labels_is_one_line_and_no_run_directory(tmp_path, capsys):
    _fashion_dir(tmp_path, bad_label=200)
    out = tmp_path / "run"
    assert run(["train", "--model", "mlp", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path),
                "--epochs", "1", "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "train-labels-idx1-ubyte.gz" in line and "label 200" in line and "0..9" in line
    assert not out.exists()


def _image_dirs(root, bad):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (12, 12), (200, 10, 10)).save(root / split / c / "ok.png")
    bad.write_bytes(b"\xff\xd8 this is not a JPEG")
    return root


def test_a_bad_image_read_in_a_worker_is_reported_by_its_file(tmp_path):
    bad = tmp_path / "train" / "b" / "broken.jpg"
    _image_dirs(tmp_path, bad)
    loader = DataLoader(data.load("imagefolder", root=str(tmp_path), size=(8, 8)), batch_size=4, num_workers=1)
    with pytest.raises(ValueError) as e:
        next(iter(loader))
    assert str(e.value).startswith("Caught ValueError in DataLoader worker process 0")  # what torch gives
    assert error_message(e.value).startswith(f"imagefolder: cannot decode {str(bad)!r}")


def test_cli_train_names_the_bad_image(tmp_path, capsys):
    bad = tmp_path / "train" / "b" / "broken.jpg"
    _image_dirs(tmp_path, bad)
    assert run(["train", "--model", "lenet5", "--dataset", "imagefolder", "--data-dir", str(tmp_path),
                "--epochs", "1", "--batch-size", "4", "--workers", "1", "--out", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: imagefolder: cannot decode {str(bad)!r}"), line


def test_error_message_keeps_ordinary_messages():
    assert error_message(ValueError("first line\nsecond")) == "first line"
    assert error_message(RuntimeError("")) == "RuntimeError"


class DiskFull:
    """A file object that fills up after ``room`` bytes, like a file on a full disk."""

    def __init__(self, f, room=100):
        self.f, self.room = f, room

    def write(self, b):
        self.room -= len(b)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Every file factorch.io opens for writing fills up after 100 bytes."""
    import factorch.io

    real = os.fdopen
    monkeypatch.setattr(factorch.io.os, "fdopen", lambda fd, mode="r", *a, **k: DiskFull(real(fd, mode, *a, **k)))


def test_full_disk_on_save_names_the_file(tmp_path, full_disk):
    model = fc.models.create("lenet5", in_channels=1)
    path = tmp_path / "m.pt"
    path.write_bytes(b"old")
    with pytest.raises(OSError, match=r"cannot write '.*m\.pt': no space left on device$") as e:
        fc.save(model, path)
    assert e.value.errno == errno.ENOSPC
    assert "enforce fail" in str(e.value.__cause__)  # what torch.save itself raised
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_cli_full_disk_is_one_line(tmp_path, capsys, full_disk):
    out = tmp_path / "small.pt"
    assert run(["decompose", "--model", "lenet5", "--in-channels", "1", "--rank", "0.5", "-o", str(out)]) == 2
    line = _one_error_line(capsys)
    assert line == f"error: cannot write {str(out)!r}: no space left on device"
    assert not any(tmp_path.iterdir())
