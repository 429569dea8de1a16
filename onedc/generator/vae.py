"""The frozen SD VAE (diffusers `AutoencoderKL`; the SD2.1 VAE at full size), with the
mid-block self-attention of encoder and decoder restricted to non-overlapping latent windows.

encode_latent: x (B, 3, H, W) in [-1, 1] -> posterior mode * scaling_factor (B, 4, H/8, W/8);
  the mode (not a sample) makes encoding deterministic.
decode_latent: latent (B, 4, H/8, W/8) -> image (B, 3, H, W), gradients flow through.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from ..config import VAEConfig


class WindowedAttnProcessor:
    """A diffusers attention processor that runs the whole attention block (its GroupNorm,
    attention and residual) separately on each non-overlapping `window` x `window` tile of a
    (B, C, H, W) feature map, tiles taken from the top-left (edge tiles may be smaller). For
    maps of at most window x window it is the ordinary global block."""

    def __init__(self, window: int):
        self.window = window
        self.block = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        def block(x: torch.Tensor) -> torch.Tensor:
            return self.block(attn, x, encoder_hidden_states, attention_mask, temb)

        h, w = hidden_states.shape[-2:]
        if hidden_states.dim() != 4 or (h <= self.window and w <= self.window):
            return block(hidden_states)
        win = self.window
        rows = [
            torch.cat(
                [block(hidden_states[..., top : top + win, left : left + win].contiguous()) for left in range(0, w, win)],
                dim=-1,
            )
            for top in range(0, h, win)
        ]
        return torch.cat(rows, dim=-2)


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    """A frozen AutoencoderKL with the architecture of `cfg` (random weights until loaded) and
    windowed mid-block attention."""
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
    for mid in (vae.encoder.mid_block, vae.decoder.mid_block):
        for attention in mid.attentions:
            attention.set_processor(WindowedAttnProcessor(cfg.attention_window))
    return vae.requires_grad_(False).eval()


def encode_latent(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor


def decode_latent(vae: AutoencoderKL, latent: torch.Tensor) -> torch.Tensor:
    return vae.decode(latent / vae.config.scaling_factor).sample
