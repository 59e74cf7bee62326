"""ImageNet-style folders: ``ROOT/train/CLASS/*.jpg`` and ``ROOT/val/CLASS/*.jpg`` (torchvision's
``ImageFolder`` layout), decoded with Pillow on access. Classes are the sorted sub-directory names.

Training: random crop of the image resized so its shorter side is size*8/7, plus a flip;
test: the same resize and a centre crop (the usual 256 -> 224 protocol), ImageNet mean/std.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

from factorch.data import DatasetInfo, register_dataset

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageFolder(Dataset):
    def __init__(self, root: Path, augment: bool, size: tuple[int, int]) -> None:
        if not root.is_dir():
            raise ValueError(f"imagefolder: expected a directory of class folders at {str(root)!r}")
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.samples = [(f, i) for i, c in enumerate(self.classes) for f in sorted((root / c).rglob("*"))
                        if f.suffix.lower() in EXTENSIONS]
        if not self.samples:
            raise ValueError(f"imagefolder: no images ({', '.join(sorted(EXTENSIONS))}) in class folders under {str(root)!r}")
        self.augment, self.size = augment, size
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                h, w = self.size
                scale = max(h, w) * 8 / 7 / min(img.size)
                img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.BILINEAR)
                x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)
        except OSError as e:
            raise ValueError(f"imagefolder: cannot decode {str(path)!r}: {e}") from None
        x = x.permute(2, 0, 1).float().div_(255.0)  # (3, H', W')
        top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
        if self.augment:
            top = int(torch.randint(0, x.shape[1] - h + 1, ()))
            left = int(torch.randint(0, x.shape[2] - w + 1, ()))
        x = x[:, top:top + h, left:left + w]
        if self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x - self.mean) / self.std, label


@register_dataset(DatasetInfo("imagefolder", 1000, 3, (224, 224), None))
def imagefolder(root: Optional[str], train: bool, augment: bool, size=None) -> ImageFolder:
    """``num_classes`` in the info is ImageNet's; the dataset's ``classes`` attribute has the real list."""
    if root is None:
        raise ValueError("imagefolder: no data directory given (--data-dir ROOT with train/ and val/)")
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ValueError("imagefolder needs Pillow (pip install pillow)") from None
    return ImageFolder(Path(root).expanduser() / ("train" if train else "val"), augment, tuple(size or (224, 224)))
