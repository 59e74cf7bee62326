"""The optimizer hand-off when the architecture changes mid-training (Elhoushi et al. 2019, section 3;
``docs/math.md``, "Decomposing during training").

After ``decompose_``/``reconstruct_`` the model holds new parameter tensors (the factors, or the
rebuilt dense kernels) and has lost the replaced ones. ``rebuild_optimizer`` makes an optimizer
of the same type and hyper-parameters over exactly the model's current parameters: an unchanged
parameter (BN, excluded layers) keeps its state (momentum buffer), found by identity; a new one
starts with empty state (there is no exact mapping of momentum onto factors); a removed one is
gone. The LR is the schedule's (``Schedule.lr_at``), set by the caller every epoch, so the
schedule continues at the same epoch.
"""
from __future__ import annotations

import torch
from torch import nn


def make_optimizer(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4
                   ) -> torch.optim.SGD:
    """SGD with momentum and weight decay (the paper's defaults) over the trainable parameters."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                           momentum=momentum, weight_decay=weight_decay)


def rebuild_optimizer(old: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    """A new optimizer like ``old`` over exactly ``model``'s trainable parameters.

    Each surviving parameter stays in its group with its state; new parameters join the first
    group (its hyper-parameters, current LR included) with empty state.
    """
    current = [p for p in model.parameters() if p.requires_grad]
    group_of = {id(p): i for i, group in enumerate(old.param_groups) for p in group["params"]}
    groups = []
    for i, group in enumerate(old.param_groups):
        # model order inside each group, so a fresh optimizer over model.parameters() (a resumed
        # run's) lines up index by index with this one's state_dict
        params = [p for p in current if group_of.get(id(p), 0) == i]
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params})
    groups = [g for g in groups if g["params"]]
    new = type(old)(groups, **old.defaults)
    for p in current:
        if p in old.state:
            new.state[p] = old.state[p]
    return new
