"""The one-step generator (docs/design.md, "One-step generator"): an SD1.5
`UNet2DConditionModel` (DMD2 weights at full size) with a LoRA adapter (peft), a new 320 -> 320
input conv fed with g_s's output, and `vae_reduction` giving the pseudo noisy latent of the x0
formula.

y_in (B, Cin, H/8, W/8) and c tokens (B, H/64 * W/64, Cc)
  x_t  = vae_reduction(y_in)                         (B, 4, H/8, W/8)
  eps  = U-Net(conv_in'(y_in), t = 999, cross-attention on the c tokens)
  y_out = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)      in float64, a_t = alphas_cumprod[999]
No noise is drawn anywhere: the generator is deterministic.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig
from torch import nn

from ..config import GeneratorConfig, GeneratorUNetConfig, NoiseScheduleConfig


def sd_unet(cfg: GeneratorUNetConfig) -> UNet2DConditionModel:
    """A plain U-Net of the SD1.5 architecture (its own 4-channel conv_in, no LoRA), randomly
    initialised: the generator's base and Stage II's real and fake scores."""
    return UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        cross_attention_dim=cfg.cross_attention_dim,
        norm_num_groups=cfg.norm_num_groups,
        norm_eps=cfg.norm_eps,
    )


def alphas_cumprod(cfg: NoiseScheduleConfig) -> torch.Tensor:
    """The DDPM schedule's cumulative alphas (num_train_timesteps,), float64."""
    scheduler = DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule
    )
    return scheduler.alphas_cumprod.to(torch.float64)


def is_trainable(name: str) -> bool:
    """LoRA weights, the new conv_in and vae_reduction train; the U-Net base stays frozen."""
    return ".lora_" in name or name.startswith(("unet.conv_in.", "vae_reduction."))


class VAEReduction(nn.Module):
    """GN -> SiLU -> 3x3 conv (Cin -> Cin) -> GN -> SiLU -> 3x3 conv (Cin -> Cout), plus a 1x1
    conv skip. `blocks` indices 1 and 4 are the SiLUs, as in the released checkpoints."""

    def __init__(self, cin: int, cout: int, groups: int, eps: float):
        super().__init__()
        self.blocks = nn.Sequential(
            nn.GroupNorm(groups, cin, eps=eps),
            nn.SiLU(),
            nn.Conv2d(cin, cin, 3, padding=1),
            nn.GroupNorm(groups, cin, eps=eps),
            nn.SiLU(),
            nn.Conv2d(cin, cout, 3, padding=1),
        )
        self.short_cut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) + self.short_cut(x)


class OneStepGenerator(nn.Module):
    def __init__(self, cfg: GeneratorConfig, in_channels: int):
        super().__init__()
        u = cfg.unet
        self.unet = sd_unet(u).requires_grad_(False)
        # The new input conv replaces SD1.5's 4 -> 320 conv_in; it is not LoRA-wrapped.
        self.unet.conv_in = nn.Conv2d(in_channels, u.block_out_channels[0], 3, padding=1)
        self.unet.add_adapter(
            LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=0.0, target_modules=list(cfg.lora.target_modules))
        )
        self.vae_reduction = VAEReduction(in_channels, u.out_channels, cfg.reduction_groups, cfg.reduction_eps)
        for name, p in self.named_parameters():
            p.requires_grad_(is_trainable(name))
        self.timestep = cfg.timestep
        self.register_buffer("alphas_cumprod", alphas_cumprod(cfg.noise_schedule), persistent=False)

    def forward(self, y_in: torch.Tensor, c_tokens: torch.Tensor) -> torch.Tensor:
        """y_in (B, Cin, h, w), c_tokens (B, n, Cc) -> y_out (B, 4, h, w), float32."""
        x_t = self.vae_reduction(y_in)
        eps = self.unet(y_in, self.timestep, encoder_hidden_states=c_tokens).sample
        alpha = self.alphas_cumprod[self.timestep]
        y_out = (x_t.double() - (1 - alpha).sqrt() * eps.double()) / alpha.sqrt()
        return y_out.float()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA, the new conv_in and vae_reduction: what a checkpoint stores of the generator."""
        return {name: p.detach() for name, p in self.named_parameters() if is_trainable(name)}
