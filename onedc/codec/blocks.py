"""Building blocks of the OneDC codec (docs/design.md 2).

Sub-module names follow the vocabulary of the released checkpoints (DCVC's DepthConvBlock,
the VQGAN ResBlock and attention), so the official weights map onto ours by prefix renames.
All activations are modules (never functional calls) so that `exact.py` can swap them.
Shapes are (B, C, H, W) throughout.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BlockConfig


def forward_capturing(module: nn.Module, inner: nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """`module(*args, **kwargs)` and the output of its submodule `inner` during that call
    (captured with a forward hook, removed afterwards): e.g. a diffusers U-Net's mid-block."""
    captured: list[Any] = []
    handle = inner.register_forward_hook(lambda _module, _args, output: captured.append(output))
    try:
        output = module(*args, **kwargs)
    finally:
        handle.remove()
    return output, captured[-1]


def conv1x1(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=bias)


def conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class DepthConv(nn.Module):
    """1x1 conv -> LeakyReLU -> 3x3 depthwise conv -> 1x1 conv (cin -> cout), plus the
    identity (cin == cout) or a 1x1 `adaptor` skip."""

    def __init__(self, cin: int, cout: int, slope: float):
        super().__init__()
        self.conv1 = nn.Sequential(conv1x1(cin, cin), nn.LeakyReLU(slope))
        self.depth_conv = nn.Conv2d(cin, cin, 3, padding=1, groups=cin)
        self.conv2 = conv1x1(cin, cout)
        self.adaptor = conv1x1(cin, cout) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.adaptor is None else self.adaptor(x)
        return self.conv2(self.depth_conv(self.conv1(x))) + skip


class ConvFFN(nn.Module):
    """1x1 conv to expansion*ch, split in two halves with different LeakyReLU slopes, summed,
    1x1 conv back to ch; identity skip."""

    def __init__(self, ch: int, expansion: int, slopes: list[float]):
        super().__init__()
        self.conv = conv1x1(ch, expansion * ch)
        self.act_a = nn.LeakyReLU(slopes[0])
        self.act_b = nn.LeakyReLU(slopes[1])
        self.conv_out = conv1x1(expansion * ch // 2, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv(x).chunk(2, dim=1)
        return x + self.conv_out(self.act_a(a) + self.act_b(b))


class DepthConvBlock(nn.Module):
    """DCB(cin -> cout) = DepthConv then ConvFFN ("DepthConvBlock4" of DCVC-DC/FM)."""

    def __init__(self, cin: int, cout: int, bc: BlockConfig):
        super().__init__()
        self.block = nn.Sequential(DepthConv(cin, cout, bc.depthwise_slope), ConvFFN(cout, bc.ffn_expansion, bc.ffn_slopes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResidualBlockUpsample(nn.Module):
    """RBUp(cin -> cout), x2: [1x1 conv + PixelShuffle -> LeakyReLU -> 3x3 conv -> LeakyReLU]
    plus a separate 1x1 conv + PixelShuffle skip."""

    def __init__(self, cin: int, cout: int, bc: BlockConfig):
        super().__init__()
        self.subpel_conv = nn.Sequential(conv1x1(cin, 4 * cout), nn.PixelShuffle(2))
        self.act1 = nn.LeakyReLU(bc.upsample_slopes[0])
        self.conv = conv3x3(cout, cout)
        self.act2 = nn.LeakyReLU(bc.upsample_slopes[1])
        self.upsample = nn.Sequential(conv1x1(cin, 4 * cout), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.conv(self.act1(self.subpel_conv(x)))) + self.upsample(x)


class ResBlock(nn.Module):
    """VQGAN residual block: GN -> SiLU -> 3x3 conv -> GN -> SiLU -> 3x3 conv (bias-free).

    With cin == cout the input is added back. With cin != cout we reproduce the released
    checkpoints' quirk (docs/design.md 2): the 1x1 `nin_shortcut` (cout -> cout) is applied
    to the block's own output and there is no input skip, i.e. it returns h + conv1x1(h).
    This occurs once, in g_a's stem (320 -> 512), and is what the official weights expect.
    """

    def __init__(self, cin: int, cout: int, bc: BlockConfig):
        super().__init__()
        self.norm1 = nn.GroupNorm(bc.norm_groups, cin, eps=bc.norm_eps)
        self.conv1 = conv3x3(cin, cout, bias=False)
        self.norm2 = nn.GroupNorm(bc.norm_groups, cout, eps=bc.norm_eps)
        self.conv2 = conv3x3(cout, cout, bias=False)
        self.act = nn.SiLU()
        self.nin_shortcut = conv1x1(cout, cout, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        if self.nin_shortcut is not None:
            return h + self.nin_shortcut(h)
        return x + h


class SpatialAttention(nn.Module):
    """Single-head self-attention over all positions (VQGAN/LDM AttnBlock): GN -> 1x1 q, k, v
    -> softmax(q k^T / sqrt(C)) v -> 1x1 projection, plus the input."""

    def __init__(self, ch: int, bc: BlockConfig):
        super().__init__()
        self.norm = nn.GroupNorm(bc.norm_groups, ch, eps=bc.norm_eps)
        self.q = conv1x1(ch, ch)
        self.k = conv1x1(ch, ch)
        self.v = conv1x1(ch, ch)
        self.proj_out = conv1x1(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        # contiguous (B, 1, HW, C): with transposed views PyTorch's CPU attention takes its plain
        # path, which materialises the (HW)^2 score matrix (2.3 GB at 2048^2 for the tiny model)
        q, k, v = (proj(n).reshape(b, 1, c, h * w).transpose(2, 3).contiguous() for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), scale 1/sqrt(C)
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))
