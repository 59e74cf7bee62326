"""Data loaders on small files written here in each dataset's real on-disk format."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

import factorch.data as data


def _write_idx(path, array, compress=True):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


def _idx_dir(tmp_path, n=20, compress=True):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28))
    labels = rng.integers(0, 10, (n,))
    ext = ".gz" if compress else ""
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte{ext}", images, compress)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte{ext}", labels, compress)
    return images, labels


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, name, compress):
    images, labels = _idx_dir(tmp_path, compress=compress)
    ds = data.load(name, root=str(tmp_path))
    assert len(ds) == 20
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and y == labels[3]
    mean, std = {"fashion-mnist": (0.2860, 0.3530), "mnist": (0.1307, 0.3081)}[name]
    assert torch.allclose(x[0], (torch.tensor(images[3], dtype=torch.float32) / 255 - mean) / std, atol=1e-6)


def test_idx_errors(tmp_path):
    with pytest.raises(ValueError, match="expected train-images-idx3-ubyte.gz"):
        data.load("fashion-mnist", root=str(tmp_path))
    _idx_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01abcd"))
    with pytest.raises(ValueError, match="not a uint8 IDX file"):
        data.load("fashion-mnist", root=str(tmp_path))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(7))
    with pytest.raises(ValueError, match="do not match"):
        data.load("fashion-mnist", root=str(tmp_path))


def _cifar_dir(tmp_path, n=10):
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": name.encode()}
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar_python_batches(tmp_path):
    _cifar_dir(tmp_path)
    train, test = data.load("cifar10", root=str(tmp_path)), data.load("cifar10", root=str(tmp_path), train=False)
    assert len(train) == 50 and len(test) == 10
    x, y = train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    aug = data.load("cifar10", root=str(tmp_path), augment=True)
    assert aug[0][0].shape == (3, 32, 32)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_refuses_code_in_pickles(tmp_path, capsys):
    _cifar_dir(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch.*refusing"):
        data.load("cifar10", root=str(tmp_path))
    assert "pwned" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="missing test_batch"):
        (tmp_path / "test_batch").unlink()
        data.load("cifar10", root=str(tmp_path), train=False)


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40 + i * 7, 30), color).save(tmp_path / split / c / f"{i}.png")
    ds = data.load("imagefolder", root=str(tmp_path), size=(24, 24))
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    x, y = ds[3]
    assert x.shape == (3, 24, 24) and y == 1
    # pure blue image -> blue channel at max after normalisation
    assert torch.allclose(x[2], torch.full((24, 24), (1 - 0.406) / 0.225), atol=1e-5)
    with pytest.raises(ValueError, match="class folders"):
        data.load("imagefolder", root=str(tmp_path / "nope"))


def _image_tree(root, layout):
    """``layout``: {split: {class: number of images}}; PNG and JPEG files, one colour per class."""
    from PIL import Image

    for split, classes in layout.items():
        for k, (c, n) in enumerate(sorted(classes.items())):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 16), (40 * k, 0, 0)).save(root / split / c / f"{i}.{('png', 'jpg')[i % 2]}")
    return str(root)


def test_imagefolder_one_class_index_from_the_training_folders(tmp_path):
    root = _image_tree(tmp_path, {"train": {"cat": 2, "dog": 2, "fox": 1}, "val": {"cat": 1, "fox": 2}})
    train = data.load("imagefolder", root=root, size=(8, 8))
    val = data.load("imagefolder", root=root, train=False, size=(8, 8))
    assert train.classes == val.classes == ["cat", "dog", "fox"]
    assert sorted(y for _, y in train.samples) == [0, 0, 1, 1, 2]
    assert [y for _, y in val.samples] == [0, 2, 2]  # fox keeps label 2 although val/ has no dog
    assert [val[i][1] for i in range(len(val))] == [0, 2, 2]
    assert data.info("imagefolder", root).num_classes == 3  # the folders' count, not ImageNet's 1000


@pytest.mark.parametrize("layout,match", [
    ({"train": {"cat": 1, "dog": 1}, "val": {"cat": 1, "wolf": 1}}, r"val/wolf have no counterpart in .*train"),
    ({"train": {"cat": 1, "emu": 0}, "val": {"cat": 1}}, r"without images .*train/emu"),
    ({"train": {"cat": 1, "dog": 1}, "val": {"cat": 1, "dog": 0}}, r"without images .*val/dog"),
])
def test_imagefolder_mismatched_or_empty_class_folders_are_errors(tmp_path, layout, match):
    root = _image_tree(tmp_path, layout)
    split = "val" if "val/" in match else "train"
    with pytest.raises(ValueError, match=match) as e:
        data.load("imagefolder", root=root, train=split == "train")
    assert "\n" not in str(e.value)


def test_imagefolder_info_needs_the_folders(tmp_path):
    with pytest.raises(ValueError, match="no data directory"):
        data.info("imagefolder")
    with pytest.raises(ValueError, match="class folders"):
        data.info("imagefolder", str(tmp_path))
    assert data.info("cifar10").num_classes == 10 and data.info("cifar10", str(tmp_path)).num_classes == 10


def test_digits_subset_and_info():
    ds = data.load("digits")
    x, _ = ds[0]
    assert x.shape == (1, 16, 16) and len(ds) == 1437 and len(data.load("digits", train=False)) == 360
    small = data.load("digits", subset=100)
    assert len(small) == 100 and torch.equal(small[5][0], data.load("digits", subset=100)[5][0])
    assert data.info("fashion-mnist").default_root.endswith("fashion-mnist")
    assert set(data.list_datasets()) >= {"digits", "fashion-mnist", "mnist", "cifar10", "imagefolder"}
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("imagenet21k")
    with pytest.raises(ValueError, match="subset"):
        data.load("digits", subset=0)
