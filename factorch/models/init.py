"""The initialisation torchvision gives its ImageNet classifiers, shared by the zoo's ImageNet models
(random weights for benchmarks and tests; trained ones come from a file)."""
from __future__ import annotations

from typing import Optional

from torch import nn


def imagenet_init_(model: nn.Module, linear_std: Optional[float] = 0.01) -> None:
    """Convs: He normal init (He et al. 2015) over the fan-out, zero bias; batch norms: weight 1,
    bias 0; linear layers: ``N(0, linear_std^2)``, zero bias (None: PyTorch's default, as
    torchvision's ResNets keep it)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)
