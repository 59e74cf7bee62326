"""ImageNet VGG-16 (Simonyan and Zisserman 2015, configuration D), with and without batch norm, in
torchvision's layout (``vgg16`` / ``vgg16_bn``), without torchvision.

The zoo's ``vgg16`` is the CIFAR variant (one linear head on 512 channels); this one has
torchvision's names and shapes, so its ``state_dict`` loads as it is:

* ``features``: 13 3x3 convs (with bias) + [BN] + ReLU, 2x2 max-pool after each of the five
  groups (64, 128, 256, 512, 512 channels): (B, C, 224, 224) -> (B, 512, 7, 7);
* ``avgpool``: adaptive average pool to 7x7 (the identity at 224x224);
* ``classifier``: Linear(25088 -> 4096), ReLU, Dropout, Linear(4096 -> 4096), ReLU, Dropout,
  Linear(4096 -> classes) (``classifier.0``, ``.3``, ``.6``).

138,357,544 parameters (138,365,992 with batch norm) and 15.5 GMACs per 224x224 image at 1000
classes. Initialisation as torchvision's: He-normal convs (fan out), bias 0, BN 1/0, linear N(0, 0.01).
"""
from __future__ import annotations

from torch import Tensor, nn

from factorch.models.init import imagenet_init_
from factorch.models.registry import register_model

CONFIG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGGImageNet(nn.Module):
    def __init__(self, batch_norm: bool, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in CONFIG_D:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            layers += [nn.BatchNorm2d(v)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
            c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(dropout), nn.Linear(4096, num_classes))
        imagenet_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))  # (B, 512, 7, 7)
        return self.classifier(x.flatten(1))


@register_model("vgg16_imagenet", input_size=(224, 224),
                description="ImageNet VGG-16 (configuration D), torchvision's vgg16 state_dict layout")
def vgg16_imagenet(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return VGGImageNet(False, num_classes, in_channels)


@register_model("vgg16_bn_imagenet", input_size=(224, 224),
                description="ImageNet VGG-16 with batch norm, torchvision's vgg16_bn state_dict layout")
def vgg16_bn_imagenet(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return VGGImageNet(True, num_classes, in_channels)
