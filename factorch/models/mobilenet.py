"""MobileNet-V2 (Sandler et al. 2018) in torchvision's layout, without torchvision.

Names and shapes are torchvision's ``mobilenet_v2`` (width 1.0), so its ``state_dict`` loads as it is:

* ``features.0``: 3x3/2 conv (C -> 32) + BN + ReLU6 (``features.0.0``, ``features.0.1``);
* ``features.1``..``features.17``: inverted residual blocks ``(t, c, n, s)`` = (1, 16, 1, 1),
  (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)
  (Sandler et al. 2018, Table 2): ``conv`` = [1x1 expand to t x channels + BN + ReLU6 (only when t > 1)],
  3x3 depthwise (stride s on the first block of a group) + BN + ReLU6, 1x1 linear projection + BN;
  a residual connection where stride is 1 and the width is kept;
* ``features.18``: 1x1 conv 320 -> 1280 + BN + ReLU6; global average pool; ``classifier`` =
  Dropout(0.2), Linear(1280 -> classes) (``classifier.1``).

(B, C, 224, 224) -> (B, 1280, 7, 7) -> (B, classes); 3,504,872 parameters and 0.30 GMACs at 1000
classes. Initialisation as torchvision's: He-normal convs (fan out), BN 1/0, the head N(0, 0.01), bias 0.
"""
from __future__ import annotations

from torch import Tensor, nn

from factorch.models.init import imagenet_init_
from factorch.models.registry import register_model

SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn_relu6(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation``: conv (no bias, 'same' padding) ``0``, BN ``1``, ReLU6 ``2``."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """(B, C, H, W) -> (B, c_out, H/s, W/s): expand (1x1, t C channels), depthwise 3x3, project (1x1, linear)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: list[nn.Module] = [conv_bn_relu6(c_in, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        c = 32
        features: list[nn.Module] = [conv_bn_relu6(in_channels, c, 3, 2)]
        for t, width, n, s in SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(c, width, s if i == 0 else 1, t))
                c = width
        features.append(conv_bn_relu6(c, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        imagenet_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)                                           # (B, 1280, H/32, W/32)
        return self.classifier(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("mobilenet_v2", input_size=(224, 224),
                description="ImageNet MobileNet-V2 (Sandler et al. 2018), torchvision's state_dict layout")
def mobilenet_v2(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return MobileNetV2(num_classes, in_channels)
