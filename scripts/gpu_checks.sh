#!/usr/bin/env bash
# The checks that need a GPU, in one go (docs/benchmarks.md records their output):
#   1. the CUDA bit-exactness tests (a file encoded on the CPU decodes identically on the GPU)
#   2. Stage II training throughput and memory, full size, batch 8 x 512^2, bf16
#   3. full-size encode / decode time and decode memory at 512^2 and 1024^2 (bf16)
#   4. Stage I training throughput and memory, full size, batch 8 x 512^2, bf16
#   5. the size guard's CUDA coefficients: full-size encode / decode time and peak memory at
#      512^2 to 2048^2 (bf16), fitted as in configs/limits.yaml (docs/bitstream.md, "Size limits")
# Random full-size weights (--random-weights): the compute is that of the real models.
# Usage: bash scripts/gpu_checks.sh [LOG_DIR]; each step has its own time limit and log.
set -uo pipefail
LOG=${1:-gpu_logs}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
step() {  # name, limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date +%T))"
  timeout "$limit" "$@" 2>&1 | tee "$LOG/$name.log" | grep -v -E "it/s\]|s/it\]|^\s*$" | tail -25
  echo "=== $name: exit ${PIPESTATUS[0]}"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, diffusers, peft, transformers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
step cuda_tests 180 $PY -m pytest -q -p no:cacheprovider tests/test_fresh_process.py -k gpu
step stage2 300 $PY scripts/bench_train.py --stage 2 experiment=stage2 --size 512 --batch 8 --steps 10 --warmup 2 --random-weights
step codec 240 $PY -m onedc.eval complexity --model onedc_sd15 --sizes 512 1024 --repeat 3 --device cuda
step stage1 240 $PY scripts/bench_train.py experiment=stage1 --size 512 --batch 8 --steps 5 --warmup 2 --random-weights
step costs 420 $PY scripts/measure_costs.py --model onedc_sd15 --device cuda --precision bf16 --sizes 512 1024 2048 --json "$LOG/costs_sd15_cuda.json"
