"""The optimizers and the learning-rate schedule of both stages (configs/optimizer/, configs/schedule/).

The learning rate is a function of the optimizer step alone,
    lr(step) = base_lr * warm-up(step) * factor(step),
set on the optimizer before each update (`set_lr`). A resumed run follows it exactly (the step is
in the checkpoint), and a changed schedule or base lr takes effect when a run is resumed.
"""

from __future__ import annotations

from bisect import bisect_right

import torch

from .config import OptimizerConfig, ScheduleConfig


def adamw(params: list[torch.nn.Parameter], cfg: OptimizerConfig, lr: float) -> torch.optim.AdamW:
    """AdamW over `params` with the configured betas, weight decay and kernel, starting at `lr`."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=cfg.fused)


def lr_factor(step: int, schedule: ScheduleConfig) -> float:
    """The multiplier of the base lr for the update at `step` (0 = the first): step / warmup_steps
    during the warm-up (diffusers' constant_with_warmup), then 1 until the first milestone and
    factors[i] from milestones[i] on."""
    if step < schedule.warmup_steps:
        return step / schedule.warmup_steps
    reached = bisect_right(schedule.milestones, step)
    return schedule.factors[reached - 1] if reached else 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
