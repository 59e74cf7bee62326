"""``factorch compress``: a trained model made smaller, then its accuracy recovered.

    factorch compress --model vgg7 --weights vgg7.pt --dataset fashion-mnist --rank budget:macs=0.4 \
        --finetune-epochs 4 [--admm-epochs 4] [--distill] --out runs/vgg7-compressed

Decompose (weight-only factors; data-aware ones from N training batches with
``--calibration-batches N``), or first train the dense model for ``--admm-epochs`` with ADMM towards
the target ranks from the trained weights (Yin et al. 2021) and decompose there, then fine-tune
``--finetune-epochs``, optionally learning from the dense model too (``--distill``, Hinton et al.
2015). It is one training run
(``OUT/metrics.jsonl``, ``OUT/checkpoint.pt``: ``--resume``; ``OUT/model.pt``: the compressed model),
then ``OUT/results.md``/``.csv``: dense and compressed accuracy, the difference, FLOPs and
parameter reductions and the measured speed-ups (``factorch.training.compress``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from factorch.cli.common import add_decomposition_args, parse_methods, parse_rank
from factorch.cli.train import _command, add_data_args, add_execution_args, add_optimizer_args
from factorch.distributed import is_main_process, pick_device
from factorch.io import read_checkpoint
from factorch.models.spec import ModelSpec, parse_model_args
from factorch.training import TrainConfig, train
from factorch.training import compress as summary
from factorch.training.events import ADMMPhase, Decompose, Distill
from factorch.training.run import FINAL


def add_compress(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="decompose a trained model and recover its accuracy",
                       description="Decompose a trained model, optionally after ADMM "
                                   "training towards the target ranks (--admm-epochs), then fine-tune "
                                   "(--finetune-epochs, --distill); writes OUT/model.pt and OUT/results.md "
                                   "(dense vs compressed accuracy, FLOPs and parameter reductions, measured "
                                   "speed-ups). Resumable (--resume); under torchrun: DDP.")
    p.add_argument("checkpoint", nargs="?", help="a factorch checkpoint of the trained model (instead of --model "
                                                  "with --weights)")
    add_data_args(p, model_required=False)
    g = p.add_argument_group("decomposition")
    add_decomposition_args(g, method="tucker2,svd", rank="budget:macs=0.4")
    g.add_argument("--first-conv", action="store_true", help="decompose the first conv too")
    g.add_argument("--exclude", action="append", default=[], metavar="REGEX", help="leave matching layers dense")
    g.add_argument("--calibration-batches", type=int, default=0, metavar="N",
                   help="data-aware factors and ranks from N training batches (default 0: weight-only factors, "
                        "which recovered best after fine-tuning in benchmarks/compress_trained.py)")
    g.add_argument("--keep-if-faster", action=argparse.BooleanOptionalAction, default=False,
                   help="keep dense the layers not faster factorized at the training batch (default off)")
    g = p.add_argument_group("recovery")
    g.add_argument("--finetune-epochs", type=int, default=4, metavar="E", help="fine-tuning epochs (default 4)")
    g.add_argument("--admm-epochs", type=int, default=0, metavar="K",
                   help="ADMM epochs from the trained weights before decomposing (default 0: decompose at once)")
    g.add_argument("--admm-rho", type=float, default=1e-3, metavar="RHO", help="ADMM penalty weight (default 1e-3)")
    g.add_argument("--distill", action="store_true", help="learn from the dense model too (Hinton et al. 2015)")
    g.add_argument("--distill-temperature", type=float, default=4.0, metavar="T", help="softmax temperature (4)")
    g.add_argument("--distill-weight", type=float, default=1.0, metavar="W", help="the distillation term's weight (1)")
    add_optimizer_args(g, lr=0.01)
    add_execution_args(p)
    p.add_argument("--out", help="run directory (default runs/compress-MODEL-DATASET)")
    p.set_defaults(run=run_compress)


def _model(args: argparse.Namespace) -> tuple[str, dict, str]:
    """(model spelling, its arguments, the weights file) from CHECKPOINT or --model/--weights."""
    if args.checkpoint:
        if args.model or args.weights:
            raise ValueError("give CHECKPOINT, or --model with --weights, not both")
        arch = read_checkpoint(args.checkpoint).get("arch")
        if not arch:
            raise ValueError(f"{args.checkpoint!r} stores no architecture: pass --model NAME|pkg.module:function "
                             f"--weights {args.checkpoint}")
        spec = ModelSpec.from_record(arch, args.checkpoint)
        kwargs = {k: v for k, v in spec.kwargs.items() if spec.source != "zoo"}
        return spec.text, kwargs, args.checkpoint
    if not args.model or not args.weights:
        raise ValueError("compress takes a trained model: CHECKPOINT, or --model with --weights FILE")
    return args.model, parse_model_args(args.model_args), args.weights


def run_compress(args: argparse.Namespace) -> int:
    for flag, value, low in (("--finetune-epochs", args.finetune_epochs, 0), ("--admm-epochs", args.admm_epochs, 0)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.finetune_epochs < 1:
        raise ValueError("--finetune-epochs must be >= 1: the decomposed model trains at least one epoch "
                         "(to decompose without training: factorch decompose)")
    model, model_args, weights = _model(args)
    methods = tuple(parse_methods(args.method, parse_rank(args.rank), args.rank_multiple))
    shared = dict(methods=methods, first_conv=args.first_conv,
                  exclude=tuple(args.exclude), calibration_batches=args.calibration_batches)
    if args.admm_epochs:
        events = [ADMMPhase(args.admm_epochs, rho=args.admm_rho, **shared)]
    else:
        events = [Decompose(0, keep_if_faster=args.keep_if_faster, **shared)]
    if args.distill:
        events.append(Distill(weight=args.distill_weight, temperature=args.distill_temperature))
    cfg = TrainConfig(model=model, model_args=model_args, weights=weights, dataset=args.dataset,
                      data_dir=args.data_dir, epochs=args.admm_epochs + args.finetune_epochs,
                      batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                      subset=args.subset, augment=not args.no_augment, amp=args.amp, channels_last=args.channels_last,
                      device=args.device, workers=args.workers, seed=args.seed, events=tuple(events))
    out = Path(args.out or f"runs/compress-{Path(model).stem}-{args.dataset}")
    history = train(cfg, out, resume=args.resume)
    if not is_main_process():
        return 0
    result = _summary(cfg, out, history)
    settings = [f"{model} on {args.dataset} from {weights}: " + ", ".join(repr(e) for e in events),
                f"{cfg.epochs} epochs ({args.admm_epochs} ADMM, {args.finetune_epochs} fine-tuning), batch "
                f"{cfg.batch_size}, lr {cfg.lr} (x0.1 at 50% and 75% of the epochs), seed {cfg.seed}"]
    md, csv = summary.write(result, out, f"{model} on {args.dataset}: compressed", settings,
                            command=_command(args, "compress", skip=("resume", "device", "workers")),
                            device=str(pick_device(args.device)))
    print(result.line())
    print(f"wrote {out / FINAL}, {md}, {csv}")
    return 0


def _summary(cfg: TrainConfig, out: Path, history: list) -> summary.Compression:
    """The dense model the run started from against its final model, on the run's test split."""
    import factorch as fc
    import factorch.data as fdata
    from factorch.io import load_into

    meta = fdata.info(cfg.dataset, cfg.data_dir)
    test = fdata.load(cfg.dataset, cfg.data_dir, train=False, subset=cfg.subset, seed=cfg.seed)
    spec = ModelSpec.parse(cfg.model, cfg.model_args)
    dense = load_into(spec.build(meta.num_classes, meta.in_channels), cfg.weights)[0]
    compressed = fc.load(out / FINAL, model=spec.build(meta.num_classes, meta.in_channels))
    device = pick_device(cfg.device)
    example = torch.zeros((1, *test[0][0].shape), device=device)
    loader = DataLoader(test, batch_size=256)
    return summary.summarize(dense.to(device), compressed.to(device), loader, example, history, cfg.batch_size,
                             device=device)
