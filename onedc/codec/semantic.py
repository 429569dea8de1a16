"""Semantic hyperprior decoder h_sem (docs/design.md 3.5).

f_z (B, Ch, H/64, W/64) -> c (B, Cc, H/64, W/64); `tokens(c)` flattens c row-major to the
(B, H/64 * W/64, Cc) cross-attention context of the one-step U-Net.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import BlockConfig, SemanticConfig
from .blocks import DepthConvBlock, ResBlock, SpatialAttention


class SemanticDecoder(nn.Module):
    """DCB(Ch -> Cc) -> stages x [ResBlk, attentions_per_stage x Attn] -> DCB(Cc)."""

    def __init__(self, in_channels: int, cfg: SemanticConfig, bc: BlockConfig):
        super().__init__()
        ch = cfg.channels
        layers: list[nn.Module] = [DepthConvBlock(in_channels, ch, bc)]
        for _ in range(cfg.stages):
            layers.append(ResBlock(ch, ch, bc))
            layers.extend(SpatialAttention(ch, bc) for _ in range(cfg.attentions_per_stage))
        layers.append(DepthConvBlock(ch, ch, bc))
        self.blocks = nn.Sequential(*layers)

    def forward(self, f_z: torch.Tensor) -> torch.Tensor:
        return self.blocks(f_z)


def tokens(c: torch.Tensor) -> torch.Tensor:
    """c (B, C, h, w) -> (B, h * w, C), row-major positions, no padding or position embedding."""
    return c.flatten(2).transpose(1, 2)
