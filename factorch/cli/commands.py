"""The subcommands: decompose, count, reconstruct, models (and the others' registration)."""
from __future__ import annotations

import argparse

import factorch as fc
from factorch.registry import MIN_SHARE
from factorch.cli.common import add_calibration_args, add_decomposition_args, add_model_args, add_timing_args, \
    calibration_flags_given, calibration_from, exclude_filter, load_model, parse_methods, profiler_from, timed_rank


def add_decompose(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decompose", help="factorize a model's layers and write a factorch checkpoint",
                       description="Decompose CHECKPOINT (or --model NAME) and write the small model to -o.")
    add_model_args(p)
    add_decomposition_args(p)
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                   help="leave layers whose name fully matches REGEX dense (repeatable)")
    p.add_argument("--keep-if-faster", action="store_true",
                   help="time each layer dense and factorized (--device, --batch) and keep the faster")
    p.add_argument("--min-share", type=float, default=MIN_SHARE, metavar="S",
                   help=f"leave dense the layers whose cost is below this share of the model's MACs (default "
                        f"{MIN_SHARE:g}; 0: every layer a method handles)")
    add_timing_args(p, batch=1)
    p.add_argument("--calibration", metavar="DATASET",
                   help="fit the factors to the outputs on this data set's training images (data-aware, with a "
                        "held-out check against weight-only factors); with --model, the input channels, size and "
                        "classes default to the data set's")
    add_calibration_args(p, batches=8)
    p.add_argument("--data-dir", help="with --calibration: where the data set's files are (default: its usual place)")
    p.add_argument("-o", "--output", required=True, help="where to write the decomposed checkpoint")
    p.set_defaults(run=run_decompose, in_channels=None, num_classes=None)


def run_decompose(args: argparse.Namespace) -> int:
    from factorch.measure.bench import require_decomposed
    from factorch.files import check_writable

    methods = parse_methods(args.method, timed_rank(args), args.rank_multiple)
    exclude_filter(args.exclude)  # a bad regex or output directory fails before any work
    check_writable(args.output)
    if args.calibration and args.model:  # the model takes the data set's images unless told otherwise
        import factorch.data as data

        info = data.info(args.calibration)
        args.in_channels = args.in_channels or info.in_channels
        args.num_classes = args.num_classes or info.num_classes
        args.input_shape = args.input_shape or (args.in_channels, *info.input_size)
    args.in_channels, args.num_classes = args.in_channels or 3, args.num_classes or 10
    if not args.calibration and calibration_flags_given(args):
        raise ValueError(f"{', '.join(calibration_flags_given(args))} need(s) --calibration DATASET (without it the "
                         "factors are fitted to the weights alone)")
    calibration = calibration_from(args, args.calibration, batches=8) if args.calibration else None
    loaded = load_model(args)
    keep = exclude_filter(args.exclude, loaded.model)
    timing = profiler_from(args) if args.keep_if_faster else False
    report = fc.decompose_(loaded.model, methods, filter_fn=keep, example_input=loaded.example_input(),
                           keep_if_faster=timing, calibration=calibration, min_share=args.min_share)
    print(report)
    require_decomposed(report, f"nothing was written to {args.output}")  # an unchanged copy is no result
    fc.save(loaded.model, args.output, meta={"input_shape": list(loaded.input_shape)})
    print(f"wrote {args.output}")
    return 0


def add_count(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("count", help="params and MACs per layer",
                       description="Count parameters and MACs (per example) of CHECKPOINT or --model NAME.")
    add_model_args(p)
    p.add_argument("--total", action="store_true", help="print only the totals")
    p.set_defaults(run=run_count)


def run_count(args: argparse.Namespace) -> int:
    loaded = load_model(args)
    counts = fc.count(loaded.model, loaded.example_input())
    shape = "x".join(map(str, loaded.input_shape))
    if not args.total:
        print(counts)
    print(f"{loaded.source}: {counts.params:,} params, {counts.macs:,} MACs per {shape} example")
    return 0


def add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="rebuild the dense layers of a decomposed checkpoint",
                       description="Multiply every factorized layer back into its dense layer (lossless).")
    add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="where to write the dense checkpoint")
    p.set_defaults(run=run_reconstruct)


def run_reconstruct(args: argparse.Namespace) -> int:
    loaded = load_model(args)
    names = fc.reconstruct_(loaded.model)
    meta = {"input_shape": list(loaded.input_shape)} if loaded.input_shape else {}
    fc.save(loaded.model, args.output, meta=meta)
    print(f"reconstructed {len(names)} layer(s); wrote {args.output}")
    return 0


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    p.set_defaults(run=run_models)


def run_models(args: argparse.Namespace) -> int:
    for name in fc.models.list_models():
        e = fc.models.entry(name)
        print(f"{name:<12} {e.input_size[0]}x{e.input_size[1]}  {e.description}")
    return 0


from factorch.cli.bench import add_bench  # noqa: E402  (the measuring subcommands)
from factorch.cli.compress import add_compress  # noqa: E402
from factorch.cli.export import add_export  # noqa: E402
from factorch.cli.sweep import add_sweep  # noqa: E402
from factorch.cli.train import add_experiment, add_train  # noqa: E402  (the training subcommands)

COMMANDS = [add_decompose, add_count, add_reconstruct, add_export, add_models, add_train, add_experiment, add_compress,
            add_sweep, add_bench]
