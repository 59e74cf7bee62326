"""``factorch bench``: dense vs factorized vs rebuilt-dense latency per layer and for the model."""
from __future__ import annotations

import argparse
from dataclasses import asdict

import torch

from factorch.cli.common import add_decomposition_args, add_timing_args, exclude_filter, load_architecture, parse_methods, parse_shape, profiler_from, timed_rank
from factorch.measure.results import check_output_dir, csv_environment, environment, write_csv, write_markdown
from factorch.progress import echo


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measured vs theoretical speed-up, per layer and for the whole model",
                       description="Decompose a copy of the model and time, per decomposed layer and for the "
                                   "whole model, the dense, factorized and rebuilt-dense forms (forward, and "
                                   "forward+backward), next to the theoretical MAC speed-up. Random-init "
                                   "weights give EVBMF rank 0: use --checkpoint or a fixed rank (e.g. 0.25).")
    p.add_argument("--model", help="architecture from the zoo (see `factorch models`)")
    p.add_argument("--checkpoint", help="trained weights: a factorch checkpoint or a state_dict file")
    p.add_argument("--num-classes", type=int, default=10, help="with --model (default 10)")
    p.add_argument("--in-channels", type=int, default=3, help="with --model (default 3)")
    p.add_argument("--input-shape", type=parse_shape, help="C,H,W of one example (default: the model's)")
    add_decomposition_args(p)
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX", help="leave matching layers dense")
    p.add_argument("--forward-only", action="store_true", help="do not time forward+backward")
    add_timing_args(p, batch=128)
    p.add_argument("-o", "--output", metavar="OUT", help="also write OUT.csv and OUT.md")
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from factorch.measure import bench
    from factorch.models.spec import ModelSpec

    methods = parse_methods(args.method, timed_rank(args), args.rank_multiple)
    exclude_filter(args.exclude)  # a bad regex fails before any work
    if args.output:
        check_output_dir(args.output)
    profiler = profiler_from(args, backward=not args.forward_only)
    model = load_architecture(args.model, args.checkpoint, args.num_classes, args.in_channels)
    arch = getattr(model, "factorch_arch", None)
    shape = args.input_shape or (ModelSpec.from_record(arch, "the model").input_shape() if arch else None)
    if shape is None:
        raise ValueError("the input shape of this model is unknown; pass --input-shape C,H,W")
    model = model.to(args.device).eval()
    keep = exclude_filter(args.exclude, model)
    measured = bench.Bench(model, methods, torch.zeros((1, *shape), device=args.device), keep)
    print(measured.report)
    print()
    table = bench.TextTable(measured.labels(), train=profiler.backward)
    print(table.header(), flush=True)
    rows = []
    for row in measured.rows(profiler):  # each row as soon as it is measured: a long bench is never silent
        echo(table.line(row))
        rows.append(row)
    if args.output:
        env = environment(args.device, threads=args.threads)
        notes = [f"batch {profiler.batch}; median of {profiler.runs} interleaved runs after {profiler.warmup} "
                 "warm-up calls; forward in eval mode without grad, train = forward+backward in train mode",
                 "MACs x: theoretical speed-up (dense / factorized MACs); fwd x / train x: measured dense / factorized",
                 "rebuilt: the dense layer multiplied back from the factors (same shape as dense)"]
        if args.device == "cpu":
            notes.append("CPU shared with other jobs while measuring: absolute times are noisy; ratios are side by side")
        write_csv(f"{args.output}.csv", [asdict(r) for r in rows], env=csv_environment(env))
        title = f"Latency: {args.model or args.checkpoint}, {args.method} at rank {args.rank}"
        write_markdown(f"{args.output}.md", title, env, bench.format_table(rows, markdown=True), notes=notes)
        print(f"wrote {args.output}.csv, {args.output}.md")
    return 0
