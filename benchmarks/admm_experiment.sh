#!/usr/bin/env bash
# Yin et al. 2021's comparison on Fashion-MNIST with `factorch experiment`: the dense
# model (original), dense then decomposed and fine-tuned (dec@K), and ADMM low-rank training
# then decomposed at the same ranks (admm@K); same epochs, same seed, same ranks (a fraction of
# each layer's parameters: about 3x fewer in the decomposed layers). First with Tucker-2, then with
# TT; the TT experiment reuses the finished original (a dense run does not depend on --method).
#
#   benchmarks/admm_experiment.sh        # vgg7, 10k training images, 12 epochs, K = 8, on the CPU
#
# Environment: PYTHON (default python), EPOCHS (12), K (8), SUBSET (10000 training and test
# images; "" for all), RANK (0.33), RHO (0.01), EXTRA (more factorch arguments).
# Runs go to runs/admm-fashion/{tucker2,tt}/ (not committed); rerunning continues an interrupted
# experiment (--resume). Tables, figures and per-epoch metrics are copied to
# benchmarks/results/admm_fashion-mnist/{tucker2,tt}/.
set -euo pipefail
cd "$(dirname "$0")/.."
epochs="${EPOCHS:-12}"
k="${K:-8}"
subset=()
if [ -n "${SUBSET-10000}" ]; then subset=(--subset "${SUBSET-10000}"); fi
for method in tucker2 tt; do
    runs="runs/admm-fashion/$method"
    results="benchmarks/results/admm_fashion-mnist/$method"
    if [ "$method" = tt ] && [ ! -e "$runs/original" ]; then
        mkdir -p "$runs" && cp -r runs/admm-fashion/tucker2/original "$runs/original"
    fi
    # shellcheck disable=SC2086  # EXTRA is a list of arguments
    "${PYTHON:-python}" -m factorch experiment --model vgg7 --dataset fashion-mnist "${subset[@]}" \
        --epochs "$epochs" --channels-last --method "$method" --rank "${RANK:-0.33}" \
        --admm-rho "${RHO:-0.01}" --scenarios "original,dec@$k,admm@$k" --out "$runs" --resume ${EXTRA:-}
    mkdir -p "$results"
    cp "$runs/results.md" "$runs/results.csv" "$runs/figure.png" "$results/"
    for dir in "$runs"/*/; do
        cp "$dir/metrics.jsonl" "$results/$(basename "$dir").metrics.jsonl"
    done
    echo "copied the table, the figure and the metrics to $results/"
done
