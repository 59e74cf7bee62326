"""``factorch train`` and ``factorch experiment``: decomposition during training (Elhoushi et al.
2019), low-rank ADMM training (Yin et al. 2021), factorized layers from scratch: every registered
training event, with the flags it declares (``factorch.cli.events``)."""
from __future__ import annotations

import argparse

from factorch.cli.common import MODEL_HELP, add_decomposition_args
from factorch.cli.events import add_event_args, events_from_flags, flag_of, settings_for, unused_options
from factorch.distributed import is_main_process
from factorch.models.spec import parse_model_args
from factorch.training import TrainConfig, train
from factorch.training.experiment import run_experiment
from factorch.training.scenarios import forms, parse_scenarios

PAPER_SCENARIOS = "the paper's: original, dec@5%%, dec@10%%, dec@5%%+rec@95%%, original-then-dec+20%% of the epochs"


def add_data_args(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    """The model (and the trained weights to start from) and the data set."""
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=model_required, help=MODEL_HELP)
    g.add_argument("--model-args", metavar="ARGS",
                   help="keyword arguments of --model's function: key=value,... or a JSON object")
    g.add_argument("--weights", metavar="FILE",
                   help="start from these trained weights (a state_dict or a factorch checkpoint) instead of a "
                        "random init")
    g.add_argument("--dataset", default="digits", help="digits (bundled, default), fashion-mnist, mnist, cifar10, imagefolder")
    g.add_argument("--data-dir", help="the dataset's files (default: the dataset's usual place)")
    g.add_argument("--subset", type=int, help="use N training and N test examples (quick runs)")
    g.add_argument("--no-augment", action="store_true", help="no training augmentation")


def add_optimizer_args(g: argparse._ArgumentGroup, lr: float = 0.1) -> None:
    """SGD's settings (the epochs are the caller's: ``train``'s --epochs, ``compress``'s phases)."""
    g.add_argument("--batch-size", type=int, default=128, help="global batch size (default 128)")
    g.add_argument("--lr", type=float, default=lr, help=f"initial LR, /10 at 50%% and 75%% of the epochs (default {lr:g})")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default 5e-4)")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds the initialisation, data order and augmentation (default 0; same seed, same run)")


def add_execution_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    g.add_argument("--amp", action="store_true", help="mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="the memory format (default: channels_last for conv models on CPU and CUDA, where it is "
                        "faster; --no-channels-last: NCHW)")
    g.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    g.add_argument("--resume", action="store_true", help="continue the run(s) in --out from the last finished epoch")


def _add_run_args(p: argparse.ArgumentParser, command: str) -> None:
    add_data_args(p)
    g = p.add_argument_group("optimization (defaults: Elhoushi et al. 2019's)")
    g.add_argument("--epochs", type=int, default=200, help="epochs (default 200)")
    add_optimizer_args(g)
    g = p.add_argument_group("decomposition (every event that decomposes)")
    add_decomposition_args(g, method="tucker2", rank="evbmf")
    add_event_args(p, with_flags=command == "train")
    add_execution_args(p)


def _config(args: argparse.Namespace, events: tuple = ()) -> TrainConfig:
    return TrainConfig(
        model=args.model, model_args=parse_model_args(args.model_args), weights=args.weights, dataset=args.dataset,
        data_dir=args.data_dir, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        subset=args.subset, augment=not args.no_augment, amp=args.amp, channels_last=args.channels_last,
        device=args.device, workers=args.workers, seed=args.seed, events=events)


NEGATABLE = ("channels_last", "keep_if_faster", "first_conv")  # --x / --no-x options: False is written as --no-x


def _command(args: argparse.Namespace, parser_name: str, skip: tuple[str, ...] = ()) -> str:
    """The command line that reproduces this run, from the parsed values."""
    parts = ["factorch", parser_name]
    for key, value in vars(args).items():
        if key in ("run", "command", *skip) or value is None or value == [] or \
                (value is False and key not in NEGATABLE):
            continue
        flag = flag_of(key)
        if value is False and key in NEGATABLE:
            parts.append("--no-" + flag[2:])
        elif value is True:
            parts.append(flag)
        else:
            for v in value if isinstance(value, list) else [value]:
                parts += [flag, str(v)]
    return " ".join(parts)


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model, decomposing it during training",
                       description="Train from scratch; optionally decompose at epoch K and reconstruct at M "
                                   "(Elhoushi et al. 2019), or train with ADMM towards the target ranks for K "
                                   "epochs, then decompose (Yin et al. 2021). Metrics per epoch in "
                                   "OUT/metrics.jsonl, a checkpoint each epoch (--resume), the final model in "
                                   "OUT/model.pt. Under torchrun: DDP.")
    _add_run_args(p, "train")
    p.add_argument("--out", help="run directory (default runs/MODEL-DATASET)")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    events = events_from_flags(args)
    unused = unused_options(args, events)
    if unused:
        raise ValueError(unused)
    cfg = _config(args, events)
    out = args.out or f"runs/{args.model}-{args.dataset}"
    history = train(cfg, out, resume=args.resume)
    if history and is_main_process():
        best = max(r["test_acc"] for r in history)
        last = history[-1]
        print(f"best test acc {best:.2%}, final {last['test_acc']:.2%}, {last['params']:,} params, "
              f"{last['macs']:,} MACs, training time {last['time']:.1f} s; wrote {out}/metrics.jsonl, {out}/model.pt")
    return 0


def add_experiment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run the paper's scenarios and write its table and figure",
                       description="Train every scenario (" + forms() + ") and write OUT/results.md, "
                                   "OUT/results.csv and OUT/figure.png (accuracy vs training time).")
    _add_run_args(p, "experiment")
    p.add_argument("--scenarios", help=f"comma list of {forms()} (default {PAPER_SCENARIOS})")
    p.add_argument("--out", help="experiment directory (default runs/experiment-MODEL-DATASET)")
    p.set_defaults(run=run_experiment_cmd)


def paper_scenarios(epochs: int) -> str:
    """The paper's scenarios scaled to ``epochs`` (200 -> dec@10, dec@20, dec@10+rec@190, +40)."""
    k1, k2 = max(1, round(0.05 * epochs)), max(2, round(0.10 * epochs))
    rec, extra = round(0.95 * epochs), max(1, round(0.2 * epochs))
    items = ["original", f"dec@{k1}"] + ([f"dec@{k2}"] if k2 < epochs else []) + \
        ([f"dec@{k1}+rec@{rec}"] if k1 < rec < epochs else []) + [f"original-then-dec+{extra}"]
    return ",".join(items)


def run_experiment_cmd(args: argparse.Namespace) -> int:
    base = _config(args)
    scenarios = parse_scenarios(args.scenarios or paper_scenarios(args.epochs), args.epochs, settings_for(args))
    unused = unused_options(args, [e for s in scenarios for e in s.events], scenarios=True)
    if unused:
        raise ValueError(unused)
    out = args.out or f"runs/experiment-{args.model}-{args.dataset}"
    result = run_experiment(base, scenarios, out, resume=args.resume,
                            command=_command(args, "experiment", skip=("resume", "device", "workers")))
    if is_main_process():
        print(result.table.read_text())
        print(f"wrote {result.table}, {result.csv}, {result.figure}")
    return 0
