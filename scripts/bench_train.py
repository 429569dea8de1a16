"""Benchmark: training throughput (steps/s, images/s) and peak memory of Stage I or Stage II.

Builds the stage's real trainer (`Stage1Trainer` / `Stage2Trainer`: modules, optimizers,
Accelerate, mixed precision) and times --steps calls of its `train_batch` on random images of one
crop size, after --warmup calls; no data loading, checkpoints or validation. Stage II starts from
a freshly saved untrained model of the config; a Stage II step is one guidance update plus, every
`dmd.generator_every`-th step, a generator update, so --steps should cover whole cycles.
--random-weights replaces every external weight by its seeded initialisation (and LPIPS's VGG16
by a random one): the compute is the same, nothing needs downloading. --profile then runs
--steps more steps with per-component hooks (onedc/train/profiling.py) and prints a Markdown
table: forward and backward ms, activation memory, optimizer steps. Examples:
    python scripts/bench_train.py experiment=quickstart --size 128 --batch 4
    python scripts/bench_train.py --stage 2 experiment=quickstart_stage2 --size 128 --batch 2
    python scripts/bench_train.py experiment=stage1 --size 512 --batch 8 --random-weights            # GPU
    python scripts/bench_train.py --stage 2 experiment=stage2 --size 512 --batch 8 --random-weights  # GPU
    python scripts/bench_train.py experiment=quickstart --size 128 --batch 4 --profile train.channels_last=true
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

import torch

from onedc.model import OneDC
from onedc.train.config import compose
from onedc.train.profiling import StepProfiler
from onedc.train.stage1 import Stage1Trainer
from onedc.train.stage2 import Stage2Trainer


def use_random_weights(run, folder: Path) -> None:
    """No external weights: every frozen part keeps its seeded init; LPIPS gets a random VGG16."""
    import torchvision

    for field in dataclasses.fields(run.model.external):
        setattr(run.model.external, field.name, None)
    if run.loss.lpips_weight > 0:
        path = folder / "vgg16-random.pth"
        torch.save(torchvision.models.vgg16().state_dict(), path)
        run.weights[run.loss.lpips_weights] = str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="training config overrides, e.g. experiment=stage1")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--random-weights", action="store_true", help="seeded init instead of the external weights")
    parser.add_argument("--profile", action="store_true", help="then profile --steps more steps per component")
    parser.add_argument("--cpu-time", action="store_true",
                        help="CPU: time by the process's CPU time, not wall time (a shared, loaded machine; use OMP_NUM_THREADS=1)")
    args = parser.parse_intermixed_args()  # overrides may follow the options
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stage1 = tmp / "stage1"  # Stage II's starting checkpoint
        run = compose([*args.overrides, "train.logger=none"] + ([f"train.init_from={stage1}"] if args.stage == 2 else []))
        if args.random_weights:
            use_random_weights(run, tmp)
        if args.stage == 2:
            OneDC.untrained(run.model).save_pretrained(stage1)
        trainer = (Stage1Trainer if args.stage == 1 else Stage2Trainer)(run, tmp / "run")
        accelerator = trainer.accelerator = trainer.make_accelerator()
        trainer.build()
        device = accelerator.device
        batch = {
            "image": torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1,
            "caption": ["a photograph of a cat on a sofa"] * args.batch,
        }
        for step in range(args.warmup):
            trainer.train_batch(batch, step)
        clock = time.process_time if args.cpu_time else time.perf_counter
        elapsed = timed_steps(trainer, batch, range(args.warmup, args.warmup + args.steps), device, clock)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        t = run.train
        settings = (f"gradient checkpointing {t.gradient_checkpointing or 'off'}, compile {t.compile}, channels_last {t.channels_last}, "
                    f"fused AdamW {run.optimizer.fused}, frozen bf16 {t.frozen_bf16}")
        print(f"{run.model.name} Stage {'I' * args.stage}, batch {args.batch} x {args.size}x{args.size}, {t.mixed_precision}, {settings}, {name}"
              f"{', by CPU time' if args.cpu_time else ''}: "
              f"{args.steps / elapsed:.3f} steps/s, {args.steps * args.batch / elapsed:.2f} images/s, "
              f"peak {'GPU' if device.type == 'cuda' else 'process RSS'} memory {peak:.0f} MB")
        if args.profile:
            profiler = StepProfiler(trainer.profile_components(), trainer.profile_optimizers(), device, clock)
            start = args.warmup + args.steps
            with profiler.attached():
                elapsed = timed_steps(trainer, batch, range(start, start + args.steps), device, clock, after_step=profiler.end_step)
            print(profiler.table(args.steps, elapsed))


def timed_steps(trainer, batch: dict, steps: range, device: torch.device, clock, after_step=None) -> float:
    """Seconds of `clock` for `trainer.train_batch` over `steps` (CUDA-synchronised; peak memory counted from here)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = clock()
    for step in steps:
        trainer.train_batch(batch, step)
        if after_step is not None:
            after_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start


if __name__ == "__main__":
    main()
