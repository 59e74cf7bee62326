"""scikit-learn's bundled digits: 1,797 8x8 grey images, 10 classes; needs no download.

Split 80/20 by a fixed seeded permutation. Upsampled to 16x16 by default so every zoo model
(VGG's four max-pools included) can take it; ``size`` chooses another size.
"""
from __future__ import annotations

from typing import Optional

import torch

from factorch.data.registry import DatasetInfo, register_dataset
from factorch.data.arrays import ArrayDataset


@register_dataset(DatasetInfo("digits", 10, 1, (16, 16), None))
def digits(root: Optional[str], train: bool, augment: bool, size=None) -> ArrayDataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("the digits dataset needs scikit-learn (pip install 'factorch[demo]')") from None
    d = load_digits()
    images = torch.tensor(d.images * (255.0 / 16.0)).round().to(torch.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(labels))
    keep = perm[:cut] if train else perm[cut:]
    # mean/std of the 16x16 upsampled training split
    return ArrayDataset(images[keep], labels[keep], (0.3050,), (0.3184,), augment, pad=1, flip=False,
                        size=size or (16, 16))
