"""Stage I loss (docs/design.md 6.2):

    L = w_l1 * L1 + w_lpips * LPIPS(VGG) + lambda(step) * bpp_y + w_aux * (CE + mse_weight * MSE_code)

L1 is the mean absolute error of images mapped to [0, 1]; bpp_y the training rate of y over the
(padded) input pixels, averaged over the batch; lambda(step) the quadratic warm-up
lambda_start + (min(step, W) / W)^2 * (lambda - lambda_start). All weights come from the config.

LPIPS(VGG) is the `lpips` package's VGG variant with torchvision's VGG16 weights, loaded from a
local file (weights.py). The official code uses piq's VGG-LPIPS with L2 pooling: a deliberate,
documented difference.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..codec.code_predictor import code_prediction_loss
from ..state_dicts import load_torchvision_features


def lmbda_at(step: int, lmbda: float, warmup_steps: int, start: float) -> float:
    """The rate weight at `step`: quadratic warm-up from `start` to `lmbda` over `warmup_steps`."""
    if warmup_steps <= 0:
        return lmbda
    progress = min(step, warmup_steps) / warmup_steps
    return start + progress**2 * (lmbda - start)


def build_lpips_vgg(vgg16_weights: Path) -> nn.Module:
    """lpips.LPIPS(net="vgg") with its VGG16 backbone read from a torchvision `vgg16-*.pth`
    file (no download): torchvision's `features.N.*` keys map onto lpips' `net.sliceK.N.*`."""
    import lpips

    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    load_torchvision_features(list(model.net.children()), vgg16_weights, "LPIPS VGG16 backbone")
    return model.eval().requires_grad_(False)


class Stage1Loss(nn.Module):
    """Combines the terms; `perceptual` maps (x_hat, x) in [-1, 1] to per-image distances, or is
    None when its weight is zero (e.g. offline CPU runs without VGG weights)."""

    def __init__(self, cfg, perceptual: nn.Module | None, code_mse_weight: float):
        super().__init__()
        if cfg.lpips_weight > 0 and perceptual is None:
            raise ValueError("loss.lpips_weight > 0 needs a perceptual network")
        self.cfg, self.perceptual, self.code_mse_weight = cfg, perceptual, code_mse_weight

    def forward(self, x: torch.Tensor, out: dict, logits: torch.Tensor, codes: torch.Tensor, codebook: torch.Tensor,
                z_q: torch.Tensor, lmbda: float) -> dict[str, torch.Tensor]:
        c = self.cfg
        pixels = x.shape[-2] * x.shape[-1]
        terms = {
            "l1": (out["x_hat"].float() - x).abs().mean() / 2,
            "bpp_y": (out["bits"]["y"] / pixels).mean(),
        }
        terms["lpips"] = self.perceptual(out["x_hat"], x).mean() if self.perceptual is not None else torch.zeros_like(terms["l1"])
        aux = code_prediction_loss(logits.float(), codes, codebook, z_q, self.code_mse_weight)
        terms.update(code_ce=aux["ce"], code_mse=aux["mse"], aux=aux["loss"])
        total = c.l1_weight * terms["l1"] + c.lpips_weight * terms["lpips"] + lmbda * terms["bpp_y"] + c.aux_weight * terms["aux"]
        return {"loss": total, **terms}
