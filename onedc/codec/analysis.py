"""Analysis transform g_a (docs/design.md 3.1).

x (B, 3, H, W) in [-1, 1] and the SD VAE latent x_lat (B, 4, H/8, W/8)
  -> y (B, y_channels, H/16, W/16) and sem (B, block_out_channels[-1], H/64, W/64).
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import nn

from ..config import AnalysisConfig, BlockConfig
from .blocks import DepthConvBlock, ResBlock, SpatialAttention, conv3x3, forward_capturing


class AnalysisTransform(nn.Module):
    def __init__(self, cfg: AnalysisConfig, y_channels: int, bc: BlockConfig):
        super().__init__()
        self.timestep = cfg.timestep
        self.pix_emb = nn.Conv2d(3, cfg.pixel_channels, cfg.patch_size, stride=cfg.patch_size)
        self.pix_fusion = nn.Conv2d(cfg.pixel_channels + cfg.latent_channels, cfg.fused_channels, 1)
        u = cfg.unet
        self.unet = UNet2DModel(
            in_channels=cfg.fused_channels,
            out_channels=cfg.trunk_channels,
            block_out_channels=tuple(u.block_out_channels),
            down_block_types=tuple(u.down_block_types),
            up_block_types=tuple(u.up_block_types),
            layers_per_block=u.layers_per_block,
            attention_head_dim=u.attention_head_dim,
            norm_num_groups=u.norm_num_groups,
            norm_eps=u.norm_eps,
        )
        # The U-Net's conv_in is replaced by ResBlks and a stride-2 conv, so it runs at 1/16.
        stem = u.block_out_channels[0]
        blocks = [ResBlock(cfg.fused_channels, stem, bc)] + [ResBlock(stem, stem, bc) for _ in range(cfg.stem_blocks - 1)]
        self.unet.conv_in = nn.Sequential(*blocks, conv3x3(stem, stem, stride=2))
        t = cfg.trunk_channels
        self.trunk = nn.Sequential(
            ResBlock(t, t, bc),
            SpatialAttention(t, bc),
            ResBlock(t, t, bc),
            DepthConvBlock(t, t, bc),
            DepthConvBlock(t, y_channels, bc),
        )

    def forward(self, x: torch.Tensor, x_lat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (y, sem); sem is the U-Net mid-block output."""
        fused = self.pix_fusion(torch.cat([self.pix_emb(x), x_lat], dim=1))
        out, sem = forward_capturing(self.unet, self.unet.mid_block, fused, self.timestep)
        return self.trunk(out.sample), sem
