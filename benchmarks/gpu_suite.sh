#!/usr/bin/env bash
# Every GPU result the benchmarks define, in one run of under 8 minutes on one GPU:
#
#   1. training throughput, dense vs Tucker-2 at the paper's parameter counts (VGG-19 749K,
#      ResNet-56 508K, DenseNet-40 270K), AMP, in factorch train's default layout (channels_last on
#      CUDA), with the model the decomposition event keeps (keep_if_faster)
#                                      -> results/train_throughput_gpu_amp.{csv,md}
#   2. VGG-19 train step, dense vs Tucker-2 at ~1.0M params, batch 64: NCHW fp32 (before), the
#      default layout fp32, and AMP       -> results/train_step_vgg19_gpu.{csv,md}
#   3. factorch bench (per layer, forward and forward+backward), VGG-19 and ResNet-56, --device cuda
#                                      -> results/bench_{vgg19,resnet56}_tucker2_gpu.{csv,md}
#   4. TT inference, the 25088x4096 layer at TT-ranks 4, batch 1 and 100 (eager and CUDA graphs)
#                                      -> results/tt_inference_gpu.{csv,md}
#   5. inference, dense vs compressed (Budget(macs=0.5) + fc.deploy_) ResNet-18 and ResNet-50 at
#      224x224, batch 1 and 32, eager, torch.compile (ResNet-18) and ONNX Runtime (its CUDA provider
#      where installed, else the row says CPU)   -> results/inference_gpu.{csv,md}
#
# Runs from the repository root without installing factorch (PYTHONPATH=.; TensorLy is not needed).
# Each step has its own time limit; a failed step is reported and the others still run (exit 1 at
# the end if any failed). With $BENCH_RESULTS_DIR set, the result files go there instead (of
# benchmarks/results, or of a temporary directory with --smoke). With $OUT set, every result file
# (and the log) is packed into $OUT/gpu_results.tar.gz.
#
#   benchmarks/gpu_suite.sh            # on a machine with a CUDA GPU
#   benchmarks/gpu_suite.sh --smoke    # the same steps on the CPU at tiny sizes (about a minute: the
#                                      # step time and bench on vgg-small and resnet20), results in a
#                                      # temporary directory; `make test` runs it so it cannot rot
set -u -o pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}

if [[ "${1:-}" == "--smoke" ]]; then
    device=cpu tag=cpu
    results=${BENCH_RESULTS_DIR:-$(mktemp -d)}
    limits=(120 120 120 120 120)  # seconds: throughput, train step, each bench, TT inference, inference
    throughput=(--models resnet56 --batch 2 --steps 1 --repeats 1 --warmup 0 --threads 1)
    step=(--model vgg-small --batch 2 --repeats 1 --warmup 0 --threads 1 --settings before,default,amp)
    bench_models=(vgg-small resnet20)
    bench=(--batch 2 --runs 1 --warmup 0 --threads 1)
    tt=(--batches 1,3 --repeats 1 --warmup 0 --threads 1)
    inference=(--smoke)
else
    device=cuda tag=gpu
    results=${BENCH_RESULTS_DIR:-$PWD/benchmarks/results}
    # throughput, train step, each bench, TT, inference: at most 470 s in all, under 8 minutes
    limits=(130 80 60 50 90)
    throughput=(--amp --batch 128 --steps 5 --repeats 5 --warmup 2)
    step=(--batch 64 --repeats 10 --warmup 3 --settings before,default,amp)
    bench_models=(vgg19 resnet56)
    bench=(--batch 128 --runs 20 --warmup 5)
    tt=(--batches 1,100 --repeats 50 --warmup 10)
    inference=(--models resnet18,resnet50 --batches 1,32 --threads all --compile-models resnet18 --latency-budget ""
               --passes 1 --runs 30 --warmup 5)
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device here; use --smoke')" || exit 2
fi
export BENCH_RESULTS_DIR=$results  # where the benchmark scripts write (benchmarks/common.py)
mkdir -p "$BENCH_RESULTS_DIR"
log="$BENCH_RESULTS_DIR/gpu_suite_${tag}.log"
: > "$log"
failed=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log it, remember a failure
    local name=$1 seconds=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${seconds}s): $*" | tee -a "$log"
    if ! timeout "$seconds" "$@" 2>&1 | tee -a "$log"; then
        failed+=("$name")
        echo "!! $name failed or ran past ${seconds}s" | tee -a "$log"
    fi
}

start=$SECONDS
step throughput "${limits[0]}" "$PY" benchmarks/train_throughput.py --device "$device" "${throughput[@]}"
step train_step "${limits[1]}" "$PY" benchmarks/train_step.py --device "$device" "${step[@]}"
for model in "${bench_models[@]}"; do
    step "bench_$model" "${limits[2]}" "$PY" -m factorch bench --model "$model" --method tucker2,svd --rank 0.25 \
        --device "$device" "${bench[@]}" -o "$BENCH_RESULTS_DIR/bench_${model}_tucker2_${tag}"
done
step tt_inference "${limits[3]}" "$PY" benchmarks/tt_inference.py --device "$device" "${tt[@]}"
step inference "${limits[4]}" "$PY" benchmarks/inference.py --device "$device" "${inference[@]}"
echo "== done in $((SECONDS - start)) s; failed: ${failed[*]:-none}; results in $BENCH_RESULTS_DIR" | tee -a "$log"

if [[ -n "${OUT:-}" ]]; then
    (cd "$BENCH_RESULTS_DIR" && tar czf "$OUT/gpu_results.tar.gz" ./*"${tag}"*) && echo "packed $OUT/gpu_results.tar.gz"
fi
[[ ${#failed[@]} -eq 0 ]]
