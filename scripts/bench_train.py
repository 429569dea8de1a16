"""Benchmark: Stage I training throughput (steps/s, images/s) and peak memory for a config.

Runs --steps optimizer steps on random images of one crop size (no data loading, no
checkpoints), after --warmup steps, under the config's mixed precision. Examples:
    python scripts/bench_train.py experiment=quickstart --size 128 --batch 4
    python scripts/bench_train.py experiment=stage1 --size 512 --batch 8      # on a GPU
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from onedc.train.config import compose
from onedc.train.losses import lmbda_at
from onedc.train.stage1 import build_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="training config overrides, e.g. experiment=stage1")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    run = compose(args.overrides)
    device = torch.device("cuda" if torch.cuda.is_available() and not run.train.cpu else "cpu")
    module = build_module(run).to(device).train()
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=run.train.lr, weight_decay=run.train.weight_decay)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.train.mixed_precision)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            terms = module(x, lmbda_at(10**9, run.train.lmbda, run.loss.lmbda_warmup_steps, run.loss.lmbda_start))
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, run.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{run.model.name} Stage I, batch {args.batch} x {args.size}x{args.size}, {run.train.mixed_precision}, {name}: "
          f"{args.steps / elapsed:.3f} steps/s, {args.steps * args.batch / elapsed:.2f} images/s, "
          f"peak {'GPU' if device.type == 'cuda' else 'process RSS'} memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
