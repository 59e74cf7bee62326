"""What a decomposition buys, measured: ``count`` (parameters and every multiply-add),
``latency`` (interleaved, warmed-up, median timing: ``fc.Profiler``), ``bench`` (dense vs
factorized vs rebuilt, per layer and whole model), ``sweep`` (single-layer rank sweeps),
``plots`` (figures) and ``results`` (the one writer of results files: environment header, CSV,
Markdown).

Nothing is imported here: ``count`` and ``latency`` sit below the decomposition verbs, which
``bench`` and ``sweep`` call.
"""
