"""The dataset registry's table: ``DatasetInfo``, ``register_dataset`` (a decorator the dataset
files use) and the entries."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch.utils.data import Dataset


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: Optional[int]  # None: counted from the files (``info(name, root)``)
    in_channels: int
    input_size: tuple[int, int]  # (H, W) of the loaded images unless ``size`` is given
    default_root: Optional[str]  # where the files usually are; None when bundled or user-given


Loader = Callable[..., Dataset]
ClassCounter = Callable[[Optional[str]], int]
DATASETS: dict[str, tuple[DatasetInfo, Loader, Optional[ClassCounter]]] = {}


def register_dataset(info_: DatasetInfo, count_classes: Optional[ClassCounter] = None) -> Callable[[Loader], Loader]:
    """Decorator: ``loader(root, train, augment, size) -> Dataset`` registered under ``info_.name``;
    ``count_classes(root)`` when ``info_.num_classes`` is None (the files decide)."""
    if (info_.num_classes is None) != (count_classes is not None):
        raise ValueError(f"dataset {info_.name!r}: give num_classes or count_classes, exactly one")

    def add(loader: Loader) -> Loader:
        DATASETS[info_.name] = (info_, loader, count_classes)
        return loader

    return add
