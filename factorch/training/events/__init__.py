"""Training events as objects (see ``base``): decompose and reconstruct (Elhoushi et al. 2019), ADMM
(Yin et al. 2021), factorized from scratch. Each owns its settings and its spelling:

    TrainConfig(..., events=(Decompose(10, methods=(fc.Tucker2(0.25),)),))   # dec@10, --decompose-at 10
    TrainConfig(..., events=(Decompose(10), Reconstruct(190)))               # dec@10+rec@190
    TrainConfig(..., events=(ADMMPhase(until=20, rho=1e-2),))                # admm@20, --admm-until 20
    TrainConfig(..., events=(FromScratch(methods=(fc.TT(8),)),))             # scratch, --factorized-from-scratch
    TrainConfig(..., weights="dense.pt", events=(Decompose(0), Distill()))  # dec@0+distill, --distill

A new event is one module: a class derived from ``Event`` (or ``Decomposing``) and ``@register``;
importing it makes its token and flags known to the scenario parser and the CLI (the built-in
ones are imported here).
"""
# registration order is the order a command line's events are built in (the order of earlier
# checkpoints' event states): decompose, reconstruct, ADMM, from scratch
from factorch.training.events.architecture import (Decompose, Reconstruct, decompose_event,  # noqa: I001
                                                   decomposed_on_main, reconstruct_event, training_profiler)
from factorch.training.events.admm import ADMMPhase
from factorch.training.events.base import EVENTS, Change, Event, Option, RunContext, register
from factorch.training.events.decomposing import DEFAULT_METHODS, Decomposing
from factorch.training.events.scratch import FromScratch
from factorch.training.events.distill import Distill  # noqa: I001  (registered after the others)

__all__ = ["ADMMPhase", "Change", "DEFAULT_METHODS", "Decompose", "Decomposing", "Distill", "EVENTS", "Event",
           "FromScratch",
           "Option", "Reconstruct", "RunContext", "decompose_event", "decomposed_on_main", "reconstruct_event",
           "register", "training_profiler"]
