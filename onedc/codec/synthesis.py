"""Synthesis transform g_s (docs/design.md 3.6).

y_hat (B, Cy, H/16, W/16) and c (B, Cc, H/64, W/64) -> y_in (B, out_channels, H/8, W/8),
the feature that replaces the one-step U-Net's input.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import BlockConfig, SynthesisConfig
from .blocks import DepthConvBlock, ResBlock, ResidualBlockUpsample, conv1x1, conv3x3


class SynthesisTransform(nn.Module):
    def __init__(self, y_channels: int, c_channels: int, cfg: SynthesisConfig, bc: BlockConfig):
        super().__init__()
        a, b = cfg.y_channels
        n = cfg.res_blocks
        # y_hat branch: DCB(Cy -> a) -> DCB(a) -> n ResBlk(a) -> [1x1, PixelShuffle, 3x3] (a -> b) -> n ResBlk(b)
        self.trans_coding = nn.Sequential(DepthConvBlock(y_channels, a, bc), DepthConvBlock(a, a, bc))
        self.blocks = nn.Sequential(
            *(ResBlock(a, a, bc) for _ in range(n)),
            conv1x1(a, 4 * a),
            nn.PixelShuffle(2),
            conv3x3(a, b),
            *(ResBlock(b, b, bc) for _ in range(n)),
        )
        # c branch: RBUp(Cc -> c0) -> DCB(c0) -> RBUp(c0 -> c1) -> DCB(c1) -> RBUp(c1 -> c2), 1/64 -> 1/8
        c0, c1, c2 = cfg.c_channels
        self.sem_up = nn.Sequential(
            ResidualBlockUpsample(c_channels, c0, bc),
            DepthConvBlock(c0, c0, bc),
            ResidualBlockUpsample(c0, c1, bc),
            DepthConvBlock(c1, c1, bc),
            ResidualBlockUpsample(c1, c2, bc),
        )
        self.conv_out = DepthConvBlock(b + c2, cfg.out_channels, bc)

    def forward(self, y_hat: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.conv_out(torch.cat([self.blocks(self.trans_coding(y_hat)), self.sem_up(c)], dim=1))
