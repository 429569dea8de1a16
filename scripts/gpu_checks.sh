#!/usr/bin/env bash
# The checks that need a GPU, in one go (docs/benchmarks.md records their output).
#   codec part (about 8 minutes on an H200; each step has its own time limit and log):
#     cuda_tests     the CUDA bit-exactness tests (a file encoded on the CPU decodes identically
#                    on the GPU and the other way round)
#     codec_eager    full-size per-stage profile, encode/decode time at 512^2 and 1024^2 (bf16,
#                    decoding-only model, frozen weights in bf16) and decode memory at 512^2 as
#                    weights vs activations
#     codec_compile  the same decode with --compile at 1024^2, compile time reported apart
#     codec_batch    batched coding throughput at 512^2, batch 1, 8, 16 (images/s)
#   train part:
#     stage2 / stage1  training throughput and memory, full size, batch 8 x 512^2, bf16
# Random full-size weights (--random-weights / untrained): the compute is that of the real models.
# Usage: bash scripts/gpu_checks.sh [LOG_DIR] [codec|train|all]   (default: gpu_logs all)
set -uo pipefail
LOG=${1:-gpu_logs}
PART=${2:-all}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
step() {  # name, limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date +%T))"
  timeout "$limit" "$@" 2>&1 | tee "$LOG/$name.log" | grep -v -E "it/s\]|s/it\]|^\s*$" | tail -40
  echo "=== $name: exit ${PIPESTATUS[0]}"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, diffusers, peft, transformers, accelerate, numba; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'numba', numba.__version__)"
if [ "$PART" = codec ] || [ "$PART" = all ]; then
  step cuda_tests 150 $PY -m pytest -q -p no:cacheprovider tests/test_fresh_process.py -k gpu
  step codec_eager 150 $PY -m onedc.eval complexity --model onedc_sd15 --sizes 512 1024 --repeat 5 --device cuda --json "$LOG/codec_eager.json"
  step codec_compile 200 $PY -m onedc.eval complexity --model onedc_sd15 --sizes 1024 --repeat 5 --device cuda --compile --json "$LOG/codec_compile.json"
  step codec_batch 100 $PY scripts/bench_codec.py --model onedc_sd15 --size 512x512 --batch 1 8 16 --images 16 --repeat 2 --device cuda --json "$LOG/codec_batch.json"
fi
if [ "$PART" = train ] || [ "$PART" = all ]; then
  step stage2 300 $PY scripts/bench_train.py --stage 2 experiment=stage2 --size 512 --batch 8 --steps 10 --warmup 2 --random-weights
  step stage1 240 $PY scripts/bench_train.py experiment=stage1 --size 512 --batch 8 --steps 5 --warmup 2 --random-weights
fi
