"""ImageNet ResNet-18 and ResNet-50 (He et al. 2016) in torchvision's layout, without torchvision.

The module names, parameter and buffer shapes are torchvision's (``torchvision.models.resnet18`` /
``resnet50``), so a torchvision ``state_dict`` loads as it is (``--weights``):

* stem ``conv1`` 7x7/2 (C -> 64) ``bn1`` ``relu`` ``maxpool`` 3x3/2: (B, C, 224, 224) -> (B, 64, 56, 56);
* ``layer1``..``layer4``: 2, 2, 2, 2 ``BasicBlock`` (3x3, 3x3) for ResNet-18, 3, 4, 6, 3
  ``Bottleneck`` (1x1 reduce, 3x3, 1x1 expand x4) for ResNet-50, widths 64, 128, 256, 512; the first
  block of layers 2-4 has stride 2 and every block whose input and output differ has a projection
  shortcut ``downsample`` (1x1 conv with the stride, BN); (B, 512 e, 7, 7) out of ``layer4`` (e = 1 or 4);
* ``avgpool`` (global) and ``fc`` (512 e -> classes).

The bottleneck's stride sits on its 3x3 conv (torchvision's "v1.5"; the paper's v1 puts it on the
first 1x1): 4.09 GMACs per 224x224 image for ResNet-50 instead of 3.86. Parameters at 1000 classes:
ResNet-18 11,689,512; ResNet-50 25,557,032 (torchvision's model cards). Initialisation as torchvision's:
He-normal convs (fan out), BN weight 1 and bias 0, the default ``nn.Linear`` head.
"""
from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn

from factorch.models.init import imagenet_init_
from factorch.models.registry import register_model


def _downsample(c_in: int, c_out: int, stride: int) -> Optional[nn.Sequential]:
    """The projection shortcut ``downsample.0`` (1x1 conv, stride) ``downsample.1`` (BN), where needed."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """3x3 (stride) - BN - ReLU - 3x3 - BN, plus the shortcut, ReLU: (B, C, H, W) -> (B, width, H/s, W/s)."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(c_in, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 (C -> width) - 3x3 (stride) - 1x1 (width -> 4 width), each with BN, ReLU between, plus the
    shortcut, ReLU: (B, C, H, W) -> (B, 4 width, H/s, W/s)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


Block = Union[type[BasicBlock], type[Bottleneck]]


class ResNet(nn.Module):
    """See the module docstring; ``blocks``: blocks per stage (``layer1``..``layer4``)."""

    def __init__(self, block: Block, blocks: tuple[int, int, int, int], num_classes: int = 1000,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stage = []
            for j in range(n):
                stage.append(block(c, width, 2 if i > 0 and j == 0 else 1))
                c = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        imagenet_init_(self, linear_std=None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))                # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))           # (B, 512 e, H/32, W/32)
        return self.fc(self.avgpool(x).flatten(1))


@register_model("resnet18", input_size=(224, 224),
                description="ImageNet ResNet-18 (He et al. 2016), torchvision's state_dict layout")
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@register_model("resnet50", input_size=(224, 224),
                description="ImageNet ResNet-50 (He et al. 2016; v1.5: stride on the 3x3), torchvision's state_dict layout")
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)
