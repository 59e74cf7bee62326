"""How much of a model each decomposed layer saves: where ``decompose_``'s ``min_share`` draws the
line between a layer worth decomposing and one too small to matter.

For every zoo model at its own input size, Tucker-2 + SVD at half of each layer's parameters,
decomposition planned with ``min_share=0`` (every layer a method handles): per model, the share of
the model's MACs each layer saves (smallest, median, largest, and the layer of the smallest), the
dense cost share of that layer, and what the default ``min_share`` leaves dense. Shapes and MACs
only: no timing, so the result does not depend on the machine's load.

    python benchmarks/layer_shares.py   -> benchmarks/results/layer_shares.{csv,md}
"""
from __future__ import annotations

import statistics

import torch

import factorch as fc
from common import write_results
from factorch.measure.results import environment
from factorch.registry import MIN_SHARE

GRAY = ("lenet5", "mlp")  # models for one-channel images


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for name in fc.models.list_models():
        entry = fc.models.entry(name)
        channels = 1 if name in GRAY else 3
        if entry.input_size[0] > 64:  # the ImageNet-size models take minutes to plan here
            continue
        model = fc.models.create(name, 10, channels)
        x = torch.zeros(1, channels, *entry.input_size)
        total = fc.count(model, x).macs
        report = fc.plan(model, [fc.Tucker2(0.5), fc.SVD(0.5)], example_input=x, min_share=0)
        saving = {r.name: (r.macs_before - r.macs_after) / total for r in report.decomposed}
        smallest = min(saving, key=saving.get)
        default = fc.plan(model, [fc.Tucker2(0.5), fc.SVD(0.5)], example_input=x)
        left = [r.name for r in default.skipped if r.skipped.startswith("too small")]
        rows.append({"model": name, "macs": total, "layers": len(saving),
                     "smallest_saving_pct": 100 * saving[smallest], "smallest_layer": smallest,
                     "smallest_dense_pct": 100 * next(r.macs_before for r in report.rows if r.name == smallest) / total,
                     "median_saving_pct": 100 * statistics.median(saving.values()),
                     "largest_saving_pct": 100 * max(saving.values()),
                     "total_saving_pct": 100 * sum(saving.values()),
                     "left_dense_at_default": " ".join(left) or "-"})
    write_results("layer_shares", rows, environment("cpu"), notes=[
        "saving: (dense - factorized MACs) of one layer over the model's MACs, Tucker-2 + SVD at half of each "
        "layer's parameters, every layer planned (min_share=0)",
        f"left_dense_at_default: the layers min_share={MIN_SHARE:g} (dense cost below that share of the model's "
        "MACs) leaves dense"])


if __name__ == "__main__":
    main()
