"""``factorch export``: a checkpoint to ONNX, TorchScript or a torch.export program, verified."""
from __future__ import annotations

import argparse

from factorch.cli.common import add_model_args, load_model


def add_export(sub: argparse._SubParsersAction) -> None:
    from factorch.export import FORMATS

    p = sub.add_parser("export", help="export a model to ONNX, TorchScript or a torch.export program, verified",
                       description="Export CHECKPOINT (or --model NAME) with a dynamic batch size, run the exported "
                                   "model next to the eager one on other batch sizes, and write -o only if the "
                                   "outputs match (onnx needs pip install 'factorch[export]').")
    add_model_args(p)
    p.add_argument("--format", required=True, choices=list(FORMATS), help="the file format")
    p.add_argument("--batch", type=int, default=1,
                   help="example batch size: picks tensor-train layers' contraction order (default 1)")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance vs eager (default 1e-4)")
    p.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance vs eager (default 1e-6)")
    p.add_argument("-o", "--output", required=True, help="where to write the exported model")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from factorch.export import export
    from factorch.files import check_writable

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    check_writable(args.output)
    loaded = load_model(args)
    example = loaded.example_input().expand(args.batch, *loaded.input_shape).contiguous()
    print(export(loaded.model, example, args.format, args.output, rtol=args.rtol, atol=args.atol))
    return 0
