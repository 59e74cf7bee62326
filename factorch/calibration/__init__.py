"""Data-aware decomposition: calibration batches (``batches``), each layer's input statistics and
whitening (``statistics``), and the rule that checks data-aware factors against weight-only ones
on held-out batches (``safety``)."""
from factorch.calibration.batches import Calibration, as_calibration
from factorch.calibration.statistics import InputStats, Whitening, collect, input_kind, layer_whitenings, to_model

__all__ = ["Calibration", "InputStats", "Whitening", "as_calibration", "collect", "input_kind", "layer_whitenings",
           "to_model"]
