"""The speed settings of both stages (train.compile, train.channels_last, train.frozen_bf16;
docs/benchmarks.md has what each one measured)."""

from __future__ import annotations

import torch
from torch import nn


def frozen_to(module: nn.Module, dtype: torch.dtype) -> None:
    """Store in `dtype` every sub-module of `module` all of whose parameters are frozen (the
    largest such sub-modules: e.g. the U-Net base layers under their trainable LoRA adapters)."""
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        module.to(dtype)
        return
    for child in module.children():
        frozen_to(child, dtype)


def apply(modules: list[nn.Module], heavy: list[nn.Module], frozen: list[nn.Module], train) -> None:
    """The `train` speed settings on a stage's modules (before Accelerate prepares them):
    channels_last on `modules`, torch.compile of the `heavy` ones (in place: same weights, same
    keys), bf16 storage of the frozen parts of `frozen`."""
    if train.frozen_bf16:
        for module in frozen:
            frozen_to(module, torch.bfloat16)
    if train.channels_last:
        for module in modules:
            module.to(memory_format=torch.channels_last)
    if train.compile:
        for module in heavy:
            module.compile()


def images(x: torch.Tensor, train) -> torch.Tensor:
    """A batch of images (B, 3, H, W) in the memory layout of the models."""
    return x.contiguous(memory_format=torch.channels_last) if train.channels_last else x
