"""Exact (platform-independent) evaluation of the entropy-parameter networks.

The encoder and the decoder must pick identical Gaussian tables and means for every symbol
of y, or the rANS decoder loses synchronisation (CompressAI #279, #309, DCVC #150). Float
convolutions are not reproducible across machines, thread counts or devices: the order of
the sums differs. We remove the order dependence instead of hoping for equal kernels:

* activations live on a fixed grid of 2^-F (F = frac_bits) and are clamped to +-act_bound;
* each conv's weights are rounded to a grid of 2^-Fw, with Fw <= max_weight_frac_bits chosen
  per layer (from the weights alone) so that every partial sum of the conv is an integer
  multiple of 2^-(F+Fw) below 2^53 in magnitude;
* the conv then runs in float64, where such sums are exact in any order, on any machine;
  the result is rounded back to the 2^-F grid (round half to even, exact).

LeakyReLU, PixelShuffle, concatenation, chunking, masking and residual additions are exact or
correctly rounded IEEE operations, so the whole network gives bit-identical outputs
everywhere. The cost: weights lose precision below 2^-Fw (about 1e-6), which changes the
entropy parameters by far less than matters for the rate. Runs on the CPU or on a CUDA device
(float64, cuDNN off: its FFT and Winograd algorithms are not plain sums; the im2col + GEMM path
is, and a sum of exact terms below 2^53 is exact in any order).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ExactConfig
from ..errors import ConfigError

# Integers below 2^53 are exact in float64; keep a factor of two of headroom.
_EXACT_LIMIT = 2.0**52


def to_grid(x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Round x to the nearest multiple of 2^-frac_bits (exact in float64)."""
    return to_grid_(x * 2.0**frac_bits, 0).mul_(2.0**-frac_bits)


def to_grid_(x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """`to_grid` in place (scalings by powers of two are exact)."""
    return x.mul_(2.0**frac_bits).round_().mul_(2.0**-frac_bits)


class ExactConv2d(nn.Module):
    """A copy of an nn.Conv2d evaluated exactly in float64 fixed point."""

    def __init__(self, conv: nn.Conv2d, cfg: ExactConfig):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError("exact evaluation supports zero-padded convolutions with explicit padding only")
        self.frac_bits = cfg.frac_bits
        self.act_bound = float(cfg.act_bound)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        w = conv.weight.detach().to("cpu", torch.float64)
        b = conv.bias.detach().to("cpu", torch.float64) if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        max_input = self.act_bound * 2.0**cfg.frac_bits  # largest |activation| in grid units
        for weight_bits in range(cfg.max_weight_frac_bits, -1, -1):
            w_int = torch.round(w * 2.0**weight_bits)
            b_int = torch.round(b * 2.0 ** (weight_bits + cfg.frac_bits))
            worst = w_int.abs().flatten(1).sum(1) * max_input + b_int.abs()
            if bool((worst < _EXACT_LIMIT).all()):
                break
        else:
            raise ConfigError("a convolution's weights are too large for exact evaluation; lower codec.entropy.exact.act_bound")
        self.weight_frac_bits = weight_bits
        self.register_buffer("weight", w_int / 2.0**weight_bits)
        self.register_buffer("bias", b_int / 2.0 ** (weight_bits + cfg.frac_bits))

    @property
    def depthwise(self) -> bool:
        """One filter per channel, stride 1."""
        return self.groups == self.weight.shape[0] == self.weight.shape[0] * self.weight.shape[1] and self.stride == (1, 1)

    @property
    def pointwise(self) -> bool:
        """A 1x1 conv with stride 1 and no padding: a matrix product over channels."""
        return self.weight.shape[-2:] == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0) and self.groups == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_grid_(x.clamp(-self.act_bound, self.act_bound), self.frac_bits)
        if self.pointwise:
            out = self._matmul(x)
        elif self.depthwise and x.device.type == "cpu":
            out = self._depthwise_taps(x)
        else:
            with torch.backends.cudnn.flags(enabled=False):
                out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return to_grid_(out, self.frac_bits)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        """The 1x1 conv as one GEMM per image with the bias as its initial value (BLAS or
        cuBLAS; any summation order is exact here)."""
        b, c, h, w = x.shape
        weight = self.weight.view(self.weight.shape[0], c)
        bias = self.bias.view(1, -1, 1).expand(b, -1, h * w)
        return torch.baddbmm(bias, weight.expand(b, -1, -1), x.view(b, c, h * w)).view(b, -1, h, w)

    def _depthwise_taps(self, x: torch.Tensor) -> torch.Tensor:
        """The depthwise conv as a sum over its kernel taps of shifted, channel-scaled copies of
        the padded input (exact terms, so the same bits as F.conv2d). torch's CPU float64
        depthwise conv takes the slow unfold path: this is two orders of magnitude faster."""
        (kh, kw), (ph, pw), (dh, dw) = self.weight.shape[-2:], self.padding, self.dilation
        padded = F.pad(x, (pw, pw, ph, ph))
        height, width = padded.shape[-2] - dh * (kh - 1), padded.shape[-1] - dw * (kw - 1)
        out = self.bias.view(1, -1, 1, 1).expand(x.shape[0], -1, height, width).clone()
        for i in range(kh):
            for j in range(kw):
                tap = padded[..., i * dh : i * dh + height, j * dw : j * dw + width]
                out.addcmul_(tap, self.weight[:, 0, i, j].view(1, -1, 1, 1))
        return out


class ExactLeakyReLU(nn.Module):
    def __init__(self, act: nn.LeakyReLU, cfg: ExactConfig):
        super().__init__()
        self.slope = act.negative_slope
        self.frac_bits = cfg.frac_bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_grid_(F.leaky_relu(x, self.slope), self.frac_bits)


# Parameter-free modules whose outputs are exact rearrangements of their inputs.
_EXACT_AS_IS = (nn.PixelShuffle, nn.Identity)


def exact_copy(module: nn.Module, cfg: ExactConfig, device: torch.device | str = "cpu") -> nn.Module:
    """A float64 copy of `module` on `device` with every Conv2d and LeakyReLU made exact.

    Only convolutions, LeakyReLUs and parameter-free rearrangements may appear as leaves;
    anything else (normalisation, attention, ...) raises ConfigError, because it cannot be
    evaluated reproducibly. The module's own forward code is reused unchanged.
    """
    clone = copy.deepcopy(module).to("cpu", torch.float64).eval().requires_grad_(False)
    _swap_leaves(clone, cfg)  # weight grids are chosen on the CPU
    return clone.to(device)


def _swap_leaves(parent: nn.Module, cfg: ExactConfig) -> None:
    for name, child in parent.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(parent, name, ExactConv2d(child, cfg))
        elif isinstance(child, nn.LeakyReLU):
            setattr(parent, name, ExactLeakyReLU(child, cfg))
        elif isinstance(child, _EXACT_AS_IS):
            continue
        elif next(child.children(), None) is None:
            raise ConfigError(f"{type(child).__name__} cannot be evaluated exactly (entropy-parameter networks may only use convs and LeakyReLU)")
        else:
            _swap_leaves(child, cfg)
