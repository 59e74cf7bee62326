#!/usr/bin/env bash
# Elhoushi et al. 2019's experiment (Tables 1-3 / Figures 3-5) on Fashion-MNIST: 60k
# training images, 20 epochs, the paper's schedule (lr 0.1, /10 at 50% and 75%, momentum 0.9,
# weight decay 5e-4, batch 128), Tucker-2 with EVBMF ranks, first conv and classifier dense, and the
# paper's scenarios scaled to 20 epochs (dec@10/dec@20 of 200 -> dec@1/dec@2; we use dec@2 (one
# tenth of the schedule), dec@2+rec@19 and original-then-dec+4; add dec@4 with SCENARIOS=...).
#
#   benchmarks/fashion_experiment.sh cpu   # vgg7 (1.17M params, 29.9M MACs), channels_last: about
#                                          # 35 min on 2 CPU threads, 50 min on one
#   benchmarks/fashion_experiment.sh gpu   # vgg19 (20M params) on CUDA
#
# Environment: PYTHON (default python), DATA_DIR (default: the dataset's default root,
# /usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist), EPOCHS, SCENARIOS,
# EXTRA (more factorch arguments, e.g. "--rank evbmf:0.15", or "--subset 2000" for a quick check of
# the script), TAG (a suffix naming a variant's directories, e.g. TAG=evbmf0.15).
# Runs and checkpoints go to runs/fashion-PRESET[-TAG]/ (not committed); rerunning the same command
# continues an interrupted experiment (--resume). The table (results.md/.csv), the figure and the
# per-epoch metrics of every scenario are copied to benchmarks/results/fashion_PRESET[_TAG]/.
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-cpu}"
case "$preset" in
    cpu) model=vgg7; device=cpu; workers=0; layout=(--channels-last) ;;
    gpu) model=vgg19; device=cuda; workers=4; layout=(--amp --channels-last) ;;
    *) echo "error: preset must be cpu or gpu, got '$preset'" >&2; exit 2 ;;
esac
epochs="${EPOCHS:-20}"
scenarios="${SCENARIOS:-original,dec@2,dec@2+rec@19,original-then-dec+4}"
runs="runs/fashion-$preset${TAG:+-$TAG}"
results="benchmarks/results/fashion_$preset${TAG:+_$TAG}"
data=()
if [ -n "${DATA_DIR:-}" ]; then data=(--data-dir "$DATA_DIR"); fi

# shellcheck disable=SC2086  # EXTRA is a list of arguments
"${PYTHON:-python}" -m factorch experiment --model "$model" --dataset fashion-mnist "${data[@]}" \
    --epochs "$epochs" --scenarios "$scenarios" --device "$device" --workers "$workers" "${layout[@]}" \
    --out "$runs" --resume ${EXTRA:-}

mkdir -p "$results"
cp "$runs/results.md" "$runs/results.csv" "$runs/figure.png" "$results/"
for dir in "$runs"/*/; do
    name="$(basename "$dir")"
    cp "$dir/metrics.jsonl" "$results/$name.metrics.jsonl"
done
echo "copied the table, the figure and the metrics to $results/"
