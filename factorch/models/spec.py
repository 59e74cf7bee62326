"""How a model is built, from a string any command takes (``--model``), and recorded in checkpoints.

| ``--model``                  | built by                                                       |
|------------------------------|----------------------------------------------------------------|
| ``resnet20``                 | factorch's zoo (``factorch.models.create``)                    |
| ``torchvision:resnet18``     | ``torchvision.models.get_model(name, weights=None, **kwargs)`` |
| ``timm:resnet50``            | ``timm.create_model(name, pretrained=False, **kwargs)``        |
| ``mypkg.models:make_net``    | the user's importable function, called with ``**kwargs``       |
| ``path/to/net.py:make_net``  | the function of that file, called with ``**kwargs``            |

``kwargs`` (``--model-args``) are plain values (numbers, strings, booleans, None, lists, dicts).
Nothing is downloaded: pretrained weights come from a file (``--weights``). The built model
carries ``model.factorch_arch`` (``ModelSpec.record``), which ``fc.save`` stores, so a checkpoint
of a zoo, torchvision or timm model is rebuilt from the file alone. A model built by the user's
own code is recorded too, but never rebuilt from a file: a checkpoint that names code to run could
run anything (``subprocess:run`` with crafted arguments), so ``load`` says what to pass instead.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from torch import nn

PACKAGES = {"torchvision": "torchvision", "timm": "timm"}  # source -> the package it needs
MAX_SIZE = 1 << 24  # the largest class or channel count a recorded architecture may declare


@dataclass(frozen=True)
class ModelSpec:
    """``source``: "zoo", "torchvision", "timm" or "code"; ``name``: the zoo or package model name,
    or ``module:function`` / ``file.py:function``; ``kwargs``: keyword arguments (plain values)."""

    source: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, kwargs: Optional[dict[str, Any]] = None) -> "ModelSpec":
        """The spec of a ``--model`` value (see the module docstring); a malformed one is one
        ``ValueError`` listing the forms."""
        text = text.strip()
        kwargs = plain_kwargs(kwargs or {}, f"--model-args of {text!r}")
        package, sep, rest = text.partition(":")
        if sep and package in PACKAGES:
            if not rest:
                raise ValueError(f"--model {text!r} names no model after '{package}:'")
            return cls(package, rest, kwargs)
        if sep:
            if not re.fullmatch(r"[A-Za-z_]\w*", rest):
                raise ValueError(f"--model {text!r}: after ':' comes the function that builds the model, e.g. "
                                 "mypkg.models:make_net or path/to/net.py:make_net")
            return cls("code", text, kwargs)
        if not text:
            raise ValueError("--model is empty; give a zoo name (see `factorch models`), torchvision:NAME, timm:NAME, "
                             "pkg.module:function or path/to/file.py:function")
        return cls("zoo", text, kwargs)

    def build(self, num_classes: Optional[int] = None, in_channels: Optional[int] = None) -> nn.Module:
        """A freshly initialised model (never pretrained) with ``factorch_arch`` set. ``num_classes``
        / ``in_channels`` (from a dataset or the command line) go to zoo models, and to the
        others where their builder takes them and ``kwargs`` does not set them."""
        if self.source == "zoo":
            from factorch.models import create

            other = sorted(set(self.kwargs) - {"num_classes", "in_channels"})
            if other:
                raise ValueError(f"zoo model {self.name!r} takes num_classes and in_channels only, got {other}")
            return create(self.name, self.kwargs.get("num_classes", num_classes or 10),
                          self.kwargs.get("in_channels", in_channels or 3))
        builder = self._builder()
        given = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
                 if v is not None and k not in self.kwargs and _accepts(builder, k)}
        if in_channels not in (None, 3) and "in_channels" not in {**given, **self.kwargs}:
            raise ValueError(f"--model {self.text} does not take in_channels, and {in_channels} input channels would "
                             "need another first layer: build it in your own function (pkg.module:function)")
        try:
            model = builder(**self.kwargs, **given)
        except TypeError as e:  # a keyword the builder does not take: the user's to fix
            raise ValueError(f"--model {self.text}: {e}") from None
        if not isinstance(model, nn.Module):
            raise ValueError(f"--model {self.text} returned a {type(model).__name__}, not a torch.nn.Module")
        model.factorch_arch = ModelSpec(self.source, self.name, {**self.kwargs, **given}).record()
        return model

    @property
    def text(self) -> str:
        """As ``--model`` spells it."""
        return self.name if self.source in ("zoo", "code") else f"{self.source}:{self.name}"

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores for a model not from the zoo (plain data; the zoo's own
        ``create`` records its models)."""
        return {"source": self.source, "name": self.name, "kwargs": dict(self.kwargs)}

    def _builder(self) -> Callable[..., nn.Module]:
        if self.source in PACKAGES:
            package = PACKAGES[self.source]
            if importlib.util.find_spec(package) is None:
                raise ValueError(f"--model {self.text} needs {package}, which is not installed here "
                                 f"(pip install {package}); or pass your own model: pkg.module:function")
            if self.source == "torchvision":
                models = importlib.import_module("torchvision.models")
                known = models.list_models()
                make = lambda **kw: models.get_model(self.name, weights=None, **kw)  # noqa: E731
            else:
                timm = importlib.import_module("timm")
                known = timm.list_models()
                make = lambda **kw: timm.create_model(self.name, pretrained=False, **kw)  # noqa: E731
            if self.name not in known:
                near = [n for n in known if self.name.split("_")[0] in n][:8]
                raise ValueError(f"{package} has no model {self.name!r}" + (f"; e.g. {', '.join(near)}" if near else ""))
            return make
        where, _, function = self.name.rpartition(":")
        module = _load_file(where) if where.endswith(".py") else _import(where)
        builder = getattr(module, function, None)
        if not callable(builder):
            raise ValueError(f"--model {self.name}: {where} has no function {function!r}")
        return builder

    def input_shape(self) -> Optional[tuple[int, ...]]:
        """One example's shape (C, H, W) where it is known: the zoo entry's, 224x224 RGB for
        torchvision/timm image classifiers; None for user code (``--input-shape`` then)."""
        if self.source == "zoo":
            from factorch.models import entry

            return (int(self.kwargs.get("in_channels", 3)), *entry(self.name).input_size)
        if self.source in PACKAGES and not any(k in self.name for k in ("r3d", "mc3", "r2plus1d", "s3d", "mvit")):
            return (3, 224, 224)
        return None

    @classmethod
    def from_record(cls, arch: Any, source: str) -> "ModelSpec":
        """The spec a checkpoint records (``record``), its fields checked: a crafted file must not
        reach a constructor with values of the wrong kind."""
        if not isinstance(arch, dict):
            raise ValueError(f"{source!r}: malformed architecture entry {arch!r}")
        try:
            if "source" not in arch:  # a zoo model (also every checkpoint written before other sources)
                name, num_classes, in_channels = arch["name"], arch["num_classes"], arch["in_channels"]
                if not isinstance(name, str) or any(isinstance(v, bool) or not isinstance(v, int) or
                                                    not 0 < v <= MAX_SIZE for v in (num_classes, in_channels)):
                    raise ValueError(f"not a model name with class and channel counts in 1..{MAX_SIZE}")
                return cls("zoo", name, {"num_classes": num_classes, "in_channels": in_channels})
            kind, name, kwargs = arch["source"], arch["name"], arch.get("kwargs", {})
            if kind not in (*PACKAGES, "code") or not isinstance(name, str):
                raise ValueError("unknown source")
            return cls(kind, name, plain_kwargs(kwargs, "its kwargs"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source!r}: malformed architecture entry {arch!r} ({e})") from None

    def refusal(self, source: str) -> str:
        """Why a checkpoint of a model built by the user's code is not rebuilt from the file, and
        what to pass instead (see the module docstring)."""
        args = json.dumps(self.kwargs) if self.kwargs else ""
        return (f"{source!r} was built by your code ({self.name}); factorch never runs code that a file names: pass "
                f"--model {self.name}" + (f" --model-args '{args}'" if args else "") +
                " (in Python: fc.load(path, model=your_model))")


def parse_model_args(text: Optional[str]) -> dict[str, Any]:
    """``--model-args``: a JSON object (``'{"depth": 18}'``) or ``key=value`` pairs separated by
    commas (``depth=18,width=0.5``; values are Python literals, else strings)."""
    if not text or not text.strip():
        return {}
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--model-args {text!r} is not a JSON object: {e}") from None
        if not isinstance(value, dict):
            raise ValueError(f"--model-args {text!r} must be a JSON object")
        return plain_kwargs(value, "--model-args")
    out: dict[str, Any] = {}
    for part in text.split(","):
        key, eq, raw = part.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ValueError(f"--model-args {text!r}: {part!r} is not key=value (or give a JSON object)")
        try:
            out[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()
    return plain_kwargs(out, "--model-args")


def plain_kwargs(kwargs: Any, what: str) -> dict[str, Any]:
    """``kwargs`` if it is a dict of identifiers to plain values (what a checkpoint can store)."""
    def plain(v: Any) -> bool:
        if v is None or isinstance(v, (bool, int, str)):
            return True
        if isinstance(v, float):
            return math.isfinite(v)
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        return isinstance(v, dict) and all(isinstance(k, str) and plain(x) for k, x in v.items())

    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise ValueError(f"{what}: keyword arguments must be a dict of names to values, got {kwargs!r}")
    bad = [k for k, v in kwargs.items() if not plain(v)]
    if bad:
        raise ValueError(f"{what}: {bad[0]}={kwargs[bad[0]]!r} is not a plain value (numbers, strings, booleans, "
                         "None, lists, dicts)")
    return dict(kwargs)


def _accepts(builder: Callable[..., Any], name: str) -> bool:
    """Whether ``builder`` takes keyword ``name`` (or any keyword)."""
    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"--model {module}:...: cannot import {module!r} ({e}); is it installed, or on PYTHONPATH?") from None


def _load_file(path: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--model {path}:...: {path!r} is not a file")
    spec = importlib.util.spec_from_file_location(f"factorch_user_model_{abs(hash(file.resolve()))}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file: any error it raises is theirs, named in one line
        raise ValueError(f"--model {path}:...: running {path!r} failed: {type(e).__name__}: {e}") from None
    return module
