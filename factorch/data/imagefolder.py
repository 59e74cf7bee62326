"""ImageNet-style folders: ``ROOT/train/CLASS/*.jpg`` and ``ROOT/val/CLASS/*.jpg`` (torchvision's
``ImageFolder`` layout), decoded with Pillow on access.

One class index for both splits: the sorted class folders of ``train/`` (label i is the i-th
name in both splits, so a class missing from ``val/`` cannot shift the others). A ``val/`` class
that ``train/`` lacks, or a class folder without images, is an error naming the folders.

Training: random crop of the image resized so its shorter side is size*8/7, plus a flip;
test: the same resize and a centre crop (the usual 256 -> 224 protocol), ImageNet mean/std.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset

from factorch.data.registry import DatasetInfo, register_dataset

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def class_folders(split: Path) -> list[str]:
    """The sorted class folder names of one split directory."""
    if not split.is_dir():
        raise ValueError(f"imagefolder: expected a directory of class folders at {str(split)!r} "
                         "(the layout is ROOT/train/CLASS/IMAGE and ROOT/val/CLASS/IMAGE)")
    names = sorted(p.name for p in split.iterdir() if p.is_dir())
    if not names:
        raise ValueError(f"imagefolder: no class folders in {str(split)!r}")
    return names


def training_classes(root: Optional[str]) -> list[str]:
    """The class index of both splits: the class folders of ``ROOT/train``."""
    if root is None:
        raise ValueError("imagefolder: no data directory given (--data-dir ROOT with train/ and val/)")
    return class_folders(Path(root).expanduser() / "train")


def _images(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.rglob("*")) if f.suffix.lower() in EXTENSIONS and f.is_file()]


class ImageFolder(Dataset):
    """The images under ``split/CLASS/`` for the given class index ``classes`` (label = position)."""

    def __init__(self, split: Path, classes: list[str], augment: bool, size: tuple[int, int]) -> None:
        present = class_folders(split)
        unknown = [c for c in present if c not in classes]
        if unknown:
            raise ValueError(f"imagefolder: class folder(s) {', '.join(str(split / c) for c in unknown)} have no "
                             f"counterpart in {str(split.parent / 'train')!r}; the training folders define the "
                             f"classes ({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")
        label = {c: i for i, c in enumerate(classes)}
        found = {c: _images(split / c) for c in present}
        empty = [str(split / c) for c, files in found.items() if not files]
        if empty:
            raise ValueError(f"imagefolder: class folder(s) without images ({', '.join(sorted(EXTENSIONS))}): "
                             f"{', '.join(empty)}")
        self.classes = list(classes)
        self.samples = [(f, label[c]) for c in present for f in found[c]]
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
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # what Pillow raises
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


@register_dataset(DatasetInfo("imagefolder", None, 3, (224, 224), None),
                  count_classes=lambda root: len(training_classes(root)))
def imagefolder(root: Optional[str], train: bool, augment: bool, size=None) -> ImageFolder:
    """Both splits labelled by the training class folders (``classes``)."""
    classes = training_classes(root)
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ValueError("imagefolder needs Pillow (pip install pillow)") from None
    split = Path(root).expanduser() / ("train" if train else "val")
    return ImageFolder(split, classes, augment, tuple(size or (224, 224)))
