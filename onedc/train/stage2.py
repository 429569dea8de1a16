"""Stage II training (docs/design.md 6.3): DMD2 distribution-matching distillation plus a latent GAN.

The codec is frozen (and run without gradients); the generator's LoRA, conv_in and
vae_reduction learn
    L_G = dmd_weight * L_DMD + gan_generator_weight * softplus(-D) + pixel_weight * (L1 + LPIPS)
every `dmd.generator_every`-th step, while the guidance (fake score + GAN head) learns
    L_guid = fake_denoise_weight * MSE(eps_fake, eps) + gan_guidance_weight * D-loss
every step on the detached generator latents. Turns are isolated: the guidance is frozen during
the generator's turn, the generator's outputs are detached for the guidance's. Two AdamW
optimizers on one learning-rate schedule (constant with warm-up); it advances every step.

The generator is replicated (DDP); the guidance too, or, with `dmd.fsdp`, sharded over the
processes with FSDP2. Either way a checkpoint holds whole tensors and whole optimizer state.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.distributed.tensor import DTensor

from .. import weights as external
from ..codec.semantic import tokens
from ..errors import CheckpointError, ConfigError
from ..generator.vae import decode_latent
from ..model import OneDC
from ..official import load_guidance
from ..state_dicts import check_keys, shapes
from . import checkpoints, optim, speed
from .config import RunConfig, compose
from .dmd import Guidance, TextConditioner, frozen
from .loop import StageTrainer
from .losses import build_lpips_vgg

GUIDANCE_FILE = "guidance.safetensors"
GUIDANCE_OPTIMIZER_FILE = "guidance_optimizer.pt"


class Stage2Generator(nn.Module):
    """What Accelerate wraps on the generator side: frozen codec (eval mode, no gradients), then
    the one-step generator -> SD latents, decoded to pixels on request."""

    def __init__(self, model: OneDC):
        super().__init__()
        self.model = model
        model.codec.requires_grad_(False)

    def train(self, mode: bool = True) -> "Stage2Generator":
        super().train(mode)
        self.model.codec.eval()  # hard rounding, as at inference
        return self

    def forward(self, x: torch.Tensor, x_lat: torch.Tensor, decode: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images x (B, 3, H, W) and their SD VAE latents x_lat (posterior mode, scaled) -> the
        generator's latents (B, 4, H/8, W/8) and, with `decode`, their pixels."""
        with torch.no_grad():
            out = self.model.codec(x, x_lat)
        latents = self.model.generator(out["y_in"], tokens(out["c"]))
        return latents, decode_latent(self.model.vae, latents) if decode else None


