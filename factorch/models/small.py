"""Small models for 28x28 gray images: LeNet-5 and the LeNet-300-100 MLP.

* LeNet-5 (LeCun et al. 1998, with ReLU and max pooling): conv5x5 1->6 (padding 2 so 28x28 inputs
  keep the classic 28x28 C1 maps), pool, conv5x5 6->16, pool, 400 -> 120 -> 84 -> classes:
  61,706 parameters at 10 classes.
* MLP (LeNet-300-100): 784 -> 300 -> 100 -> classes, 266,610 parameters at 10 classes.

Both pool adaptively to the size their classifier expects (the identity at 28x28), so other input
sizes (the 8x8 digits, 32x32 CIFAR) also run.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from factorch.models.registry import register_model


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)        # (B, 6, 14, 14) at 28x28
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)        # (B, 16, 5, 5)
        x = F.adaptive_avg_pool2d(x, 5).flatten(1)        # (B, 400)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class MLP(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, side: int = 28,
                 hidden: tuple[int, ...] = (300, 100)) -> None:
        super().__init__()
        self.side = side
        widths = [in_channels * side * side, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(x, self.side).flatten(1)  # (B, C * 28 * 28)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.fc(x)


@register_model("lenet5", input_size=(28, 28), description="LeNet-5 (ReLU, max pooling) for 28x28 images")
def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet5(num_classes, in_channels)


@register_model("mlp", input_size=(28, 28), description="LeNet-300-100 MLP for 28x28 images")
def mlp(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return MLP(num_classes, in_channels)
