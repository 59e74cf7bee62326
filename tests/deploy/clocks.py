"""Fake clocks for the deploy step's measured choices: each makes one form of a layer the fastest
(a test never asserts a wall-clock time)."""
from torch import nn

from factorch.deploy.pad import Padded
from factorch.layers.base import FactorizedLayer


def kernels(module: nn.Module) -> int:
    """Convs and linears a module runs (a factorized layer's factors count one each)."""
    return sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for m in module.modules()) or 1


def form_of(module: nn.Module) -> str:
    """What ``fc.deploy_`` timed: a factorized layer, a padded chain, a merged chain (plain convs in
    a Sequential) or one dense layer; anything else (a whole model) is ``"model"``."""
    if isinstance(module, Padded):
        return "padded"
    if isinstance(module, FactorizedLayer):
        return "factorized"
    if isinstance(module, nn.Sequential) and all(not any(True for _ in m.children()) for m in module):
        return "merged"
    if not any(True for _ in module.children()):
        return "dense"
    return "model"


def preferring(form: str):
    """A clock under which ``form`` is the fastest form of every layer (and a whole model takes 1 s)."""
    def clock(module, run):
        run()
        return 0.5 if form_of(module) == form else 1.0
    return clock


def by_kernels(module, run):
    """A clock charging 1 ms per conv or linear the module runs (fewer, larger kernels win)."""
    run()
    return 1e-3 * kernels(module)
