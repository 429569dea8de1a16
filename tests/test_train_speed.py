"""The step profile and the speed settings on the tiny Stage I model (CPU)."""

import pytest
import torch

from onedc.train.config import compose
from onedc.train.profiling import StepProfiler
from onedc.train.stage1 import Stage1Trainer, build_module

TINY = ["experiment=quickstart", "train.logger=none", "train.batch_size=2", "model.distillation.predictor.window=2",
        "data.policies=[{name:crop64,weight:1.0,mode:crop,size:64,batch_fraction:1.0}]", "schedule.warmup_steps=0"]

BATCH = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1


def one_step(tmp_path, *overrides: str, profile: bool = False):
    """A built trainer after one optimizer step on a fixed batch: (trainer, loss, profiler or None)."""
    trainer = Stage1Trainer(compose([*TINY, *overrides]), tmp_path / "_".join(o.split("=")[0] for o in overrides))
    trainer.setup()
    batch = {"image": BATCH, "caption": ["", ""]}
    profiler = StepProfiler(trainer.profile_components(), trainer.profile_optimizers(), torch.device("cpu")) if profile else None
    if profiler is None:
        terms, _ = trainer.train_batch(batch, 0)
    else:
        with profiler.attached():
            terms, _ = trainer.train_batch(batch, 0)
            profiler.end_step()
    trainer.lock.release()
    return trainer, terms["loss"].item(), profiler


def test_the_profile_and_selective_checkpointing(tmp_path):
    """Checkpointing only the VAE decoder drops its saved activations, leaves the others' and the
    loss as they were; the profile times every part that runs."""
    plain, loss, profile = one_step(tmp_path, profile=True)
    _, loss_ckpt, profile_ckpt = one_step(tmp_path, "train.gradient_checkpointing=[vae_decoder]", profile=True)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert profile_ckpt.saved["VAE decoder"] < 0.25 * profile.saved["VAE decoder"]  # its stem and head stay stored
    for name in ("g_a", "U-Net (LoRA) + vae_reduction", "h_sem / g_s"):
        assert profile_ckpt.saved[name] == profile.saved[name] > 0, name
    assert set(profile.forward) == set(plain.profile_components()) and all(t > 0 for t in profile.forward.values())
    for name in ("g_a", "U-Net (LoRA) + vae_reduction", "VAE decoder", "tokenizer + code predictor"):
        assert profile.backward[name] > 0, name
    assert profile.backward.get("VAE encoder", 0.0) == 0.0 and profile.saved["VAE encoder"] == 0  # runs without gradients
    assert profile.optimizer_time["AdamW"] > 0
    table = profile.table(1, 1.0)
    assert "| VAE decoder | 2 |" in table and "**whole step**" in table


def test_speed_settings_train_as_the_plain_step(tmp_path):
    _, loss, _ = one_step(tmp_path)
    fast, fast_loss, _ = one_step(tmp_path, "train.channels_last=true", "optimizer.fused=true")
    assert fast_loss == pytest.approx(loss, rel=1e-5)
    assert fast.optimizer.optimizer.defaults["fused"] is True
    assert fast.model.generator.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)

    # frozen parts stored in bf16 (the process's Accelerator stays fp32: build the module alone)
    def loss_of(*overrides):
        module = build_module(compose([*TINY, *overrides]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return module, module(BATCH, 0.6)["loss"].item()

    plain_module, plain = loss_of("train.mixed_precision=bf16")
    module, frozen_bf16 = loss_of("train.mixed_precision=bf16", "train.frozen_bf16=true")
    assert {p.dtype for p in module.model.vae.parameters()} == {p.dtype for p in module.tokenizer.parameters()} == {torch.bfloat16}
    unet = list(module.model.generator.unet.parameters())
    assert {p.dtype for p in unet if p.requires_grad} == {torch.float32}  # LoRA, conv_in: trained in fp32
    assert {p.dtype for p in unet if not p.requires_grad} == {torch.bfloat16}  # the base under them
    assert {p.dtype for p in plain_module.model.vae.parameters()} == {torch.float32}
    assert frozen_bf16 == pytest.approx(plain, rel=0.02)
