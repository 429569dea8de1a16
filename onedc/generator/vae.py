"""The frozen SD VAE (diffusers `AutoencoderKL`; the SD2.1 VAE at full size).

encode_latent: x (B, 3, H, W) in [-1, 1] -> posterior mode * scaling_factor (B, 4, H/8, W/8).
The mode (not a sample) makes encoding deterministic: the same image gives the same file.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from ..config import VAEConfig


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    """A frozen AutoencoderKL with the architecture of `cfg` (random weights until loaded)."""
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.sample_size,
        scaling_factor=cfg.scaling_factor,
    )
    return vae.requires_grad_(False).eval()


def encode_latent(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
