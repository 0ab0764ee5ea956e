#!/usr/bin/env bash
# GPU check (issue 10) for a machine with a CUDA GPU, a few minutes in all:
#   1. every quantizer's forward/backward on CUDA against CPU, and an AMP training run per family
#      (benchmarks/gpu_check.py; tolerances in its docstring);
#   2. the training-step overhead table on CUDA (benchmarks/step_overhead.py --device cuda);
#   3. `lowbit train --device cuda` end to end (LeNet-5 LSQ w4a4 on digits, 2 epochs, AMP).
# Results: RESULTS_DIR/gpu_check-<card>.{json,md}, step_overhead-cuda-<card>.{json,md} and
# train-cuda-<card>.json (default RESULTS_DIR: benchmarks/results).
#
#   benchmarks/gpu_check.sh [RESULTS_DIR]
#
# Exit status: 0 all passed, 1 a check failed, 2 no CUDA device (nothing is run).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
results="${1:-benchmarks/results}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python}

if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check.sh: no CUDA device visible to torch ($("$python" -c 'import torch; print("torch", torch.__version__, "CUDA build:", torch.version.cuda)' 2>&1 | tail -1)); run it on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
    exit 2
fi
card=$("$python" -c 'import re, torch; print(re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-").lower())')
mkdir -p "$results"
status=0
echo "== 1/3 quantizers CUDA vs CPU, AMP training"
"$python" benchmarks/gpu_check.py --results-dir "$results" || status=1
echo "== 2/3 step overhead on CUDA"
"$python" benchmarks/step_overhead.py --device cuda --rounds 5 --steps 5 --results-dir "$results" || status=1
echo "== 3/3 lowbit train --device cuda"
run=$(mktemp -d)
if "$python" -m lowbit train --model lenet5 --dataset digits --quantizer lsq --wbits 4 --abits 4 --epochs 2 \
        --device cuda --out "$run/train" --quiet; then
    cp "$run/train/result.json" "$results/train-cuda-$card.json"
else
    status=1
fi
rm -rf "$run"
echo "gpu_check.sh: $([ $status -eq 0 ] && echo 'all checks passed' || echo 'SOME CHECKS FAILED') (results in $results)"
exit $status
