"""CIFAR-10 from the standard python batches directory (``cifar-10-batches-py``).

The batches are pickles of ``{b"data": uint8 (10000, 3072), b"labels": [int]}``. They are read
with an unpickler that accepts only the numpy array reconstruction they need: a tampered file that
asks for any other callable is refused instead of executing it.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from factorch.data.registry import DatasetInfo, register_dataset
from factorch.data.arrays import ArrayDataset, check_labels

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]
CLASSES = 10
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes; pure function
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) in 0..9) from one python batch file."""
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{str(path)!r} is not a CIFAR-10 python batch ({e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{str(path)!r} is not a CIFAR-10 python batch (no b'data'/b'labels')")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{str(path)!r}: data {data.shape} / labels {labels.shape}, expected (N, 3072) / (N,)")
    check_labels(torch.from_numpy(labels), CLASSES, str(path))
    return data.reshape(-1, 3, 32, 32), labels


@register_dataset(DatasetInfo("cifar10", CLASSES, 3, (32, 32), None))
def cifar10(root: Optional[str], train: bool, augment: bool, size=None) -> ArrayDataset:
    """CIFAR-10: 50k/10k 32x32 colour images, 10 classes; standard crop(4)+flip augmentation."""
    if root is None:
        raise ValueError("cifar10: no data directory given (--data-dir DIR/cifar-10-batches-py)")
    base = Path(root).expanduser()
    names = TRAIN if train else TEST
    missing = [n for n in names if not (base / n).is_file()]
    if missing:
        raise ValueError(f"cifar10: expected the python batches {', '.join(names)} in {str(base)!r} "
                         f"(the cifar-10-batches-py directory); missing {', '.join(missing)}")
    parts = [read_batch(base / n) for n in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return ArrayDataset(images, labels, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                        augment, pad=4, flip=True, size=size)
