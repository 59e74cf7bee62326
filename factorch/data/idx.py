"""MNIST and Fashion-MNIST from their IDX files (``.gz`` or raw), as distributed by their authors.

IDX format (LeCun et al.): big-endian magic ``0x00 0x00 <type> <ndim>``, then ``ndim`` uint32 sizes,
then the data; type 0x08 is uint8.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from factorch.data.registry import DatasetInfo, register_dataset
from factorch.data.arrays import ArrayDataset, check_labels

FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> Tensor:
    """The uint8 array stored in one IDX file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read IDX file {str(path)!r}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{str(path)!r} is not a uint8 IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{str(path)!r} is truncated (IDX header)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = 1
    for d in dims:
        count *= d
    if len(raw) - header != count:
        raise ValueError(f"{str(path)!r} holds {len(raw) - header} bytes, its header says {dims} ({count})")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


def _find(root: Path, stem: str, dataset: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise ValueError(f"{dataset}: expected {stem}.gz (or {stem}) in {str(root)!r}; found "
                     f"{sorted(p.name for p in root.iterdir())[:6] if root.is_dir() else 'no such directory'}")


def load_idx_pair(root: Optional[str], train: bool, dataset: str, num_classes: int = 10) -> tuple[Tensor, Tensor]:
    """(images (N, 1, H, W) uint8, labels (N,) in ``0..num_classes-1``) of one split."""
    if root is None:
        raise ValueError(f"{dataset}: no data directory given (--data-dir)")
    base = Path(root).expanduser()
    images = read_idx(_find(base, FILES[train][0], dataset))
    label_file = _find(base, FILES[train][1], dataset)
    labels = read_idx(label_file)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise ValueError(f"{dataset}: images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
    return images[:, None], check_labels(labels, num_classes, str(label_file))


@register_dataset(DatasetInfo("fashion-mnist", 10, 1, (28, 28), "/usr/share/datasets/fashion-mnist"))
def fashion_mnist(root: Optional[str], train: bool, augment: bool, size=None) -> ArrayDataset:
    """Fashion-MNIST (Xiao et al. 2017): 60k/10k 28x28 grey images of 10 clothing classes."""
    images, labels = load_idx_pair(root, train, "fashion-mnist")
    return ArrayDataset(images, labels, (0.2860,), (0.3530,), augment, pad=2, flip=True, size=size)


@register_dataset(DatasetInfo("mnist", 10, 1, (28, 28), None))
def mnist(root: Optional[str], train: bool, augment: bool, size=None) -> ArrayDataset:
    """MNIST: 60k/10k 28x28 handwritten digits (no flips: they change the digit)."""
    images, labels = load_idx_pair(root, train, "mnist")
    return ArrayDataset(images, labels, (0.1307,), (0.3081,), augment, pad=2, flip=False, size=size)
