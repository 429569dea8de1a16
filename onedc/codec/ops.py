"""Quantisation operators of the training pass, with the gradients CompressAI gives them."""

from __future__ import annotations

import torch


def quantize_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, the identity's gradient in the backward pass."""
    return (torch.round(x) - x).detach() + x


class LowerBound(torch.autograd.Function):
    """max(x, bound). The gradient passes where x >= bound, and also below the bound where it
    points upwards (grad < 0: descent would raise x back towards the bound)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, bound = ctx.saved_tensors
        pass_through = (x >= bound) | (grad_output < 0)
        return pass_through * grad_output, None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    """`LowerBound` with a scalar bound (in x's dtype)."""
    return LowerBound.apply(x, x.new_tensor([bound]))
