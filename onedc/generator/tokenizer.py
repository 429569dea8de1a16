"""The MaskGIT VQGAN tokenizer (encoder and codebook), the frozen teacher of semantic
distillation (docs/design.md 5); training only. Loads the public `maskgit-vqgan-imagenet-f16-256.bin`
(its decoder weights are not needed and not built).

tokenize: x (B, 3, H, W) in [-1, 1] -> halved to (H/2, W/2), mapped to [0, 1] -> encoder
  (f16, average-pool downsampling, no attention) -> nearest codebook entries:
  codes (B, H/32, W/32) and the quantised latent z_q (B, D, H/32, W/32).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..codec.blocks import ResBlock, conv1x1, conv3x3
from ..config import BlockConfig, TokenizerConfig


class VQGANEncoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig, bc: BlockConfig):
        super().__init__()
        widths = [cfg.hidden_channels * m for m in cfg.channel_mult]
        self.conv_in = conv3x3(3, widths[0], bias=False)
        self.down = nn.ModuleList()
        cin = widths[0]
        for width in widths:
            blocks = [ResBlock(cin if j == 0 else width, width, bc) for j in range(cfg.res_blocks)]
            self.down.append(nn.ModuleDict({"block": nn.ModuleList(blocks)}))
            cin = width
        self.mid = nn.Sequential(*(ResBlock(cin, cin, bc) for _ in range(cfg.res_blocks)))
        self.norm_out = nn.GroupNorm(bc.norm_groups, cin, eps=bc.norm_eps)
        self.act = nn.SiLU()
        self.conv_out = conv1x1(cin, cfg.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [0, 1] -> z (B, D, H / 2^(levels-1), ...)."""
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for block in level["block"]:
                h = block(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        return self.conv_out(self.act(self.norm_out(self.mid(h))))


class Codebook(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(size, dim)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, D, h, w) -> nearest codes (B, h, w) and their entries z_q (B, D, h, w)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        e = self.embedding.weight
        distances = flat.square().sum(1, keepdim=True) - 2 * flat @ e.t() + e.square().sum(1)
        codes = distances.argmin(dim=1).view(z.shape[0], *z.shape[2:])
        return codes, self.embedding(codes).permute(0, 3, 1, 2)


class MaskGITTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig, bc: BlockConfig):
        super().__init__()
        self.input_downsample = cfg.input_downsample
        self.encoder = VQGANEncoder(cfg, replace(bc, norm_groups=cfg.norm_groups, norm_eps=cfg.norm_eps))
        self.quantize = Codebook(cfg.codebook_size, cfg.z_channels)
        self.requires_grad_(False).eval()

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantize.embedding.weight

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) in [-1, 1] -> codes (B, H/32, W/32), z_q (B, D, H/32, W/32)."""
        h, w = x.shape[-2:]
        small = F.interpolate((x + 1) / 2, size=(h // self.input_downsample, w // self.input_downsample), mode="bilinear", align_corners=False)
        return self.quantize(self.encoder(small))
