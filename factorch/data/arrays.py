"""In-memory image datasets: uint8 images normalised on access, with standard augmentation."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset


class ArrayDataset(Dataset):
    """``images`` uint8 (N, C, H, W), ``labels`` int64 (N,); ``x = (images / 255 - mean) / std``.

    ``augment``: random crop after zero-padding by ``pad`` pixels, and a horizontal flip with
    probability 1/2 when ``flip``; randomness from torch's global RNG.
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float],
                 augment: bool = False, pad: int = 4, flip: bool = True,
                 size: Optional[tuple[int, int]] = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if size is not None and tuple(images.shape[-2:]) != tuple(size):
            resized = F.interpolate(images.float(), size=tuple(size), mode="bilinear", align_corners=False)
            images = resized.round().clamp(0, 255).to(torch.uint8)
        self.images, self.labels = images, labels.to(torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment, self.pad, self.flip = augment, pad, flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = self.images[i].float().div_(255.0)  # (C, H, W) in [0, 1]
        if self.augment:
            x = random_crop_flip(x, self.pad, self.flip)
        return (x - self.mean) / self.std, int(self.labels[i])


def check_labels(labels: Tensor, num_classes: int, source: str) -> Tensor:
    """``labels`` (int64) if every one is a class index ``0..num_classes-1``; otherwise one error
    naming ``source`` (the file), the first bad value and the valid range. Checked when the data
    is loaded: a bad label would otherwise crash (or, below 0, silently wrap) mid-training."""
    labels = labels.to(torch.int64)
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{source!r}: label {int(labels[i])} (example {i}; {len(bad)} out of range in all) is not "
                         f"a class index; expected 0..{num_classes - 1} ({num_classes} classes)")
    return labels


def random_crop_flip(x: Tensor, pad: int, flip: bool) -> Tensor:
    """Zero-pad by ``pad``, crop back to the original size at a random offset, maybe flip."""
    _, h, w = x.shape
    if pad:
        i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
        x = F.pad(x, (pad, pad, pad, pad))[:, i:i + h, j:j + w]
    if flip and torch.rand(()) < 0.5:
        x = x.flip(-1)
    return x


def seeded_subset(dataset: Dataset, n: int, seed: int) -> Subset:
    """``n`` examples drawn without replacement by a seeded permutation (same subset every run)."""
    g = torch.Generator().manual_seed(seed)
    return Subset(dataset, torch.randperm(len(dataset), generator=g)[:n].tolist())