class Stage2Trainer(StageTrainer):
    def required_weights(self) -> list[str]:
        ext, loss = self.run.model.external, self.run.loss
        names = (ext.vae, ext.score_unet, ext.text_encoder, ext.text_tokenizer, loss.lpips_weights if loss.lpips_weight > 0 else None)
        return [n for n in names if n]

    def build(self) -> None:
        run, t, accelerator = self.run, self.run.train, self.accelerator
        if run.dmd.fsdp and accelerator.num_processes < 2:
            raise ConfigError("dmd.fsdp=true shards the guidance over processes: launch 2 or more, e.g. "
                              "accelerate launch --config_file configs/accelerate/4gpu.yaml -m onedc.train ...")
        model = OneDC.from_pretrained(t.init_from, run.weights)
        if model.config.name != run.model.name:
            accelerator.print(f"note: training {model.config.name} from {t.init_from} (model={run.model.name} ignored)")
        if model.lmbda is not None:  # the rate point is the Stage I model's
            if model.lmbda != t.lmbda:
                accelerator.print(f"note: {t.init_from} is a lambda {model.lmbda:g} model; train.lmbda={t.lmbda:g} "
                                  "(and a run folder named after it) does not change that")
            t.lmbda = model.lmbda
        cfg = model.config
        with torch.random.fork_rng(devices=[]):  # the fake score starts as a copy of the real one
            torch.manual_seed(cfg.seed + run.seed_offsets.guidance)
            guidance = Guidance(cfg.generator, run.dmd)
        guidance.fake_unet.load_state_dict(guidance.real_unet.state_dict())
        if cfg.external.score_unet:
            path = external.require(cfg.external.score_unet, run.weights)
            external.load_module(guidance.real_unet, path, "SD1.5 U-Net (real score)")
            external.load_module(guidance.fake_unet, path, "SD1.5 U-Net (fake score)")
        if run.dmd.init_guidance_from:
            load_guidance(guidance, run.dmd.init_guidance_from)
        if run.dmd.real_score_bf16:
            guidance.real_unet.to(torch.bfloat16)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + run.seed_offsets.text_conditioner)
            tokenizer = None
            if cfg.external.text_tokenizer:
                tokenizer = external.load_clip_tokenizer(external.require(cfg.external.text_tokenizer, run.weights))
            text = TextConditioner(cfg.text_encoder, tokenizer)
        if cfg.external.text_encoder:
            external.load_text_encoder(text.encoder, external.require(cfg.external.text_encoder, run.weights))
        if run.loss.lpips_weight > 0:
            self.perceptual = build_lpips_vgg(external.require(run.loss.lpips_weights, run.weights)).to(accelerator.device)
        parts = {"generator_unet": model.generator.unet, "vae_decoder": model.vae, "fake_unet": guidance.fake_unet}
        for name in t.gradient_checkpointing:
            parts[name].enable_gradient_checkpointing()  # the VAE's encoder runs without gradients: only its decoder recomputes

        generator = Stage2Generator(model)
        speed.apply([generator, guidance], heavy=[model.generator.unet, model.vae.encoder, model.vae.decoder, guidance.real_unet, guidance.fake_unet],
                    frozen=[model.vae, model.generator.unet, text, *([self.perceptual] if self.perceptual is not None else [])], train=t)
        opt_g = optim.adamw([p for p in generator.parameters() if p.requires_grad], run.optimizer, run.optimizer.lr)
        self.generator, self.opt_g = accelerator.prepare(generator, opt_g)
        if run.dmd.fsdp:  # sharded by FSDP2, which also averages its gradients: not wrapped by Accelerate
            self.guidance = guidance.shard(accelerator.device)
            local = sum(p.to_local().numel() for p in guidance.parameters())
            total = sum(p.numel() for p in guidance.parameters())  # a DTensor's numel is the whole tensor's
            accelerator.print(f"guidance sharded over {accelerator.num_processes} processes: rank 0 holds {local:,} of its {total:,} parameters")
        else:
            self.guidance = accelerator.prepare(guidance)
        self.inner_guidance: Guidance = accelerator.unwrap_model(self.guidance)
        # the guidance's optimizer is ours, not Accelerate's: its state is saved whole (gathered
        # from the shards), so a run resumes on any number of processes, sharded or not
        self.generator_params = [p for p in self.generator.parameters() if p.requires_grad]
        self.guidance_params = [p for p in self.inner_guidance.parameters() if p.requires_grad]
        self.opt_d = optim.adamw(self.guidance_params, run.optimizer, run.dmd.guidance_lr)
        self.text = text.to(accelerator.device)
        self.uncond = self.text([""])
        self.model = model
        self.generator.train()
        self.guidance.train()

    def train_batch(self, batch: dict, step: int) -> tuple[dict[str, torch.Tensor], bool]:
        run, accelerator = self.run, self.accelerator
        d, loss = run.dmd, run.loss
        x = speed.images(batch["image"].to(accelerator.device), run.train)
        cond = self.text(batch["caption"])  # no caption: the empty prompt
        # the VAE encodes the images once for both turns: the codec's input (posterior mode, as
        # at inference) and the guidance's real latents (a posterior sample)
        with torch.no_grad(), accelerator.autocast():
            posterior = self.model.vae.encode(x).latent_dist
            x_lat, real = (v * self.model.vae.config.scaling_factor for v in (posterior.mode(), posterior.sample()))
        uncond = self.uncond.expand(len(x), -1, -1)
        terms: dict[str, torch.Tensor] = {}
        factor = optim.lr_factor(step, run.schedule)  # every step, the generator's too (docs/design.md 6.3)
        optim.set_lr(self.opt_g, run.optimizer.lr * factor)
        optim.set_lr(self.opt_d, d.guidance_lr * factor)

        # generator turn: the guidance is frozen and not synchronised (its weights do not move)
        with frozen(self.inner_guidance), accelerator.no_sync(self.guidance):
            if step % d.generator_every == 0:
                latents, x_hat = self.generator(x, x_lat)
                with accelerator.autocast():  # Accelerate's own for a wrapped guidance, needed for a sharded one
                    critic = self.guidance("generator", latents, cond, uncond)
                dmd, gan = critic["dmd"], critic["gan_generator"]
                l1 = (x_hat.float() - x).abs().mean() / 2
                lpips = self.perceptual(x_hat, x).mean() if self.perceptual is not None else torch.zeros_like(l1)
                pixel = loss.l1_weight * l1 + loss.lpips_weight * lpips
                generator_loss = d.dmd_weight * dmd + d.gan_generator_weight * gan + d.pixel_weight * pixel
                accelerator.backward(generator_loss)
                accelerator.clip_grad_norm_(self.generator_params, run.train.max_grad_norm)
                self.opt_g.step()
                self.opt_g.zero_grad()
                terms.update(generator_loss=generator_loss, dmd=dmd, gan_generator=gan, l1=l1, lpips=lpips)
            else:
                with torch.no_grad():
                    latents, _ = self.generator(x, x_lat, decode=False)

        # guidance turn, on the generator's detached latents and the VAE latents of the images
        with accelerator.autocast():
            guidance_terms = self.guidance("guidance", latents.detach(), cond, real)
        accelerator.backward(guidance_terms["guidance_loss"])
        accelerator.clip_grad_norm_(self.guidance_params, run.train.max_grad_norm)
        self.opt_d.step()
        self.opt_d.zero_grad()
        return {**guidance_terms, **terms}, True

    def profile_components(self) -> dict[str, list[nn.Module]]:
        model, vae, guidance = self.model, self.model.vae, self.inner_guidance
        parts = {
            "VAE encoder": [vae.encoder, vae.quant_conv],
            "codec (frozen, no gradients)": [model.codec],
            "U-Net (LoRA) + vae_reduction": [model.generator],
            "VAE decoder": [vae.post_quant_conv, vae.decoder],
            "LPIPS": [self.perceptual],
            "text encoder": [self.text.encoder],
            "real score": [guidance.real_unet],
            "fake score": [guidance.fake_unet],
            "GAN head": [guidance.cls_pred_branch],
        }
        return {name: [m for m in modules if m is not None] for name, modules in parts.items() if any(m is not None for m in modules)}

    def profile_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"AdamW (generator)": self.opt_g.optimizer, "AdamW (guidance)": self.opt_d}  # torch optimizers, not Accelerate's wrapper

    def save_extras(self, folder: Path) -> None:
        """The trainable guidance and its optimizer state, whole: gathered from every rank when
        sharded (so called on every rank), written by the main process."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        weights = {k: whole(v).detach().cpu().contiguous() for k, v in self.inner_guidance.trainable_state_dict().items()}
        optimizer = get_optimizer_state_dict(self.guidance, self.opt_d, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.accelerator.is_main_process:
            save_file(weights, folder / GUIDANCE_FILE)
            torch.save(optimizer, folder / GUIDANCE_OPTIMIZER_FILE)

    def load_extras(self, folder: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        state = checkpoints.load_tensors(folder / GUIDANCE_FILE)
        check_keys(shapes(self.inner_guidance.trainable_state_dict()), state, str(folder / GUIDANCE_FILE), "guidance", error=CheckpointError)
        set_model_state_dict(self.guidance, state, options=StateDictOptions(full_state_dict=True, strict=False))
        optimizer = checkpoints.load_object(folder / GUIDANCE_OPTIMIZER_FILE)
        set_optimizer_state_dict(self.guidance, self.opt_d, optimizer, options=StateDictOptions(full_state_dict=True))


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP-sharded) one; for a DTensor a collective: call it on every rank."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def train(run: RunConfig, run_dir: Path) -> dict:
    """Train Stage II into `run_dir`. A missing train.init_from (RUN/checkpoints/NAME) is first
    produced by a Stage I run into RUN with the `dmd.bootstrap` overrides, if there are any
    (quickstart_stage2: the tiny quickstart)."""
    init = Path(run.train.init_from)
    if not init.exists() and run.dmd.bootstrap:
        from .stage1 import train as train_stage1

        state = train_stage1(compose(list(run.dmd.bootstrap)), init.parents[1])
        if "stopped_by" in state:
            return state
        if not init.exists():
            raise CheckpointError(f"the bootstrap Stage I run ({' '.join(run.dmd.bootstrap)}) did not write {init}")
    return Stage2Trainer(run, run_dir).train()
