"""The auxiliary code predictor P_aux of semantic distillation (docs/design.md 3.9); training only.

c (B, C, H/64, W/64) -> x2 upsampling -> DualSwinBlocks (W-MSA then SW-MSA) -> 1x1 head
  -> logits (B, K, H/32, W/32) over the K codes of the MaskGIT tokenizer.
`code_prediction_loss` is L_aux = CE(logits, codes) + mse_weight * MSE(soft code, z_q), with
the soft code sum_k softmax_k * e_k over the tokenizer's frozen codebook e.
Sub-module names follow the released predictor (`up_sample`, `blocks.i.block_w/block_sw`,
`mlp_head`); the shifted-window masks are computed, not stored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BlockConfig, PredictorConfig
from .blocks import DepthConvBlock, conv1x1


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(num_windows, window^2, window^2) bool mask, True where two tokens of a cyclically shifted
    window came from different regions of the unshifted map (Swin's SW-MSA mask)."""
    region = torch.zeros(height, width)
    label = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            region[rows, cols] = label
            label += 1
    windows = region.view(height // window, window, width // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    return windows[:, :, None] != windows[:, None, :]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows of a (B, H, W, C) map; with
    `shifted`, the windows are cyclically shifted by window / 2 and masked (SW-MSA)."""

    def __init__(self, dim: int, heads: int, head_dim: int, window: int, shifted: bool, position_bias: bool):
        super().__init__()
        self.heads, self.head_dim, self.window, self.shifted = heads, head_dim, window, shifted
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim)
        # learned absolute bias between the positions of a window (no relative bias)
        self.pos_embedding = nn.Parameter(torch.randn(window**2, window**2) * 0.02) if position_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        win, shift = self.window, self.window // 2
        if h % win or w % win:
            raise ValueError(f"the code predictor needs a 1/32 grid that is a multiple of its window ({win}), got {h}x{w}")
        if self.shifted:
            x = torch.roll(x, (-shift, -shift), dims=(1, 2))
        n_windows = (h // win) * (w // win)
        tokens = x.view(b, h // win, win, w // win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b * n_windows, win * win, c)
        q, k, v = self.to_qkv(tokens).view(b * n_windows, win * win, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = torch.zeros(n_windows, win * win, win * win, dtype=x.dtype, device=x.device)
        if self.pos_embedding is not None:
            bias = bias + self.pos_embedding
        if self.shifted:
            bias = bias.masked_fill(shifted_window_mask(h, w, win, shift).to(x.device), float("-inf"))
        bias = bias.repeat(b, 1, 1)[:, None]  # (B * windows, 1, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale 1/sqrt(head_dim)
        out = self.to_out(out.transpose(1, 2).reshape(b * n_windows, win * win, -1))
        out = out.view(b, h // win, w // win, win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        if self.shifted:
            out = torch.roll(out, (shift, shift), dims=(1, 2))
        return out


class SwinBlock(nn.Module):
    """Pre-LayerNorm transformer layer with window attention and a GELU MLP, both residual."""

    def __init__(self, dim: int, cfg: PredictorConfig, shifted: bool, position_bias: bool):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attention_block = WindowAttention(dim, cfg.heads, cfg.head_dim, cfg.window, shifted, position_bias)
        self.norm_mlp = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp_block = nn.Module()
        self.mlp_block.net = nn.Sequential(nn.Linear(dim, cfg.mlp_ratio * dim), nn.GELU(), nn.Linear(cfg.mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention_block(self.norm_attn(x))
        return x + self.mlp_block.net(self.norm_mlp(x))


class DualSwinBlock(nn.Module):
    def __init__(self, dim: int, cfg: PredictorConfig, position_bias: bool):
        super().__init__()
        self.block_w = SwinBlock(dim, cfg, shifted=False, position_bias=position_bias)
        self.block_sw = SwinBlock(dim, cfg, shifted=True, position_bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_sw(self.block_w(x))


class CodePredictor(nn.Module):
    def __init__(self, dim: int, codebook_size: int, cfg: PredictorConfig, bc: BlockConfig):
        super().__init__()
        self.up_sample = nn.Sequential(
            DepthConvBlock(dim, dim, bc), conv1x1(dim, 4 * dim), nn.PixelShuffle(2), DepthConvBlock(dim, dim, bc)
        )
        self.blocks = nn.ModuleList(DualSwinBlock(dim, cfg, position_bias=i < cfg.position_bias_blocks) for i in range(cfg.blocks))
        self.mlp_head = nn.Sequential(
            conv1x1(dim, cfg.head_channels),
            nn.GroupNorm(cfg.head_groups, cfg.head_channels, eps=cfg.head_norm_eps),
            nn.GELU(),
            conv1x1(cfg.head_channels, dim),
            nn.GroupNorm(cfg.head_groups, dim, eps=cfg.head_norm_eps),
            nn.GELU(),
            conv1x1(dim, codebook_size),
        )

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """c (B, C, h, w) -> logits (B, K, 2h, 2w)."""
        x = self.up_sample(c).permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        return self.mlp_head(x.permute(0, 3, 1, 2))


def code_prediction_loss(
    logits: torch.Tensor, codes: torch.Tensor, codebook: torch.Tensor, z_q: torch.Tensor, mse_weight: float
) -> dict[str, torch.Tensor]:
    """logits (B, K, h, w), target codes (B, h, w), codebook (K, D), quantised latent z_q
    (B, D, h, w) -> {"ce", "mse", "loss" = ce + mse_weight * mse}."""
    ce = F.cross_entropy(logits, codes)
    soft_code = torch.einsum("bkhw,kd->bdhw", logits.softmax(dim=1), codebook)
    mse = F.mse_loss(soft_code, z_q)
    return {"ce": ce, "mse": mse, "loss": ce + mse_weight * mse}
