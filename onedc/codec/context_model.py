"""Entropy parameters and context model for y: the 4-step quadtree ("four-part") prior of
DCVC-DC/FM (docs/design.md 3.4), its rate model, and the coding of y.

features (B, Ch, H/16, W/16) from the hyper-decoder -> prior P (B, 2Cy, ...).
Step 0 takes (scales, means) from P; steps 1-3 from
trunk(adaptor_k(cat(y_hat coded so far, reduction(P)))). Each step codes one phase of every
2x2 block in each of the four channel groups, so after four steps every element is coded.
Residuals r = y - mu are coded under zero-mean Gaussians of scale sigma.

One loop (`run`) serves training, the encoder and the decoder; they differ only in how a
step turns (scales, means) into integer residuals, so encoder and decoder cannot drift apart.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..config import BlockConfig, EntropyConfig
from ..profiling import stage
from .blocks import DepthConvBlock, conv1x1
from .entropy_coding import GaussianCoder, RansWriter
from .ops import lower_bound, quantize_ste

# Phase (row % 2, col % 2) coded by channel groups 0..3 at each step (docs/design.md 3.4).
STEP_PHASES = (
    ((0, 0), (0, 1), (1, 0), (1, 1)),
    ((1, 1), (1, 0), (0, 1), (0, 0)),
    ((1, 0), (1, 1), (0, 0), (0, 1)),
    ((0, 1), (0, 0), (1, 1), (1, 0)),
)

# code_step(step, scales, means, mask) -> integer residuals shaped like `means`
CodeStep = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def step_masks(channels: int, height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(4, C, H, W) 0/1 masks; mask[k] marks the elements coded at step k."""
    masks = torch.zeros(len(STEP_PHASES), channels, height, width, dtype=dtype, device=device)
    group = channels // 4
    for step, phases in enumerate(STEP_PHASES):
        for g, (row, col) in enumerate(phases):
            masks[step, g * group : (g + 1) * group, row::2, col::2] = 1
    return masks


def gaussian_likelihood(residual: torch.Tensor, scales: torch.Tensor, scale_min: float, cfg: EntropyConfig) -> torch.Tensor:
    """Mass of [r - 1/2, r + 1/2] under N(0, sigma^2), sigma >= scale_min and mass >=
    cfg.likelihood_bound, both with gradient-preserving lower bounds (`ops.lower_bound`);
    computed in float32 at least. scale_min is cfg.scale_min for our rate (training and
    evaluation alike) and cfg.official_eval_scale_min for the official eval-mode estimate."""
    residual, scales = residual.float(), scales.float()  # full precision even under bf16 autocast
    sigma = lower_bound(scales, scale_min)
    v = residual.abs()
    upper = 0.5 * torch.erfc((v - 0.5) / (sigma * math.sqrt(2.0)))
    lower = 0.5 * torch.erfc((v + 0.5) / (sigma * math.sqrt(2.0)))
    return lower_bound(upper - lower, cfg.likelihood_bound)


def rate_bits(likelihoods: torch.Tensor, cfg: EntropyConfig) -> torch.Tensor:
    """Training rate per element: max(0, -log2(P + rate_eps))."""
    return (-torch.log2(likelihoods + cfg.rate_eps)).clamp_min(0)


