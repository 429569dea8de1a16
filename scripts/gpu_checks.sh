#!/usr/bin/env bash
# The checks that need a GPU, in one go (docs/benchmarks.md records their output).
#   codec part (about 6 minutes on an H200, at most 10; each step has its own time limit and log):
#     cuda_tests     the CUDA bit-exactness tests (a file encoded on the CPU decodes identically
#                    on the GPU and the other way round)
#     codec_eager    full-size per-stage profile, encode/decode time at 512^2 and 1024^2 (bf16,
#                    decoding-only model, frozen weights in bf16) and decode memory at 512^2 as
#                    weights vs activations
#     codec_compile  the same decode with --compile at 1024^2, compile time reported apart
#     codec_batch    batched coding throughput at 512^2, batch 1, 8, 16 (images/s)
#   costs part (about 5 minutes):
#     codec_costs    the size guard's CUDA coefficients: full-size encode / decode time and peak
#                    memory at 512^2 to 2048^2 (bf16), fitted as in configs/limits.yaml
#   train part (about 9 minutes): Stage I and Stage II throughput, peak memory and per-component
#     profile, full size, bf16, batch 8 x 512^2, with the earlier settings ("before": no speed
#     setting, optimizer.fused=false) and with the speed settings (fused AdamW, the default now,
#     train.frozen_bf16, train.channels_last; Stage II also the VAE decoder checkpointed: "after");
#     Stage I's 1024^2 policy at its batch (8 x 0.25 = 2); Stage I with train.compile last
#   eval part (about 5 minutes): evaluation throughput, full size, batch 8 x 512^2, bf16, all
#     metrics (LPIPS, DISTS, FID features; random backbones where their weights are missing), and
#     the projected wall time of MS-COCO 30K x 7 rate points on 1 and 8 GPUs; eager, then with
#     the decoder compiled (onedc-eval run --compile; compiled by the warm-up batch)
# Random full-size weights (--random-weights / untrained): the compute is that of the real models.
# Usage: bash scripts/gpu_checks.sh [LOG_DIR] [codec|costs|train|eval|all]   (default: gpu_logs all)
# On a GPU machine without internet whose python has PyTorch: gather the wheels it lacks here
# (bash scripts/offline_wheels.sh wheels), copy the checkout with them, and there run
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site wheels/*.whl &&
#   PYTHONPATH=/tmp/site PYTHONSAFEPATH=1 bash scripts/gpu_checks.sh gpu_logs codec
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
if [ "$PART" = costs ] || [ "$PART" = all ]; then
  step codec_costs 420 $PY scripts/measure_costs.py --model onedc_sd15 --device cuda --precision bf16 --sizes 512 1024 2048 --json "$LOG/costs_sd15_cuda.json"
fi
if [ "$PART" = train ] || [ "$PART" = all ]; then
  BENCH="$PY scripts/bench_train.py --random-weights --size 512 --batch 8"
  FAST="train.frozen_bf16=true train.channels_last=true"   # with optimizer.fused=true, the default
  step stage1_before 80 $BENCH experiment=stage1 --steps 4 --warmup 2 --profile optimizer.fused=false
  step stage1_after 80 $BENCH experiment=stage1 --steps 4 --warmup 2 --profile $FAST
  step stage1_1024 60 $PY scripts/bench_train.py --random-weights --size 1024 --batch 2 experiment=stage1 --steps 3 --warmup 2 $FAST
  step stage2_before 100 $BENCH --stage 2 experiment=stage2 --steps 10 --warmup 2 --profile optimizer.fused=false
  step stage2_after 100 $BENCH --stage 2 experiment=stage2 --steps 10 --warmup 2 --profile $FAST "train.gradient_checkpointing=[vae_decoder]"
  step stage1_compile 120 $BENCH experiment=stage1 --steps 5 --warmup 3 $FAST train.compile=true
fi
if [ "$PART" = eval ] || [ "$PART" = all ]; then
  step eval 200 $PY scripts/bench_eval.py --model onedc_sd15 --random-weights --size 512 --images 40 --batch-size 8 --workers 4 --device cuda --json "$LOG/eval.json"
  step eval_compile 300 $PY scripts/bench_eval.py --model onedc_sd15 --random-weights --size 512 --images 40 --batch-size 8 --workers 4 --device cuda --compile --json "$LOG/eval_compile.json"
fi
