"""factorch: compress and accelerate PyTorch models with tensor decompositions.

    import factorch as fc
    report = fc.decompose_(model, [fc.Tucker2(rank=fc.EVBMF()), fc.SVD(rank=fc.Energy(0.9))])
    fc.decompose_(model, fc.TT(rank=fc.Tolerance(0.05)))   # tensor-train layers
    fc.decompose_(model, fc.SVD(rank=fc.Energy(0.95)), calibration=[x1, x2, x3, x4])  # data-aware
    print(report)
    fc.save(model, "small.pt"); model = fc.load("small.pt")
    fc.export(model, torch.zeros(1, 3, 32, 32), "onnx", "small.onnx")   # verified against eager
    fc.deploy_(model.eval(), torch.zeros(1, 3, 32, 32), profiler=fc.Profiler(batch=1))  # BN folded, fastest forms
    fc.reconstruct_(model)
    admm = fc.ADMM(model, fc.Tucker2(rank=0.25))   # low-rank training: see factorch.admm

Importing factorch is cheap: TensorLy, tqdm and matplotlib are imported where they are used.
"""
from factorch import layers, models
from factorch.admm import ADMM
from factorch.api import decompose_, plan, reconstruct_
from factorch.calibration import Calibration
from factorch.measure.count import Counts, LayerCount, count
from factorch.deploy import DeployReport, deploy_
from factorch.export import export
from factorch.io import CheckpointError, load, save
from factorch.methods import CP, SVD, TT, Method, Tucker2, Tucker3
from factorch.measure.latency import Latency, Profiler
from factorch.rank import EVBMF, Budget, Energy, Tolerance, evbmf
from factorch.training.distillation import distillation_loss
from factorch.report import BudgetResult, LayerReport, Report

__version__ = "0.1.0"

__all__ = [
    "ADMM",
    "Budget",
    "BudgetResult",
    "CP",
    "Calibration",
    "CheckpointError",
    "Counts",
    "DeployReport",
    "EVBMF",
    "Energy",
    "LayerCount",
    "LayerReport",
    "Latency",
    "Method",
    "Profiler",
    "Report",
    "SVD",
    "TT",
    "Tolerance",
    "Tucker2",
    "Tucker3",
    "count",
    "decompose_",
    "deploy_",
    "distillation_loss",
    "evbmf",
    "export",
    "layers",
    "load",
    "models",
    "plan",
    "reconstruct_",
    "save",
]
