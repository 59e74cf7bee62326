"""What every subcommand shares: loading a model, parsing ranks/methods/shapes, failing cleanly."""
from __future__ import annotations

import argparse
from typing import Optional

import torch
from torch import nn

import factorch as fc
from factorch.io import load_into, read_checkpoint
from factorch.models.spec import ModelSpec, parse_model_args
from factorch.selection import exclude_filter  # noqa: F401  (the one --exclude parser, for every subcommand)


class Loaded:
    """A model from the command line, with its example input shape (C, H, W) and source label."""

    def __init__(self, model: nn.Module, input_shape: Optional[tuple[int, ...]], source: str) -> None:
        self.model, self.input_shape, self.source = model, input_shape, source

    def example_input(self) -> torch.Tensor:
        if self.input_shape is None:
            raise ValueError("the input shape is unknown for this checkpoint; pass --input-shape C,H,W")
        ref = next(self.model.parameters(), None)
        return torch.zeros((1, *self.input_shape), dtype=ref.dtype if ref is not None else torch.float32)


MODEL_HELP = ("a zoo name (see `factorch models`), torchvision:NAME, timm:NAME, pkg.module:function or "
              "path/to/file.py:function (your own model)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?",
                   help="a factorch checkpoint (written by factorch or fc.save); with --model, the weights of that model")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--model-args", metavar="ARGS",
                   help="keyword arguments of --model's function: key=value,... or a JSON object")
    p.add_argument("--weights", help="with --model: a state_dict file (or factorch checkpoint) to load")
    p.add_argument("--num-classes", type=int, help="with --model: classes (zoo default 10; others: their own)")
    p.add_argument("--in-channels", type=int, help="with --model: input channels (zoo default 3)")
    p.add_argument("--input-shape", type=parse_shape, help="C,H,W of one example (default: the model's)")


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must be positive ints like 3,32,32")
    return shape


def load_model(args: argparse.Namespace) -> Loaded:
    """The model of the command line: ``CHECKPOINT`` (a factorch checkpoint that records how its
    architecture is built), or ``--model SPEC [--model-args A] [--weights FILE]``; ``CHECKPOINT``
    with ``--model`` holds the weights of that architecture (e.g. a file ``fc.save`` wrote from
    the user's own model)."""
    weights = args.weights
    if args.checkpoint and args.model:
        if weights:
            raise ValueError("give the weights once: CHECKPOINT or --weights FILE, not both")
        weights = args.checkpoint
    if not args.checkpoint and not args.model:
        raise ValueError(f"give a CHECKPOINT or --model ({MODEL_HELP})")
    if weights and not args.model:
        raise ValueError("--weights goes with --model")
    if not args.model:
        ckpt = read_checkpoint(args.checkpoint)
        model = fc.load(args.checkpoint)  # a checkpoint it cannot rebuild says what to pass
        shape = (ckpt.get("meta") or {}).get("input_shape")
        if shape is None and ckpt.get("arch"):
            shape = ModelSpec.from_record(ckpt["arch"], args.checkpoint).input_shape()
        return Loaded(model, args.input_shape or (tuple(shape) if shape else None), args.checkpoint)
    spec = ModelSpec.parse(args.model, parse_model_args(getattr(args, "model_args", None)))
    model = spec.build(args.num_classes, args.in_channels)
    shape = None
    if weights:
        model, meta = load_into(model, weights)
        shape = meta.get("input_shape")
    if shape is None:
        shape = spec.input_shape()
        if shape is not None and spec.source == "zoo" and args.in_channels:
            shape = (args.in_channels, *shape[1:])
    return Loaded(model, args.input_shape or (tuple(shape) if shape else None), spec.text)


def load_architecture(name: Optional[str], checkpoint: Optional[str], num_classes: Optional[int],
                      in_channels: Optional[int], model_args: Optional[str] = None) -> nn.Module:
    """``--model SPEC [--checkpoint FILE]`` (FILE: a factorch checkpoint or a state_dict) or
    ``--checkpoint FILE`` alone (a factorch checkpoint that records its architecture)."""
    if not name and not checkpoint:
        raise ValueError("give --model NAME (random init), --checkpoint FILE, or both")
    if not name:
        return fc.load(checkpoint)
    args = argparse.Namespace(checkpoint=None, model=name, weights=checkpoint, num_classes=num_classes,
                              in_channels=in_channels, input_shape=None, model_args=model_args)
    return load_model(args).model


