"""torchvision's ImageNet models, registered only where torchvision is installed (never required).

ResNet-50 (He et al. 2016): 25,557,032 parameters at 1000 classes (Elhoushi et al. 2019, Table 4: 25.6 x 10^6).
torchvision itself is imported when a model is built, not when the registry is listed.
"""
from __future__ import annotations

import importlib.util

from torch import nn

from factorch.models.registry import register_model

AVAILABLE = importlib.util.find_spec("torchvision") is not None


def _resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    from torchvision.models import resnet50

    model = resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:  # same stem, other input channels
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


if AVAILABLE:
    register_model("resnet50", input_size=(224, 224), description="torchvision ImageNet ResNet-50")(_resnet50)
