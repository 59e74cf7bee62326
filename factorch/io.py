"""Save and load decomposed models: one file with the weights and the factorization spec.

The file is a plain ``torch.save`` of a dict of tensors, strings, numbers, lists and dicts:

    {"format": "factorch", "version": 1, "arch": {"name", "num_classes", "in_channels"} | None,
     "factorized": [{"name", "class", "config", "rank"}, ...], "state_dict": {...}, "meta": {...}}

Loading uses ``torch.load(weights_only=True)``: no pickled code is ever executed, and a file that
needs code to load (e.g. a whole pickled ``nn.Module``) is refused with a clear error; the declared
structure is checked against the tensors present before anything is allocated. Files are written
through ``factorch.files`` (atomic: never half-written).
"""
from __future__ import annotations

import copy
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from factorch.files import atomic_save
from factorch.layers.base import FactorizedLayer, skip_init
from factorch.models.spec import ModelSpec
from factorch.surgery import get_module, swap, walk

FORMAT, VERSION = "factorch", 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, foreign or inconsistent with the model."""


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with one clear error per failure."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist" if not p.exists()
                              else f"checkpoint {str(p)!r} is not a file")
    if not zipfile.is_zipfile(p):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(f"{str(p)!r} is not a torch checkpoint (not a torch.save zip archive)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{str(p)!r} needs code to load: it pickles a Python object{what}, e.g. a whole nn.Module, "
            "and factorch never runs pickled code; save model.state_dict() instead"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{str(p)!r} is not a readable torch checkpoint ({str(e).splitlines()[0][:120]})") from None


def factorization_spec(model: nn.Module) -> list[dict[str, Any]]:
    """One entry per factorized layer: name, class name, constructor config and ranks."""
    return [{"name": name, "class": type(m).__name__, **m.spec()}
            for name, m in walk(model) if isinstance(m, FactorizedLayer)]


def save(model: nn.Module, path: str | os.PathLike, meta: Optional[dict[str, Any]] = None) -> None:
    """Write ``model``'s weights, its factorization spec and its architecture name (models made
    by ``factorch.models.create``) to ``path``, atomically. A model ``fc.deploy_`` changed (batch
    norms folded, factors merged) is refused: a checkpoint could not rebuild it; export it instead."""
    if getattr(model, "factorch_deployed", False):
        raise ValueError("this model was deployed (fc.deploy_: batch norms folded, factors merged), which a checkpoint "
                         "cannot rebuild: save it before deploying, or export it (fc.export)")
    atomic_save({
        "format": FORMAT,
        "version": VERSION,
        "arch": getattr(model, "factorch_arch", None),
        "factorized": factorization_spec(model),
        "state_dict": model.state_dict(),
        "meta": dict(meta or {}),
    }, path)


def apply_spec(model: nn.Module, spec: list[dict[str, Any]]) -> None:
    """Replace the dense layers named in ``spec`` by empty factorized layers of the given structure
    (same device/dtype); built completely before the swap. Their factors are not initialised
    (``layers.base.skip_init``): every caller loads weights into them next."""
    replacements = {}
    for entry in spec:
        try:
            name, cls_name, config, rank = entry["name"], entry["class"], entry["config"], entry["rank"]
        except (KeyError, TypeError):
            raise CheckpointError(f"malformed factorization entry {entry!r}") from None
        cls = FactorizedLayer.registry.get(cls_name)
        if cls is None:
            raise CheckpointError(f"unknown factorized layer class {cls_name!r} in the checkpoint")
        try:
            dense = get_module(model, name)
        except ValueError:
            raise CheckpointError(f"the checkpoint factorizes layer {name!r}, which this model does not have") from None
        ref = next(dense.parameters(), None)
        if not isinstance(rank, (list, tuple)) or not rank:
            raise CheckpointError(f"malformed ranks {rank!r} for layer {name!r} in the checkpoint")
        ranks = tuple(rank)
        try:
            # what this model's layer would give (on meta: no memory) must be the stored config,
            # before anything of the stored config's size is allocated
            with torch.device("meta"):
                expected = cls.empty_at(dense, ranks, **cls.options(config)).spec()["config"]
            if expected != config:
                raise CheckpointError(f"layer {name!r} of this model does not match the checkpoint's {cls_name} "
                                      f"(model: {expected}, checkpoint: {config})")
            with torch.device(ref.device if ref is not None else "cpu"), skip_init():  # the weights come next
                layer = cls(**config, rank=ranks)
        except (TypeError, ValueError, AttributeError, RuntimeError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"cannot rebuild {cls_name} at {name!r}: {e}") from None
        replacements[name] = layer.to(dtype=ref.dtype) if ref is not None else layer
    swap(model, replacements)


def load(path: str | os.PathLike, model: Optional[nn.Module] = None) -> nn.Module:
    """Load a checkpoint written by ``save``.

    Without ``model``, the architecture is rebuilt from the registry name stored in the file;
    with ``model`` (a fresh instance of the architecture, dense), a copy of it gets the stored
    factorization and weights; ``model`` itself is not changed. Returns the loaded model.
    """
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a factorch checkpoint (a plain state_dict? "
                              "load it into a model with model.load_state_dict, or use the CLI's --model NAME --weights FILE)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r} has factorch checkpoint version {ckpt.get('version')!r}; this factorch reads {VERSION}")
    spec, state = ckpt.get("factorized", []), ckpt.get("state_dict")
    if model is None:
        build = _architecture(ckpt.get("arch"), str(path))
        with torch.device("meta"):  # the declared structure, without memory, must fit the tensors present
            skeleton = build()
            apply_spec(skeleton, spec)
        check_weights(skeleton, state, str(path))
        model = build()
    else:
        model = copy.deepcopy(model)
    apply_spec(model, spec)
    load_weights(model, state, str(path))
    return model


def _architecture(arch: Any, source: str) -> Callable[[], nn.Module]:
    """A builder for the architecture a checkpoint records (``factorch.models.spec``: zoo,
    torchvision and timm models; a model built by the user's code is refused with what to pass)."""
    if not arch:
        raise CheckpointError(f"{source!r} stores no architecture (saved from a model factorch did not build): pass "
                              "--model NAME|pkg.module:function|file.py:function with this file as --weights (in "
                              "Python: fc.load(path, model=your_model))")
    try:
        spec = ModelSpec.from_record(arch, source)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if spec.source == "code":
        raise CheckpointError(spec.refusal(source))

    def build() -> nn.Module:
        try:
            return spec.build()
        except (ValueError, RuntimeError) as e:
            raise CheckpointError(f"{source!r}: cannot build its architecture {spec.text}: {e}") from None

    return build


def load_into(model: nn.Module, path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` with the weights of ``path``: a factorch checkpoint (its factorization applied to
    a copy of ``model``: ``load(path, model=model)``), a state_dict, or a training checkpoint
    holding one under ``"state_dict"``. Returns the model and the checkpoint's ``meta`` ({} for a
    state_dict). Weights that do not fit are one ``CheckpointError`` and ``model`` is untouched."""
    state = read_checkpoint(path)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        return load(path, model=model), dict(state.get("meta") or {})
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a common training-checkpoint layout
    load_weights(model, state, str(path))
    return model, {}


def load_weights(model: nn.Module, state: Any, source: str) -> None:
    """``model.load_state_dict(state)`` after checking names and shapes, so a mismatch is one line
    naming the first offending keys (and the model is not touched)."""
    check_weights(model, state, source)
    model.load_state_dict(state)


def check_weights(model: nn.Module, state: Any, source: str) -> None:
    """``state`` (from ``source``) has exactly ``model``'s tensor names and shapes; else one
    ``CheckpointError`` naming the first offending keys. ``model`` may be on the meta device."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source!r} holds no state_dict (a dict of tensors)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    problems = [f"{label} {len(keys)} (e.g. {', '.join(keys[:3])})"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)) if keys]
    if problems:
        raise CheckpointError(f"weights in {source!r} do not fit {type(model).__name__}: {'; '.join(problems)}")
