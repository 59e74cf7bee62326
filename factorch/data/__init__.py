"""Datasets by name: ``load(name, root, train, subset, augment, size)``, ``info(name)``, ``list_datasets()``.

Every dataset yields ``(x, y)``: ``x`` a float tensor (C, H, W) normalised with the dataset's mean
and std, ``y`` an int class. Files are read from disk only (nothing is downloaded); a wrong path or
format raises one ``ValueError`` naming what was expected.

| name          | source on disk                                   | default size |
|---------------|--------------------------------------------------|--------------|
| digits        | scikit-learn's bundled 8x8 digits (no files)     | 16x16        |
| fashion-mnist | IDX .gz files (Debian: dataset-fashion-mnist)    | 28x28        |
| mnist         | IDX .gz files                                    | 28x28        |
| cifar10       | the python batches directory (cifar-10-batches-py) | 32x32      |
| imagefolder   | ROOT/{train,val}/CLASS/IMAGE (ImageNet style)    | 224x224      |

A dataset whose class count depends on its files (``imagefolder``: one class per training
folder) registers ``num_classes=None`` and a ``count_classes(root)``; ``info(name, root)`` reports
the count for that data directory.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from torch.utils.data import Dataset

from factorch.data.registry import DATASETS, ClassCounter, DatasetInfo, Loader, register_dataset


def list_datasets() -> list[str]:
    _load_builtin()
    return sorted(DATASETS)


def info(name: str, root: Optional[str] = None) -> DatasetInfo:
    """What dataset ``name`` holds. Where the class count depends on the files (imagefolder),
    they are read from ``root`` (default ``default_root``) and counted."""
    meta, _, count_classes = _entry(name)
    if count_classes is None:
        return meta
    return replace(meta, num_classes=count_classes(root or meta.default_root))


def load(name: str, root: Optional[str] = None, train: bool = True, subset: Optional[int] = None,
         augment: bool = False, size: Optional[tuple[int, int]] = None, seed: int = 0) -> Dataset:
    """The train or test split of dataset ``name``.

    ``root``: the data directory (default ``info(name).default_root``); ``subset``: keep a seeded
    random ``subset`` examples (quick runs); ``augment``: the dataset's standard training
    augmentation (random crop with padding, horizontal flip where it makes sense), drawn from
    torch's global RNG so a resumed run replays it; ``size``: resize images to (H, W).
    """
    meta, loader, _ = _entry(name)
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise ValueError(f"subset must be a positive int, got {subset!r}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (H, W) with positive ints, got {size!r}")
    dataset = loader(root=root or meta.default_root, train=train, augment=augment, size=size)
    if subset is not None and subset < len(dataset):
        from factorch.data.arrays import seeded_subset

        dataset = seeded_subset(dataset, subset, seed)
    return dataset


def _entry(name: str) -> tuple[DatasetInfo, Loader, Optional[ClassCounter]]:
    _load_builtin()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def _load_builtin() -> None:
    from factorch.data import cifar, digits, idx, imagefolder  # noqa: F401  (registration)


__all__ = ["DatasetInfo", "info", "list_datasets", "load", "register_dataset"]
