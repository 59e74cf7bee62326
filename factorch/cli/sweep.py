"""``factorch sweep``: decompose single layers at a range of ranks; CSV + Markdown + Cao 2022's panels (PNG)."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Callable

import torch

from factorch.cli.common import add_calibration_args, add_timing_args, calibration_flags_given, calibration_from, \
    load_architecture, profiler_from
from factorch.measure.results import check_output_dir, csv_environment, environment, markdown_table, write_csv, \
    write_markdown


def _ranks(text: str) -> tuple[str, list[int]]:
    """``8,16,32`` (every method) or ``cp=8,16,32`` (one method) -> (method or "", ranks)."""
    method, _, values = text.rpartition("=")
    try:
        return method.strip().lower(), [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of ints like 8,16,32 "
                                         "(or METHOD=8,16,32)") from None


def _rank_grid(given: list[tuple[str, list[int]]], methods: list[str]) -> dict[str, list[int]]:
    """Per method: its own --ranks METHOD=... list, else the plain --ranks list."""
    default = [r for m, ranks in given if not m for r in ranks] if any(not m for m, _ in given) else None
    grid = {m: ranks for m, ranks in given if m}
    return {**{m: default for m in methods if default is not None}, **grid}


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="rank sweep of single layers: params, speed-up, error, accuracy",
                       description="For each layer, method and rank, decompose only that layer of a trained "
                                   "model and record the parameter reduction, the measured layer speed-up, the "
                                   "relative approximation error and the test accuracy (before and after "
                                   "fine-tuning). Writes OUT.csv, OUT.md and OUT.png (four panels per layer "
                                   "and method).")
    p.add_argument("--model", help="architecture from the zoo (see `factorch models`)")
    p.add_argument("--checkpoint", help="trained weights: a factorch checkpoint or a state_dict file")
    p.add_argument("--dataset", required=True, help="test data set: fashion-mnist, mnist, cifar10, digits, ...")
    p.add_argument("--data-dir", help="where the data set's files are (default: its usual place)")
    p.add_argument("--layers", required=True, type=_names, help="comma list of layer names, e.g. features.3,features.27")
    p.add_argument("--method", required=True, type=_names, help="comma list: cp, tucker2 (svd for 1x1/linear)")
    p.add_argument("--ranks", required=True, type=_ranks, action="append",
                   help="comma list of ranks for every method (8,16,32,64), or for one method "
                        "(cp=8,32,128; repeatable)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="epochs of fine-tuning after each decomposition")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="fine-tuning learning rate (SGD, momentum 0.9, weight decay 5e-4; default 0.001)")
    p.add_argument("--test-subset", type=int, help="evaluate on this many test examples (seeded; default all)")
    p.add_argument("--train-subset", type=int, help="fine-tune on this many training examples (seeded; default all)")
    p.add_argument("--data-batch", type=int, default=128, help="batch size for evaluation and fine-tuning")
    add_timing_args(p, batch=32)
    add_calibration_args(p, batches=0)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output prefix: writes OUT.csv, OUT.md, OUT.png")
    p.set_defaults(run=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    import factorch.data as data
    from factorch.measure import sweep
    from factorch.measure.plots import sweep_panels

    if args.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if args.calibration_batches is not None and args.calibration_batches < 0:
        raise ValueError(f"--calibration-batches must be >= 0 (0: no data-aware columns), got {args.calibration_batches}")
    if not args.calibration_batches and calibration_flags_given(args)[1:]:
        raise ValueError(f"{', '.join(calibration_flags_given(args)[1:])} need(s) --calibration-batches N (the "
                         "data-aware columns)")
    check_output_dir(args.output)
    info = data.info(args.dataset, args.data_dir)
    shape = (info.in_channels, *info.input_size)
    model = load_architecture(args.model, args.checkpoint, info.num_classes, info.in_channels)
    grid = _rank_grid(args.ranks, args.method)
    sweep.check_sweep(model, args.layers, args.method, grid)  # bad input fails before any work
    profiler = profiler_from(args)
    device = torch.device(args.device)
    model = model.to(device)
    evaluate, finetune = _data_callables(args, data, device)
    calibration = calibration_from(args, args.dataset, batches=0) if args.calibration_batches else None
    rows = sweep.sweep(model, args.layers, args.method, grid,
                       example_input=torch.zeros((1, *shape), device=device), evaluate=evaluate,
                       finetune=finetune if args.finetune_epochs else None,
                       finetune_epochs=args.finetune_epochs, profiler=profiler, calibration=calibration)
    env = environment(args.device, threads=args.threads)
    table = _markdown_table(rows)
    notes = [f"speed-up: forward latency of the layer alone (eval mode, no grad), batch {profiler.batch}, "
             f"median of {profiler.runs} interleaved runs after {profiler.warmup} warm-up calls",
             "accuracy: top-1 on the test split" + (f" ({args.test_subset} seeded examples)" if args.test_subset else ""),
             "error: ||W - W_hat||_F / ||W||_F (Cao 2022, Eq. 14)"]
    if calibration is not None:
        notes.append(f"{calibration.describe()} (training split); data-aware: the same layer and ranks decomposed with "
                     "calibration=, accuracy right after; factors: which the held-out check kept")
    if args.device == "cpu":
        notes.append("measured on a CPU shared with other jobs: latencies are noisy; ratios are side by side")
    write_csv(f"{args.output}.csv", [asdict(r) for r in rows], env=csv_environment(env))
    write_markdown(f"{args.output}.md", f"Rank sweep: {', '.join(args.layers)}", env, table, notes=notes)
    sweep_panels([asdict(r) for r in rows], f"{args.output}.png",
                 title=f"{args.model or args.checkpoint} on {args.dataset}: single-layer rank sweep")
    print(table)
    print(f"wrote {args.output}.csv, {args.output}.md, {args.output}.png")
    return 0


def _data_callables(args: argparse.Namespace, data, device: torch.device) -> tuple[Callable, Callable]:
    from torch.utils.data import DataLoader

    from factorch.training import evaluate, make_optimizer, train_epoch

    test = data.load(args.dataset, args.data_dir, train=False, subset=args.test_subset)
    test_loader = DataLoader(test, batch_size=args.data_batch, shuffle=False)

    def finetune(model: torch.nn.Module) -> None:
        train = data.load(args.dataset, args.data_dir, train=True, subset=args.train_subset)
        loader = DataLoader(train, batch_size=args.data_batch, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        optimizer = make_optimizer(model, args.lr)
        for _ in range(args.finetune_epochs):
            train_epoch(model, loader, optimizer, device=device)

    return (lambda model: evaluate(model, test_loader, device=device)), finetune


def _markdown_table(rows) -> str:
    calibrated = any(r.factors for r in rows)
    head = ["layer", "method", "rank", "ranks", "params x", "MACs x", "speed-up x", "rel. error",
            "acc %", "acc after FT %"] + (["acc data-aware %", "factors kept"] if calibrated else []) + ["note"]
    pct = lambda v: "-" if v != v else f"{100 * v:.2f}"  # NaN -> "-"
    num = lambda v, f: "-" if v != v else format(v, f)
    cells = [[r.layer, r.method, str(r.rank), r.ranks, num(r.param_reduction, ".2f"), num(r.mac_reduction, ".2f"),
              num(r.speedup, ".2f"), num(r.error, ".4f"), pct(r.accuracy), pct(r.accuracy_finetuned)] +
             ([pct(r.accuracy_data_aware), r.factors] if calibrated else []) + [r.note] for r in rows]
    dense = rows[0].accuracy_dense if rows else float("nan")
    return f"Dense model test accuracy: {pct(dense)}%\n\n" + markdown_table(head, cells)