def parse_budget(text: str, profiler: Optional[fc.Profiler] = None) -> fc.Budget:
    """``budget:macs=0.4`` | ``budget:params=0.1`` | ``budget:latency=0.5`` -> ``fc.Budget``; a
    latency budget is timed with ``profiler`` (the command's --batch, --threads, --device)."""
    kind, _, value = text.partition(":")[2].partition("=")
    if kind not in ("macs", "params", "latency") or not value:
        raise ValueError(f"rank {text!r} not understood; a budget is budget:macs=F, budget:params=F or "
                         "budget:latency=F with F a fraction in (0, 1]")
    try:
        fraction = float(value)
    except ValueError:
        raise ValueError(f"budget fraction {value!r} is not a number; use a fraction in (0, 1]") from None
    if kind == "latency":
        return fc.Budget(latency=fraction, profiler=profiler)
    return fc.Budget(**{kind: fraction})


# What --rank takes: (form, an example, what it means); the help and parse_rank's errors list them.
RANK_FORMS = (
    ("INT", "32", "that rank for every mode"),
    ("OUT,IN", "32,16", "one rank per mode (TT: one per bond)"),
    ("FRACTION", "0.25", "the fraction in (0, 1] of each layer's weights kept"),
    ("evbmf", "evbmf", "EVBMF ranks"),
    ("evbmf:WEAKEN", "evbmf:0.5", "EVBMF moved towards full rank by WEAKEN in [0, 1]"),
    ("energy:T", "energy:0.9", "keep the fraction T of the spectrum's energy"),
    ("tol:EPS", "tol:0.05", "relative error at most EPS"),
    ("budget:macs=F", "budget:macs=0.4", "whole model: at most the fraction F of the MACs"),
    ("budget:params=F", "budget:params=0.1", "whole model: at most the fraction F of the parameters"),
    ("budget:latency=F", "budget:latency=0.5", "whole model: at most the fraction F of the dense latency, measured "
     "here (at --batch, --threads, --device where the command has them)"),
)


def add_decomposition_args(p: argparse.ArgumentParser, method: str = "tucker2,svd", rank: str = "evbmf") -> None:
    """--method (its choices from the method registry) and --rank (every form it takes)."""
    p.add_argument("--method", default=method,
                   help=f"comma list, the first method that handles a layer wins; choices: "
                        f"{', '.join(sorted(fc.Method.by_name))} (default {method})")
    p.add_argument("--rank", default=rank,
                   help="; ".join(f"{form}: {meaning}" for form, _, meaning in RANK_FORMS) + f" (default {rank})")
    p.add_argument("--rank-multiple", type=int, default=1, metavar="M",
                   help="ranks chosen by a rule, a fraction or a budget are multiples of M (or a mode's full rank): "
                        "channel counts the runtime's blocked conv kernels take whole, e.g. 16 for AVX-512 CPUs "
                        "(default 1)")


def parse_rank(text: str, profiler: Optional[fc.Profiler] = None):
    """A ``--rank`` value (one of ``RANK_FORMS``) -> the rank spec of a method config; ``profiler``
    times a latency budget (default ``fc.Profiler()`` at the example input's batch)."""
    t = text.strip().lower()
    if t.startswith("budget:"):
        return parse_budget(t, profiler)
    try:
        if t == "evbmf":
            return fc.EVBMF()
        if t.startswith("evbmf:"):
            return fc.EVBMF(weaken=float(t[6:]))
        if t.startswith("energy:"):
            return fc.Energy(float(t[7:]))
        if t.startswith(("tol:", "tolerance:")):
            return fc.Tolerance(float(t.split(":", 1)[1]))
        if "," in t:
            return tuple(int(v) for v in t.split(","))
        if "." in t or "e" in t:
            return float(t)
        return int(t)
    except ValueError as e:
        if "must" in str(e):  # a rule's own validation message
            raise
    raise ValueError(f"rank {text!r} not understood; use {', '.join(form for form, _, _ in RANK_FORMS)}")


def timed_rank(args: argparse.Namespace):
    """``--rank`` of a command with timing arguments: a latency budget is timed as they say."""
    timed = args.rank.strip().lower().startswith("budget:latency")
    return parse_rank(args.rank, profiler_from(args) if timed else None)


