"""CIFAR ResNet-20/32/44/56/110 (He et al. 2016, section 4.2; the Idelbayev implementation).

Three stages of n basic blocks (16, 32, 64 channels), depth 6n + 2; the shortcut across a stride-2
block is "option A": subsample by 2 and zero-pad the new channels (no parameters).
ResNet-20: 0.27M parameters, ResNet-56: 0.85M (Elhoushi et al. 2019, Table 3: 853 x 10^3).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from factorch.models.registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: (B, C, H, W) -> (B, C + 2p, H/2, W/2), zeros in the p new channels each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = PadShortcut((c_out - c_in) // 2) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, c = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(c, width, stride if i == 0 else 1))
                c = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))                  # (B, 16, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))         # (B, 64, H/4, W/4)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _register(depth: int) -> None:
    @register_model(f"resnet{depth}", description=f"CIFAR ResNet-{depth} (option-A shortcuts)")
    def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels)


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
