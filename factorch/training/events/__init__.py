"""Training events as objects (see ``base``): decompose and reconstruct (seed 000), ADMM (seed 002).

    TrainConfig(..., decompose_at=10)                    # builds Decompose(10)
    TrainConfig(..., events=(ADMMPhase(until=20),))      # ADMM for 20 epochs, then decomposed
    TrainConfig(..., events=(FromScratch(),))            # factorized layers from the first step
"""
from factorch.training.events.admm import ADMMPhase
from factorch.training.events.architecture import (Decompose, Reconstruct, decompose_event, decomposed_on_main,
                                                   reconstruct_event, training_profiler)
from factorch.training.events.base import Change, Event, RunContext
from factorch.training.events.scratch import FromScratch

__all__ = ["ADMMPhase", "Change", "Decompose", "Event", "FromScratch", "Reconstruct", "RunContext", "decompose_event",
           "decomposed_on_main", "reconstruct_event", "training_profiler"]
