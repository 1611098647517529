#!/usr/bin/env bash
# The GPU tier and the benchmarks on one CUDA machine, in one command (its steps' limits below add up to 880 s:
# on a machine lent for 10 minutes a command, run the steps one by one, each with its own limit):
#
#     bash bench/gpu.sh [OUTPUT_FOLDER]        # default: $OUT, else bench/results/gpu-<date>-<time>
#
# 1. tests/test_gpu.py (pytest -m gpu)                       -> tests.log, tests.xml
# 2. bench/step_ratio.py, ResNet-50 bf16 channels_last,
#    eager and compiled                                        -> step_ratio.log, step_ratio-*.json
#    bench/step_ratio.py, ViT-S at the recipe's 64 per GPU, bf16  -> vit_step.log, step_ratio-*.json
# 3. bench/pipeline.py: the loader alone and the whole loop    -> pipeline.log, pipeline-*.json
# 4. bench/cifar_data.py on the GPU: CIFAR's device-side data
#    path against a WRN-16-4 step                              -> cifar_data.log, cifar_data-*.json
# 5. bench/packing.py: WRN-28-10 GNP trials 1, 2 and 4 to a GPU -> packing.log, packing-*.json
#
# Each step runs under its own time limit and the next runs whatever happened; summary.txt lists their
# exit codes (124: the time limit) and the script exits non-zero if any failed. The pipeline step reads the
# GPU rates that step 2 wrote. Limits in seconds: TESTS_S, STEP_RATIO_S, VIT_STEP_S, PIPELINE_S, CIFAR_DATA_S, PACKING_S; loader processes:
# LOADER_WORKERS (default: CPUs - 4).
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench/results/gpu-$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$out"
export PYTHONPATH=.
py=${PYTHON:-python3}
cpus=$(nproc)
workers=${LOADER_WORKERS:-$(( cpus > 6 ? cpus - 4 : 2 ))}
status=0

run() {  # run NAME LIMIT_S COMMAND...: log to $out/NAME.log, note the exit code
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee -a "$out/summary.txt"
    local start=$SECONDS
    timeout --kill-after=20 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $(( SECONDS - start ))s" | tee -a "$out/summary.txt"
    tail -n 15 "$out/$name.log"
    [ "$rc" -eq 0 ] || status=1
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$py" -c 'import torch, torchvision; print("torch", torch.__version__, "cuda", torch.version.cuda,
"torchvision", torchvision.__version__, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name())'
    echo "cpus $cpus; loader processes $workers"
} >"$out/environment.txt" 2>&1
cat "$out/environment.txt"
if ! "$py" -c 'import timm' 2>/dev/null; then  # the ViTs' library: a GPU image may lack it (make gpu-wheels)
    wheel=$(ls .whl/timm-*.whl 2>/dev/null | head -n 1)
    if [ -n "$wheel" ] && "$py" -m pip install --quiet --no-deps --no-index --target /tmp/gnp-timm "$wheel"; then
        export PYTHONPATH=.:/tmp/gnp-timm
    fi
    "$py" -c 'import timm; print("timm", timm.__version__, "from", timm.__file__)' >>"$out/environment.txt" 2>&1
fi
if ! "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "no CUDA GPU visible: the tier would only skip; nothing run" | tee -a "$out/summary.txt"
    exit 2
fi

run tests "${TESTS_S:-200}" "$py" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider --durations=20 \
    --junitxml="$out/tests.xml"
run step_ratio "${STEP_RATIO_S:-220}" "$py" bench/step_ratio.py --model ResNet50 --size 224 --batch 256 \
    --amp bf16 --channels-last --compile both --no-ddp --steps 15 --warmup 3 --json "$out"
run vit_step "${VIT_STEP_S:-90}" "$py" bench/step_ratio.py --model ViT_S16 --size 32 --batch 64 \
    --amp bf16 --compile off --no-ddp --steps 15 --warmup 3 --json "$out"
run pipeline "${PIPELINE_S:-160}" "$py" bench/pipeline.py --workers "1,$workers" --train \
    --train-workers "$workers" --batch 256 --steps 30 --rates "$out" --json "$out" \
    --note "bench/gpu.sh on ${HOSTNAME:-a GPU machine}"

run cifar_data "${CIFAR_DATA_S:-90}" "$py" bench/cifar_data.py --device cuda \
    --augmentations basic,cutout,mixcut,autoaugment+mixcut --json "$out"

run packing "${PACKING_S:-120}" "$py" bench/packing.py --model WideResNet_28_10 --batch 256 --trials 1,2,4 \
    --steps 15 --json "$out"

echo "results in $out" | tee -a "$out/summary.txt"
exit $status
