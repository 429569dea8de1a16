"""Stage I training (docs/design.md 6.2): the codec, the generator's LoRA + conv_in + vae_reduction
and the code predictor learn L1 + LPIPS + lambda(step) * bpp_y + 0.001 * L_aux through the
frozen U-Net base and VAE. DDP, bf16 autocast and gradient accumulation come from Accelerate;
the loop, checkpoints, resume and validation from `loop.StageTrainer`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .. import weights as external
from ..model import OneDC, build_code_predictor, build_tokenizer
from . import checkpoints, optim, speed
from .config import RunConfig
from .loop import StageTrainer
from .losses import Stage1Loss, build_lpips_vgg, lmbda_at


class Stage1Module(nn.Module):
    """What Accelerate wraps: the model, the code predictor and the frozen teacher; `forward`
    returns the loss terms of a batch."""

    def __init__(self, model: OneDC, predictor: nn.Module, tokenizer: nn.Module, loss: Stage1Loss):
        super().__init__()
        self.model, self.predictor, self.tokenizer, self.loss = model, predictor, tokenizer, loss

    def forward(self, x: torch.Tensor, lmbda: float) -> dict[str, torch.Tensor]:
        out = self.model(x)
        codes, z_q = self.tokenizer.tokenize(x)
        return self.loss(x, out, self.predictor(out["c"]), codes, self.tokenizer.codebook, z_q, lmbda)


def build_module(run: RunConfig) -> Stage1Module:
    """Seeded model with its external frozen weights, code predictor, teacher and loss."""
    model = OneDC.untrained(run.model)
    model.lmbda = run.train.lmbda
    external.load_frozen_weights(model, run.weights)
    # seeded apart from the global RNG: the frozen tokenizer is not checkpointed and must come
    # out the same on every rank and after every resume
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.model.seed + run.seed_offsets.predictor)
        predictor = build_code_predictor(run.model)
        tokenizer = build_tokenizer(run.model)
    if run.model.external.tokenizer:
        external.load_tokenizer(tokenizer, external.require(run.model.external.tokenizer, run.weights))
    perceptual = build_lpips_vgg(external.require(run.loss.lpips_weights, run.weights)) if run.loss.lpips_weight > 0 else None
    parts = {"analysis_unet": model.codec.g_a.unet, "generator_unet": model.generator.unet, "vae_decoder": model.vae}
    for name in run.train.gradient_checkpointing:
        parts[name].enable_gradient_checkpointing()  # the VAE's encoder runs without gradients: only its decoder recomputes
    module = Stage1Module(model, predictor, tokenizer, Stage1Loss(run.loss, perceptual, run.model.distillation.mse_weight))
    speed.apply([module], heavy=[model.generator.unet, model.vae.encoder, model.vae.decoder],
                frozen=[model.vae, model.generator.unet, tokenizer, *([perceptual] if perceptual is not None else [])], train=run.train)
    return module


class Stage1Trainer(StageTrainer):
    def required_weights(self) -> list[str]:
        ext, loss = self.run.model.external, self.run.loss
        return [n for n in (ext.unet, ext.vae, ext.tokenizer, loss.lpips_weights if loss.lpips_weight > 0 else None) if n]

    def build(self) -> None:
        run, accelerator = self.run, self.accelerator
        module = build_module(run)
        self.trainable = [p for p in module.parameters() if p.requires_grad]
        self.module, self.optimizer = accelerator.prepare(module, optim.adamw(self.trainable, run.optimizer, run.optimizer.lr))
        self.inner: Stage1Module = accelerator.unwrap_model(self.module)
        self.model, self.perceptual = self.inner.model, self.inner.loss.perceptual
        self.module.train()

    def train_batch(self, batch: dict, step: int) -> tuple[dict[str, torch.Tensor], bool]:
        t, loss, accelerator = self.run.train, self.run.loss, self.accelerator
        lmbda = lmbda_at(step, t.lmbda, loss.lmbda_warmup_steps, loss.lmbda_start)
        lr = self.run.optimizer.lr * optim.lr_factor(step, self.run.schedule)
        optim.set_lr(self.optimizer, lr)
        with accelerator.accumulate(self.module):
            terms = self.module(speed.images(batch["image"].to(accelerator.device), t), lmbda)
            accelerator.backward(terms["loss"])
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.trainable, t.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
        terms["lmbda"] = torch.tensor(lmbda)
        terms["lr"] = torch.tensor(lr)
        return terms, accelerator.sync_gradients

    def profile_components(self) -> dict[str, list[nn.Module]]:
        model, codec, vae, inner = self.model, self.model.codec, self.model.vae, self.inner
        parts = {
            "VAE encoder": [vae.encoder, vae.quant_conv],
            "g_a": [codec.g_a],
            "h_enc / FSQ / h_dec / context": [codec.h_enc, codec.fsq, codec.h_dec, codec.context],
            "h_sem / g_s": [codec.h_sem, codec.g_s],
            "U-Net (LoRA) + vae_reduction": [model.generator],
            "VAE decoder": [vae.post_quant_conv, vae.decoder],
            "LPIPS": [inner.loss.perceptual],
            "tokenizer + code predictor": [inner.tokenizer.encoder, inner.tokenizer.quantize, inner.predictor],
        }
        return {name: [m for m in modules if m is not None] for name, modules in parts.items() if any(m is not None for m in modules)}

    def profile_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"AdamW": self.optimizer.optimizer}  # the torch optimizer under Accelerate's wrapper

    def save_extras(self, folder: Path) -> None:
        if self.accelerator.is_main_process:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.inner.predictor.state_dict().items()}, folder / checkpoints.PREDICTOR_FILE)

    def load_extras(self, folder: Path) -> None:
        self.inner.predictor.load_state_dict(checkpoints.load_tensors(folder / checkpoints.PREDICTOR_FILE))


def train(run: RunConfig, run_dir: Path) -> dict:
    """Train Stage I into `run_dir`; returns the final trainer state."""
    return Stage1Trainer(run, run_dir).train()
