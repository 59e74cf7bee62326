"""CIFAR VGG with batch norm (the network-slimming variant used by Elhoushi et al.).

Conv 3x3 (no bias) + BN + ReLU per entry of the config, 2x2 max-pool at "M", global average pool,
one linear classifier. VGG-19: 20.04M parameters at 10 classes (Elhoushi et al. 2019, Table 1: 20 x 10^6).
Global *adaptive* pooling instead of the original ``AvgPool2d(2)`` is the same on 32x32 inputs and
also accepts 28x28 ones (Fashion-MNIST).
"""
from __future__ import annotations

from torch import Tensor, nn

from factorch.models.registry import register_model

CONFIGS: dict[str, list] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
    # six convs, 16-64 channels (72.7K params, 7.3M MACs at 28x28): `make demo`'s model, small enough
    # for a couple of minutes on the bundled digits
    "vgg-small": [16, 16, "M", 32, 32, "M", 64, 64],
    # seven convs, 32-256 channels (1.17M params, 29.9M MACs at 28x28): wide enough that its convs,
    # not batch norm and ReLU, dominate a CPU training step -- the Fashion-MNIST experiment's model
    "vgg7": [32, "M", 64, 64, "M", 128, 128, "M", 256, 256],
}


class VGG(nn.Module):
    def __init__(self, config: list, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x))  # (B, 512, 1, 1)
        return self.classifier(x.flatten(1))


def _register(name: str) -> None:
    @register_model(name, description=f"CIFAR-style {name.upper()} with batch norm")
    def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return VGG(CONFIGS[name], num_classes, in_channels)


for _name in CONFIGS:
    _register(_name)
