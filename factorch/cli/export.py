"""``factorch export``: a checkpoint to ONNX, TorchScript or a torch.export program, verified;
``--deploy`` first folds batch norms, merges factors and keeps each layer's fastest form (``fc.deploy_``)."""
from __future__ import annotations

import argparse

from factorch.cli.common import add_model_args, load_model, profiler_from


def add_export(sub: argparse._SubParsersAction) -> None:
    from factorch.export import FORMATS

    p = sub.add_parser("export", help="export a model to ONNX, TorchScript or a torch.export program, verified",
                       description="Export CHECKPOINT (or --model NAME) with a dynamic batch size, run the exported "
                                   "model next to the eager one on other batch sizes, and write -o only if the "
                                   "outputs match (onnx needs pip install 'factorch[export]').")
    add_model_args(p)
    p.add_argument("--format", required=True, choices=list(FORMATS), help="the file format")
    p.add_argument("--batch", type=int, default=1,
                   help="example batch size: picks tensor-train layers' contraction order, and with --deploy the "
                        "batch size timed (default 1)")
    p.add_argument("--deploy", action="store_true",
                   help="first fold batch norms into the convs before them, merge adjacent factors where that costs "
                        "fewer MACs, and keep each factorized layer's fastest form (factorized, merged or dense) and "
                        "the faster memory layout, timed at --batch on --device with --threads in --runtime "
                        "(fc.deploy_)")
    p.add_argument("--device", default="cpu", help="with --deploy: where to time (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="with --deploy: CPU threads while timing")
    p.add_argument("--runs", type=int, default=20, help="with --deploy: timed calls per variant (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="with --deploy: untimed calls first (default 5)")
    p.add_argument("--runtime", choices=("eager", "onnxruntime"), default=None,
                   help="with --deploy: what the forms are timed in (default: onnxruntime for --format onnx, the "
                        "runtime the file is for; eager PyTorch otherwise)")
    p.add_argument("--pad-to", type=int, default=None, metavar="B",
                   help="with --deploy: also time each factor chain with its inner channels padded by zero channels "
                        "to multiples of B (exact; 16 suits ONNX Runtime on AVX-512 CPUs) and keep it where faster")
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
    if args.runtime is not None and not args.deploy:
        raise ValueError("--runtime says what --deploy times its choices in; give --deploy too")
    if args.pad_to is not None and not args.deploy:
        raise ValueError("--pad-to adds a form for --deploy to time; give --deploy too")
    if args.runtime is None:
        args.runtime = "onnxruntime" if args.format == "onnx" else "eager"
    profiler = profiler_from(args) if args.deploy else None
    loaded = load_model(args)
    example = loaded.example_input().expand(args.batch, *loaded.input_shape).contiguous()
    if args.deploy:
        import torch

        from factorch.deploy import deploy_

        model = loaded.model.to(args.device).eval()
        x = torch.randn((1, *loaded.input_shape), generator=torch.Generator().manual_seed(0), dtype=example.dtype)
        print(deploy_(model, x.to(args.device), profiler=profiler, pad_to=args.pad_to))
        loaded.model = model.cpu()
    print(export(loaded.model, example, args.format, args.output, rtol=args.rtol, atol=args.atol))
    return 0