class QuadtreeContextModel(nn.Module):
    def __init__(self, hyper_channels: int, y_channels: int, bc: BlockConfig):
        super().__init__()
        p = 2 * y_channels
        self.y_channels = y_channels
        self.prior_fusion = nn.Sequential(DepthConvBlock(hyper_channels, p, bc), DepthConvBlock(p, p, bc))
        self.reduction = conv1x1(p, y_channels)
        self.adaptors = nn.ModuleList(DepthConvBlock(p, p, bc) for _ in range(len(STEP_PHASES) - 1))
        self.trunk = nn.Sequential(*(DepthConvBlock(p, p, bc) for _ in range(3)))

    def run(self, features: torch.Tensor, code_step: CodeStep) -> torch.Tensor:
        """The 4-step loop; returns y_hat = sum over steps of mask_k * (q_k + mu_k)."""
        prior = self.prior_fusion(features)
        reduced = self.reduction(prior)
        masks = step_masks(*reduced.shape[1:], dtype=reduced.dtype, device=reduced.device)
        y_hat = torch.zeros_like(reduced)
        for step in range(len(STEP_PHASES)):
            if step == 0:
                params = prior
            else:
                params = self.trunk(self.adaptors[step - 1](torch.cat([y_hat, reduced], dim=1)))
            scales, means = params.chunk(2, dim=1)
            q = code_step(step, scales, means, masks[step])
            y_hat = y_hat + masks[step] * (q + means)
        return y_hat

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """y_hat from the prior alone (the z-only model): the 4-step loop with every residual
        zero, so each step's means are predicted from the prior and the means decoded so far."""
        return self.run(features, lambda step, scales, means, mask: torch.zeros_like(means))

    def forward(self, y: torch.Tensor, features: torch.Tensor, noise: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training / evaluation pass: y_hat with straight-through rounding of the residuals, and
        for the rate model, per element of y, the residual it sees (plus U(-noise, noise) in
        training mode, rounded in eval mode) and the scale predicted for it."""
        rate_input, all_scales = torch.zeros_like(y), torch.zeros_like(y)

        def code_step(step: int, scales: torch.Tensor, means: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            nonlocal rate_input, all_scales
            r = y - means
            if self.training:
                rounded = r + torch.empty_like(r).uniform_(-noise, noise)
            else:
                rounded = torch.round(r)
            selected = mask.bool()
            rate_input = torch.where(selected, rounded, rate_input)
            all_scales = torch.where(selected, scales, all_scales)
            return quantize_ste(r)

        return self.run(features, code_step), rate_input, all_scales

    def compress(self, y: torch.Tensor, features: torch.Tensor, coder: GaussianCoder, max_symbol: int) -> tuple[list[bytes], torch.Tensor]:
        """Encode y (B, Cy, h, w); returns one rANS stream per image and the decoder's y_hat.
        Per step, the residuals and table indexes of the step's elements move to the host as
        one int32 tensor; the B streams are coded in parallel threads."""
        writers = [coder.writer() for _ in range(y.shape[0])]
        positions = step_positions(*y.shape[1:], y.device)

        def code_step(step: int, scales: torch.Tensor, means: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            q = torch.round(y - means).clamp(-max_symbol, max_symbol)
            with stage("rans"):
                at = positions[step]
                symbols = q.flatten(1)[:, at].to(torch.int32)
                indexes = coder.indexes(scales.flatten(1)[:, at]).to(torch.int32)
                host = torch.stack([symbols, indexes], dim=1).cpu().numpy()
                for writer, (s, i) in zip(writers, host):
                    writer.write(s, i)
            return q

        y_hat = self.run(features, code_step)
        with stage("rans"):
            return map_streams(RansWriter.finish, writers), y_hat

    def decompress(self, strings: list[bytes], features: torch.Tensor, coder: GaussianCoder, max_symbol: int) -> torch.Tensor:
        """Decode y_hat (B, Cy, h, w) from one rANS stream per image (B streams in parallel
        threads). Per step, the table indexes move to the host as int16 and the decoded
        residuals back as int32."""
        readers = [coder.reader(s) for s in strings]
        positions = step_positions(self.y_channels, *features.shape[-2:], features.device)

        def code_step(step: int, scales: torch.Tensor, means: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            with stage("rans"):
                at = positions[step]
                indexes = coder.indexes(scales.flatten(1)[:, at]).cpu().numpy()
                values = map_streams(lambda b: readers[b].read(indexes[b], max_symbol), range(len(readers)))
                q = torch.zeros_like(means)
                q.flatten(1)[:, at] = torch.from_numpy(np.stack(values)).to(q.device, q.dtype)
            return q

        y_hat = self.run(features, code_step)
        for reader in readers:
            reader.finish()
        return y_hat


def step_positions(channels: int, height: int, width: int, device: torch.device) -> list[torch.Tensor]:
    """Per step, the flat (C, H, W) positions of the elements it codes, in coding order
    (row-major), as int64 tensors on `device`."""
    masks = step_masks(channels, height, width, torch.bool, torch.device("cpu"))
    return [m.flatten().nonzero().squeeze(1).to(device) for m in masks]


def map_streams(fn: Callable, items) -> list:
    """[fn(item) for item in items], in parallel threads when there are several (the rANS
    kernels release the GIL)."""
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(len(items), os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))
