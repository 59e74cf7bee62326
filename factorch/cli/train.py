"""``factorch train`` and ``factorch experiment``: decomposition during training (seed 000) and
low-rank ADMM training (seed 002)."""
from __future__ import annotations

import argparse
import functools

from factorch.cli.common import add_decomposition_args, parse_methods, parse_rank
from factorch.training import TrainConfig, train
from factorch.distributed import is_main_process
from factorch.training.events import ADMMPhase, FromScratch
from factorch.training.experiment import run_experiment
from factorch.training.scenarios import FORMS, parse_scenarios

PAPER_SCENARIOS = "the paper's: original, dec@5%%, dec@10%%, dec@5%%+rec@95%%, original-then-dec+20%% of the epochs"


def _add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, help="a model from the zoo (see `factorch models`)")
    g.add_argument("--dataset", default="digits", help="digits (bundled, default), fashion-mnist, mnist, cifar10, imagefolder")
    g.add_argument("--data-dir", help="the dataset's files (default: the dataset's usual place)")
    g.add_argument("--subset", type=int, help="use N training and N test examples (quick runs)")
    g.add_argument("--no-augment", action="store_true", help="no training augmentation")
    g = p.add_argument_group("optimization (defaults: the paper's)")
    g.add_argument("--epochs", type=int, default=200, help="epochs (default 200)")
    g.add_argument("--batch-size", type=int, default=128, help="global batch size (default 128)")
    g.add_argument("--lr", type=float, default=0.1, help="initial LR, /10 at 50%% and 75%% of the epochs (default 0.1)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default 5e-4)")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds the initialisation, data order and augmentation (default 0; same seed, same run)")
    g = p.add_argument_group("decomposition (every event: --decompose-at, ADMM)")
    add_decomposition_args(g, method="tucker2", rank="evbmf")
    g.add_argument("--first-conv", action="store_true", help="decompose the first conv too (the paper leaves it dense)")
    g.add_argument("--exclude", action="append", default=[], metavar="REGEX", help="leave layers matching REGEX dense (repeatable)")
    g.add_argument("--calibration-batches", type=int, default=0, metavar="N",
                   help="data-aware factors and ranks from N training batches (inputs only, a seeded draw) at every "
                        "decomposition, ADMM's included (default 0: weight-only)")
    g = p.add_argument_group("ADMM low-rank training (Yin et al. 2021)")
    g.add_argument("--admm-rho", type=float, metavar="RHO",
                   help="penalty weight rho (default 1e-3, the official code's)")
    g.add_argument("--admm-update-every", type=int, metavar="N",
                   help="update Z and U every N optimizer steps (default: once per epoch, at its start)")
    g.add_argument("--admm-rho-growth", type=float, metavar="F", help="multiply rho by F at every update (default 1)")
    g = p.add_argument_group("execution")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    g.add_argument("--amp", action="store_true", help="mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="the memory format (default: channels_last for conv models on CPU and CUDA, where it is "
                        "faster; --no-channels-last: NCHW)")
    g.add_argument("--keep-if-faster", action=argparse.BooleanOptionalAction, default=True,
                   help="at a decomposition, time each layer dense and factorized (forward+backward at the training "
                        "batch) and keep it dense where factorizing is not faster (default on)")
    g.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    g.add_argument("--resume", action="store_true", help="continue the run(s) in --out from the last finished epoch")


def _admm(args: argparse.Namespace) -> functools.partial:
    """``ADMMPhase`` with the ADMM options given (call it with the ADMM end epoch)."""
    given = {"rho": args.admm_rho, "update_every": args.admm_update_every, "rho_growth": args.admm_rho_growth}
    return functools.partial(ADMMPhase, **{k: v for k, v in given.items() if v is not None})


def _admm_options_given(args: argparse.Namespace) -> list[str]:
    return [flag for flag, v in (("--admm-rho", args.admm_rho), ("--admm-update-every", args.admm_update_every),
                                 ("--admm-rho-growth", args.admm_rho_growth)) if v is not None]


def _config(args: argparse.Namespace, **events) -> TrainConfig:
    return TrainConfig(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        methods=tuple(parse_methods(args.method, parse_rank(args.rank))), first_conv=args.first_conv,
        exclude=tuple(args.exclude), calibration_batches=args.calibration_batches, subset=args.subset,
        augment=not args.no_augment, amp=args.amp, channels_last=args.channels_last,
        keep_if_faster=args.keep_if_faster, device=args.device, workers=args.workers, seed=args.seed, **events)


NEGATABLE = ("channels_last", "keep_if_faster")  # --x / --no-x options: False is written as --no-x


def _command(args: argparse.Namespace, parser_name: str, skip: tuple[str, ...] = ()) -> str:
    """The command line that reproduces this run, from the parsed values."""
    parts = ["factorch", parser_name]
    for key, value in vars(args).items():
        if key in ("run", "command", *skip) or value is None or value == [] or \
                (value is False and key not in NEGATABLE):
            continue
        flag = "--" + key.replace("_", "-")
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
    _add_run_args(p)
    p.add_argument("--decompose-at", type=int, metavar="K", help="decompose after K epochs")
    p.add_argument("--reconstruct-at", type=int, metavar="M", help="back to the dense architecture after M epochs")
    p.add_argument("--admm-until", type=int, metavar="K",
                   help="ADMM towards the --method/--rank ranks for the first K epochs, then decompose at exactly "
                        "those ranks and train on")
    p.add_argument("--factorized-from-scratch", action="store_true",
                   help="factorize every layer the --method/--rank handle before the first step, with fresh "
                        "factors (ranks: an int, a tuple, a fraction or budget:...; not evbmf/energy/tol)")
    p.add_argument("--out", help="run directory (default runs/MODEL-DATASET)")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    if args.admm_until is None and _admm_options_given(args):
        raise ValueError(f"{', '.join(_admm_options_given(args))} need(s) --admm-until K")
    events = (_admm(args)(args.admm_until),) if args.admm_until is not None else ()
    events += (FromScratch(),) if args.factorized_from_scratch else ()
    cfg = _config(args, decompose_at=args.decompose_at, reconstruct_at=args.reconstruct_at, events=events)
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
                       description="Train every scenario (" + FORMS + ") and write OUT/results.md, "
                                   "OUT/results.csv and OUT/figure.png (accuracy vs training time).")
    _add_run_args(p)
    p.add_argument("--scenarios", help=f"comma list of {FORMS} (default {PAPER_SCENARIOS})")
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
    scenarios = parse_scenarios(args.scenarios or paper_scenarios(args.epochs), args.epochs, admm=_admm(args))
    if _admm_options_given(args) and not any(s.events for s in scenarios):
        raise ValueError(f"{', '.join(_admm_options_given(args))} apply to admm@K scenarios; none given")
    out = args.out or f"runs/experiment-{args.model}-{args.dataset}"
    result = run_experiment(base, scenarios, out, resume=args.resume,
                            command=_command(args, "experiment", skip=("resume", "device", "workers")))
    if is_main_process():
        print(result.table.read_text())
        print(f"wrote {result.table}, {result.csv}, {result.figure}")
    return 0