def add_calibration_args(p: argparse.ArgumentParser, batches: int) -> None:
    """--calibration-batches, --calibration-batch-size, --[no-]sequential: data-aware factors
    (``fc.Calibration``). Their defaults are applied by ``calibration_from``, so a flag given to a
    command that calibrates nothing is seen (``calibration_flags_given``) and refused."""
    p.add_argument("--calibration-batches", type=int, metavar="N",
                   help=f"calibration batches drawn (seeded) from the data set's training split, inputs only; the "
                        f"last quarter is held out to check the data-aware factors (default {batches})")
    p.add_argument("--calibration-batch-size", type=int, metavar="B",
                   help=f"examples per calibration batch (default {CALIBRATION_BATCH})")
    p.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                   help="fit each layer to the inputs the already decomposed layers produce (Zhang et al. 2016; "
                        "default); --no-sequential fits every layer to the dense model's inputs")


CALIBRATION_BATCH = 128  # --calibration-batch-size's default


def calibration_flags_given(args: argparse.Namespace) -> list[str]:
    """The calibration flags given on the command line (for "needs --calibration" errors)."""
    return [flag for flag, value in (("--calibration-batches", args.calibration_batches),
                                     ("--calibration-batch-size", args.calibration_batch_size),
                                     ("--[no-]sequential", args.sequential)) if value is not None]


def calibration_from(args: argparse.Namespace, dataset: str, batches: int) -> fc.Calibration:
    """``fc.Calibration`` of ``--calibration-batches`` (default ``batches``) seeded batches of
    ``--calibration-batch-size`` inputs from ``dataset``'s training split (``--data-dir``); labels
    are dropped. A split smaller than asked gives fewer batches, and a note on stderr says so."""
    import sys

    import factorch.data as data

    n_batches = batches if args.calibration_batches is None else args.calibration_batches
    size = CALIBRATION_BATCH if args.calibration_batch_size is None else args.calibration_batch_size
    for flag, value in (("--calibration-batches", n_batches), ("--calibration-batch-size", size)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if n_batches * size < 2:
        raise ValueError(f"calibration needs at least 2 examples (a quarter is held out); {n_batches} batch(es) of "
                         f"{size} is {n_batches * size}")
    examples = data.load(dataset, args.data_dir, train=True, subset=n_batches * size, seed=0)
    if len(examples) < 2:
        raise ValueError(f"the training split of {dataset} has {len(examples)} example(s); calibration needs 2")
    xs = torch.stack([examples[i][0] for i in range(len(examples))])  # (n, C, H, W)
    split = list(xs.split(size))
    if len(examples) < n_batches * size:
        print(f"note: the training split of {dataset} has {len(examples):,} examples: {len(split)} calibration "
              f"batch(es) of up to {size} instead of the {n_batches:,} asked", file=sys.stderr)
    return fc.Calibration(split, sequential=args.sequential is not False)


def add_timing_args(p: argparse.ArgumentParser, batch: int) -> None:
    """--device, --batch, --threads, --runs, --warmup: how latency is measured (``fc.Profiler``)."""
    p.add_argument("--device", default="cpu", help="where to time: cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--batch", type=int, default=batch, help=f"batch size to time at (default {batch})")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads while timing (default: torch's; 1 is steadier on a shared machine)")
    p.add_argument("--runs", type=int, default=20, help="timed calls per variant; the median is kept (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument("--runtime", choices=("eager", "onnxruntime"), default="eager",
                   help="what runs the model when timing: eager PyTorch, or onnxruntime (each variant exported and "
                        "run in ONNX Runtime, the runtime `export --format onnx` ships to; needs factorch[export]) "
                        "(default eager)")


def profiler_from(args: argparse.Namespace, backward: bool = False) -> fc.Profiler:
    """The ``fc.Profiler`` for the timing arguments (``ValueError`` for a bad value or no CUDA)."""
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    return fc.Profiler(batch=args.batch, warmup=args.warmup, runs=args.runs, backward=backward,
                       device=args.device, threads=args.threads, runtime=args.runtime)


def parse_methods(names: str, rank, multiple: int = 1) -> list[fc.Method]:
    """``tucker2,svd`` -> ``[Tucker2(rank), SVD(rank)]``: the first method that handles a layer wins;
    ``multiple``: ``--rank-multiple``."""
    methods = [fc.Method.from_name(n.strip().lower(), rank, multiple) for n in names.split(",") if n.strip()]
    if not methods:
        raise ValueError("no method given; choose from " + ", ".join(sorted(fc.Method.by_name)))
    return methods
