#!/usr/bin/env bash
# The GPU run on one CUDA machine in one command (make test-gpu): bench/gpu_steps.py's steps A, B, C and D,
# each its own command under its own cap (seconds: CAP_A, CAP_B, CAP_C, CAP_D; default 240, 240, 240, 180),
# the next run whatever happened. Their figures and logs go to the output folder as they come:
#
#     bash bench/gpu.sh [OUTPUT_FOLDER]        # default: $OUT, else bench/results/gpu-<date>-<time>
#
# On a machine lent for a short window run the steps one by one instead (the README's "On a GPU").
# Exits non-zero if any step failed or hit its cap (124).
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench/results/gpu-$(date +%Y%m%d-%H%M%S)}}
export PYTHONPATH=.
py=${PYTHON:-python3}
status=0
for step in A B C D; do
    cap_name=CAP_$step
    cap=${!cap_name:-$([ "$step" = D ] && echo 180 || echo 240)}
    timeout -k 15 "$cap" "$py" bench/gpu_steps.py "$step" --out "$out" --cap "$cap"
    rc=$?
    echo "== step $step: exit $rc (124: its cap of $cap s)"
    [ "$rc" -eq 0 ] || status=1
    [ "$rc" -eq 2 ] && break  # no GPU visible: the other steps would say the same
done
echo "results in $out"
exit $status
