"""Hyperprior: h_enc, the FSQ hyper quantizer and the hyper-decoder (docs/design.md 3.2-3.4).

y (B, Cy, H/16, W/16) and sem (B, Cs, H/64, W/64) -> z (B, D, H/64, W/64), D = len(levels)
z -> FSQ -> z_hat (values in {-1, -0.5, 0, 0.5} for 4 levels) and indices (B, H/64, W/64)
z_hat -> f_z (B, Ch, H/64, W/64), shared by h_sem, and the entropy trunk (B, Ch, H/16, W/16).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import BlockConfig, FSQConfig, HyperDecoderConfig, HyperEncoderConfig
from .blocks import DepthConvBlock, ResidualBlockUpsample, SpatialAttention, conv1x1, conv3x3
from .ops import quantize_ste


class HyperEncoder(nn.Module):
    """h_enc: y branch down to 1/64, concatenated with sem, fused down to D channels."""

    def __init__(self, y_channels: int, sem_channels: int, z_channels: int, cfg: HyperEncoderConfig, bc: BlockConfig):
        super().__init__()
        c0, c1 = cfg.channels
        self.y_trans_coding = nn.Sequential(
            DepthConvBlock(y_channels, y_channels, bc),
            conv3x3(y_channels, y_channels, stride=2),
            DepthConvBlock(y_channels, y_channels, bc),
            conv3x3(y_channels, y_channels, stride=2),
        )
        self.fusion = nn.Sequential(
            DepthConvBlock(y_channels + sem_channels, c0, bc),
            SpatialAttention(c0, bc),
            DepthConvBlock(c0, c1, bc),
            SpatialAttention(c1, bc),
            DepthConvBlock(c1, c1, bc),
            conv1x1(c1, z_channels),
        )

    def forward(self, y: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
        return self.fusion(torch.cat([self.y_trans_coding(y), sem], dim=1))


class FSQ(nn.Module):
    """Finite scalar quantization over the channel axis (Mentzer et al., ICLR 2024).

    Channel d is bounded by tanh to L_d levels, rounded with a straight-through estimator
    and normalised by L_d // 2. The index of a position is sum_d digit_d * prod_{e<d} L_e,
    digit_d = rounded_d + L_d // 2, so channel 0 is the least significant digit.
    """

    def __init__(self, cfg: FSQConfig):
        super().__init__()
        levels = torch.tensor(cfg.levels, dtype=torch.float64)
        basis = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), levels[:-1]]), 0)
        half_l = (levels - 1) * (1 + cfg.eps) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        view = (1, -1, 1, 1)
        # Non-persistent: derived from the config, not part of the weights.
        self.register_buffer("_half_l", half_l.float().view(view), persistent=False)
        self.register_buffer("_offset", offset.float().view(view), persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half_l).float().view(view), persistent=False)
        self.register_buffer("_half_width", torch.floor(levels / 2).float().view(view), persistent=False)
        self.register_buffer("_levels", levels.long().view(view), persistent=False)
        self.register_buffer("_basis", basis.long().view(view), persistent=False)
        self.dim = len(cfg.levels)
        self.codebook_size = int(math.prod(cfg.levels))
        self.bits = math.ceil(math.log2(self.codebook_size))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, D, h, w) -> z_hat (B, D, h, w) with straight-through gradients, indices (B, h, w)."""
        bounded = torch.tanh(z.float() + self._shift) * self._half_l - self._offset
        rounded = quantize_ste(bounded)
        digits = rounded.detach().round().long() + self._half_width.long()
        indices = (digits * self._basis).sum(dim=1)
        return rounded / self._half_width, indices

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, h, w) -> z_hat (B, D, h, w), identical to forward's z_hat values."""
        digits = torch.div(indices[:, None].long(), self._basis, rounding_mode="floor") % self._levels
        return (digits.float() - self._half_width) / self._half_width


class HyperDecoder(nn.Module):
    """Hyper-decoder stem (1x1 conv + LeakyReLU -> f_z) and h_ctx trunk (x4 up to 1/16)."""

    def __init__(self, z_channels: int, cfg: HyperDecoderConfig, bc: BlockConfig):
        super().__init__()
        ch = cfg.channels
        self.stem = nn.Sequential(conv1x1(z_channels, ch), nn.LeakyReLU(bc.stem_slope))
        self.trunk = nn.Sequential(
            DepthConvBlock(ch, ch, bc),
            ResidualBlockUpsample(ch, ch, bc),
            DepthConvBlock(ch, ch, bc),
            ResidualBlockUpsample(ch, ch, bc),
            DepthConvBlock(ch, ch, bc),
        )

    def forward(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (f_z at 1/64, entropy features at 1/16)."""
        f_z = self.stem(z_hat)
        return f_z, self.trunk(f_z)
