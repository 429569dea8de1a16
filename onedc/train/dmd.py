"""DMD2 guidance for Stage II (docs/design.md 6.3): the real score (frozen SD1.5 U-Net, classifier-free
guidance on the training captions), the fake score (a trainable SD1.5 U-Net), a GAN head on the
fake score's mid-block (captured with a forward hook), and the text conditioning (CLIP text
encoder of the SD1.5 repo; a hashed-word tokenizer stands in for CLIP's on tiny offline configs).

All x0 conversions run in float64 with SD1.5's alphas_cumprod. Latents are SD latents (already
multiplied by the VAE scaling factor), shape (B, 4, H/8, W/8).
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..codec.blocks import forward_capturing
from ..config import GeneratorConfig, TextEncoderConfig
from ..data.training import stable_hash
from ..generator.one_step_unet import alphas_cumprod, sd_unet


@contextmanager
def frozen(module: nn.Module):
    """Temporarily stop gradients into `module`'s parameters (the generator's turn)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class HashedWordTokenizer:
    """Offline stand-in for CLIP's tokenizer on tiny configs: lower-cased words hashed into the
    vocabulary, with start and end tokens, padded to `max_length` with the end token."""

    def __init__(self, vocab_size: int, max_length: int):
        self.vocab_size, self.max_length = vocab_size, max_length

    def __call__(self, captions: list[str]) -> torch.Tensor:
        start, end = self.vocab_size - 2, self.vocab_size - 1
        rows = []
        for caption in captions:
            words = re.findall(r"[a-z0-9]+", caption.lower())
            ids = [start] + [stable_hash("word", w) % (self.vocab_size - 2) for w in words][: self.max_length - 2] + [end]
            rows.append(ids + [end] * (self.max_length - len(ids)))
        return torch.tensor(rows)


class TextConditioner(nn.Module):
    """Frozen CLIP text encoder: captions -> (B, max_length, hidden) embeddings (last hidden
    state, as SD1.5 uses them); an empty caption gives the unconditional embedding."""

    def __init__(self, cfg: TextEncoderConfig, tokenizer=None):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        self.encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
            intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_length,
            projection_dim=cfg.hidden_size, hidden_act=cfg.hidden_act,
            bos_token_id=cfg.vocab_size - 2, eos_token_id=cfg.vocab_size - 1,  # CLIP's layout: 49406, 49407
        ))
        self.encoder.requires_grad_(False).eval()
        self.tokenizer = tokenizer or HashedWordTokenizer(cfg.vocab_size, cfg.max_length)
        self.max_length = cfg.max_length

    def _ids(self, captions: list[str]) -> torch.Tensor:
        if isinstance(self.tokenizer, HashedWordTokenizer):
            return self.tokenizer(captions)
        return self.tokenizer(captions, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt").input_ids

    @torch.no_grad()
    def forward(self, captions: list[str]) -> torch.Tensor:
        ids = self._ids(captions).to(next(self.encoder.parameters()).device)
        return self.encoder(ids).last_hidden_state


class DiscriminatorHead(nn.Sequential):
    """On the fake score's mid-block features (C channels): 4x4 conv stride 2 -> GN -> SiLU ->
    4x4 conv stride 4 -> GN -> SiLU -> 1x1 conv -> logits (8x8 -> 4x4 -> 1x1 at 512^2)."""

    def __init__(self, channels: int, groups: int, eps: float):
        super().__init__(
            nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            nn.GroupNorm(groups, channels, eps=eps),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 4, stride=4),
            nn.GroupNorm(groups, channels, eps=eps),
            nn.SiLU(),
            nn.Conv2d(channels, 1, 1),
        )


