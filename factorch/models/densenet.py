"""CIFAR DenseNet-40 (Huang et al. 2017, k = 12; the network-slimming implementation Elhoushi et al. use).

Depth 40 = 3 dense blocks of 12 layers + 1 first conv + 2 transitions + 1 classifier. No bottleneck,
no compression: a dense layer is BN-ReLU-Conv3x3(c -> k) whose output is concatenated to its input,
a transition is BN-ReLU-Conv1x1(c -> c)-AvgPool2d(2). 1,059,298 parameters at 10 classes (Elhoushi et al. 2019,
Table 2: 1.06 x 10^6); 456 channels reach the classifier.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorch.models.registry import register_model


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 producing ``growth`` new channels, concatenated after the input's."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)  # (B, c_in + growth, H, W)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1 (same width: no compression), then 2x2 average pooling."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, c, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)  # (B, c, H/2, W/2)


class DenseNet(nn.Module):
    def __init__(self, depth: int = 40, growth: int = 12, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 3:
            raise ValueError(f"DenseNet depth must be 3n + 4, got {depth}")
        n = (depth - 4) // 3
        c = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        for stage in range(3):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            blocks.append(nn.Sequential(*layers))
            if stage < 2:
                blocks.append(Transition(c))
        self.features = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He init as in the original Lua/PyTorch code
                kh, kw = m.kernel_size
                m.weight.data.normal_(0, math.sqrt(2.0 / (kh * kw * m.out_channels)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.conv1(x))                 # (B, 456, H/4, W/4) for DenseNet-40
        x = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1)  # (B, 456, 1, 1)
        return self.fc(x.flatten(1))


@register_model("densenet40", description="CIFAR DenseNet-40, k=12, no bottleneck/compression")
def densenet40(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return DenseNet(40, 12, num_classes, in_channels)