class Guidance(nn.Module):
    """Real score, fake score and GAN head, with DMD2's two turns as `forward(turn, ...)`:
    "generator" -> the generator's DMD and GAN terms on its (differentiable) latents;
    "guidance"  -> the fake score's denoising loss and the discriminator loss on detached ones."""

    def __init__(self, generator_cfg: GeneratorConfig, dmd):
        super().__init__()
        self.dmd = dmd
        u = generator_cfg.unet
        self.real_unet = sd_unet(u).requires_grad_(False)
        self.fake_unet = sd_unet(u)
        self.cls_pred_branch = DiscriminatorHead(u.block_out_channels[-1], u.norm_num_groups, dmd.head_norm_eps)
        self.register_buffer("alphas_cumprod", alphas_cumprod(generator_cfg.noise_schedule), persistent=False)
        self.num_timesteps = generator_cfg.noise_schedule.num_train_timesteps

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The fake score and the head: what a Stage II checkpoint stores of the guidance (DTensors
        with their global shapes when sharded)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("fake_unet.", "cls_pred_branch."))}

    def shard(self, device: torch.device) -> "Guidance":
        """Shard over all processes with FSDP2 (`fully_shard`): each block of both U-Nets, then the
        rest (the U-Nets' stems and heads, the GAN head) becomes a unit whose parameters,
        gradients and optimizer state live 1/N on each rank and are gathered unit by unit for
        compute. The rest is one root unit, gathered for the whole forward and backward: the
        GAN path backpropagates through a U-Net's stem without using the U-Net's output, so a
        unit per U-Net would never be re-gathered for it. Dtypes are kept (the real score stays
        bf16); mixed precision comes from the caller's autocast."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
        self.to(device)
        for unet in (self.real_unet, self.fake_unet):
            for block in (*unet.down_blocks, unet.mid_block, *unet.up_blocks):
                fully_shard(block, mesh=mesh)
        fully_shard(self, mesh=mesh)
        return self

    # ------------------------------------------------------------------ diffusion helpers
    def _alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(t.device)[t].view(-1, 1, 1, 1)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self._alpha(t)
        return (a.sqrt() * latents.double() + (1 - a).sqrt() * noise.double()).to(latents.dtype)

    def x0(self, noisy: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), in float64."""
        a = self._alpha(t)
        return (noisy.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()

    def predict_eps(self, unet: nn.Module, noisy: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                    uncond: torch.Tensor | None = None, guidance: float = 1.0) -> torch.Tensor:
        """eps of `unet`; with `uncond`, classifier-free guidance eps_u + g (eps_c - eps_u). At
        g = 1 the unconditional branch has no weight and is skipped (exactly eps_c, half the work)."""
        dtype = next(unet.parameters()).dtype
        if uncond is None or guidance == 1.0:
            return unet(noisy.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample.float()
        both = unet(torch.cat([noisy, noisy]).to(dtype), torch.cat([t, t]), encoder_hidden_states=torch.cat([cond, uncond]).to(dtype)).sample.float()
        eps_c, eps_u = both.chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    def classify(self, noisy: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """GAN logits (B,) from the fake score's mid-block output (forward hook), averaged over
        the head's output positions."""
        _, mid = forward_capturing(self.fake_unet, self.fake_unet.mid_block, noisy, t, encoder_hidden_states=cond)
        return self.cls_pred_branch(mid).float().flatten(1).mean(dim=1)

    def _t(self, n: int, low: int, high: int, device) -> torch.Tensor:
        """n timesteps uniform in [low, high] (inclusive), from the global RNG."""
        return torch.randint(low, high + 1, (n,), device=device)

    # ------------------------------------------------------------------ losses
    def dmd_loss(self, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distribution matching: returns (0.5 * MSE(latents, sg(latents - g)), g) with
        g = (p_real - p_fake) / mean|p_real|, p = latents - x0(score), NaNs zeroed."""
        d = self.dmd
        with torch.no_grad():
            t = self._t(latents.shape[0], d.min_timestep, d.max_timestep, latents.device)
            noisy = self.add_noise(latents, torch.randn_like(latents), t)
            x0_fake = self.x0(noisy, self.predict_eps(self.fake_unet, noisy, t, cond), t)
            x0_real = self.x0(noisy, self.predict_eps(self.real_unet, noisy, t, cond, uncond, d.real_guidance), t)
            p_real, p_fake = latents.double() - x0_real, latents.double() - x0_fake
            grad = torch.nan_to_num((p_real - p_fake) / p_real.abs().mean(dim=(1, 2, 3), keepdim=True))
        loss = 0.5 * F.mse_loss(latents.float(), (latents.double() - grad).float().detach())
        return loss, grad

    def generator_gan_loss(self, latents: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """softplus(-D(noised latents)): the generator wants its latents judged real."""
        t = self._t(latents.shape[0], 0, self.dmd.gan_max_timestep - 1, latents.device)
        return F.softplus(-self.classify(self.add_noise(latents, torch.randn_like(latents), t), t, cond)).mean()

    def forward(self, turn: str, latents: torch.Tensor, cond: torch.Tensor, other: torch.Tensor) -> dict[str, torch.Tensor]:
        """turn "generator": `other` is the unconditional embedding; turn "guidance": `other` are
        the VAE latents of the real images."""
        if turn == "generator":
            dmd, _ = self.dmd_loss(latents, cond, other)
            return {"dmd": dmd, "gan_generator": self.generator_gan_loss(latents, cond)}
        if turn == "guidance":
            return self.guidance_loss(latents, other, cond)
        raise ValueError(f"unknown turn {turn!r}")

    def guidance_loss(self, fake: torch.Tensor, real: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """On detached generator latents `fake` and VAE latents `real`: the fake score's
        denoising MSE plus the weighted discriminator loss on noised fake and real."""
        d = self.dmd
        n, device = fake.shape[0], fake.device
        t = self._t(n, 0, self.num_timesteps - 1, device)
        noise = torch.randn_like(fake)
        denoise = F.mse_loss(self.predict_eps(self.fake_unet, self.add_noise(fake, noise, t), t, cond), noise.float())
        t_fake, t_real = self._t(n, 0, d.gan_max_timestep - 1, device), self._t(n, 0, d.gan_max_timestep - 1, device)
        logits_fake = self.classify(self.add_noise(fake, torch.randn_like(fake), t_fake), t_fake, cond)
        logits_real = self.classify(self.add_noise(real, torch.randn_like(real), t_real), t_real, cond)
        discriminator = (F.softplus(logits_fake) + F.softplus(-logits_real)).mean()
        return {
            "guidance_loss": d.fake_denoise_weight * denoise + d.gan_guidance_weight * discriminator,
            "fake_denoise": denoise,
            "discriminator": discriminator,
        }
