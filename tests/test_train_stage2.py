"""Stage II (DMD2 + latent GAN) on the tiny model, on the CPU."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import ACCELERATE_2_PROCESSES, run_python
from onedc.data.sources import SamplePhotos
from onedc.data.training import TrainingCrops, collate, policies_from_config
from onedc.errors import ConfigError
from onedc.train.config import compose
from onedc.train.dmd import Guidance
from onedc.train.stage1 import train as train_stage1
from onedc.train.stage2 import Stage2Trainer, train

STAGE1 = ["experiment=quickstart", "train.logger=none", "train.batch_size=2", "train.max_steps=2", "train.checkpoint_every=2",
          "validation.every=100", "validation.crop=64", "model.distillation.predictor.window=2",
          "data.policies=[{name:crop128,weight:1.0,mode:crop,size:128,batch_fraction:1.0}]"]


@pytest.fixture(scope="module")
def stage1_checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("stage1")
    train_stage1(compose(STAGE1), run)
    return run / "checkpoints" / "best"


def stage2(checkpoint: Path, *overrides: str):
    return compose(["experiment=quickstart_stage2", "train.logger=none", f"train.init_from={checkpoint}", "validation.every=100",
                    "validation.crop=64", "data.policies=[{name:crop128,weight:1.0,mode:crop,size:128,batch_fraction:1.0}]", *overrides])


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_turns_update_what_they_should(stage1_checkpoint, tmp_path):
    trainer = Stage2Trainer(stage2(stage1_checkpoint, "train.max_steps=30", "schedule.warmup_steps=0"), tmp_path)
    trainer.setup()
    model, guidance = trainer.model, trainer.inner_guidance
    policies = policies_from_config(trainer.run.data.policies)
    crops = TrainingCrops(SamplePhotos(["astronaut", "coffee", "rocket"]), policies, 128)
    generator_trainable = {k: v for k, v in model.generator.state_dict().items() if k in model.generator.trainable_state_dict()}
    frozen = {"codec": snapshot(model.codec), "vae": snapshot(model.vae), "real": snapshot(guidance.real_unet)}
    for step in range(30):
        gen_before = {k: v.detach().clone() for k, v in model.generator.trainable_state_dict().items()}
        fake_before, head_before = snapshot(guidance.fake_unet), snapshot(guidance.cls_pred_branch)
        batch = collate([crops[(i % 3, 1000 * step + i, 0)] for i in range(2)])
        batch["caption"] = ["a photo", ""]
        terms, stepped = trainer.train_batch(batch, step)
        assert stepped and torch.isfinite(terms["guidance_loss"])
        gen_moved = any(not torch.equal(v, gen_before[k]) for k, v in model.generator.trainable_state_dict().items())
        assert gen_moved == (step % 10 == 0), step
        assert ("generator_loss" in terms) == (step % 10 == 0)
        assert changed(fake_before, guidance.fake_unet) and changed(head_before, guidance.cls_pred_branch)
    assert not changed(frozen["codec"], model.codec) and not changed(frozen["vae"], model.vae)
    assert not changed(frozen["real"], guidance.real_unet)
    assert generator_trainable  # LoRA, conv_in, vae_reduction were there to move


def test_dmd_gradient_vanishes_when_real_and_fake_agree(tiny_config):
    run = compose(["experiment=quickstart_stage2", "train.init_from=unused", "dmd.real_guidance=1.0", "dmd.real_score_bf16=false"])
    torch.manual_seed(0)
    guidance = Guidance(tiny_config.generator, run.dmd)
    guidance.fake_unet.load_state_dict(guidance.real_unet.state_dict())
    latents = torch.randn(2, 4, 16, 16, requires_grad=True)
    cond, uncond = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    loss, grad = guidance.dmd_loss(latents, cond, uncond)
    assert torch.count_nonzero(grad) == 0 and float(loss.detach()) == 0.0
    with torch.no_grad():
        guidance.fake_unet.conv_out.bias.add_(0.1)  # the fake score drifts: the gradient appears
    _, grad = guidance.dmd_loss(latents, cond, uncond)
    assert torch.count_nonzero(grad) > 0


def test_cfg_with_guidance_one_is_the_conditional_prediction(tiny_config):
    run = compose(["experiment=quickstart_stage2", "train.init_from=unused"])
    torch.manual_seed(0)
    guidance = Guidance(tiny_config.generator, run.dmd)
    noisy, t = torch.randn(2, 4, 16, 16), torch.tensor([500, 20])
    cond, uncond = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    conditional = guidance.real_unet(noisy, t, encoder_hidden_states=cond).sample
    assert torch.allclose(guidance.predict_eps(guidance.real_unet, noisy, t, cond, uncond, guidance=1.0), conditional, atol=1e-5)
    guided = guidance.predict_eps(guidance.real_unet, noisy, t, cond, uncond, guidance=1.75)
    unconditional = guidance.real_unet(noisy, t, encoder_hidden_states=uncond).sample
    assert torch.allclose(guided, unconditional + 1.75 * (conditional - unconditional), atol=1e-5)


def test_x0_formula_inverts_the_forward_process(tiny_config):
    run = compose(["experiment=quickstart_stage2", "train.init_from=unused"])
    guidance = Guidance(tiny_config.generator, run.dmd)
    x, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([20, 500, 999])
    assert torch.allclose(guidance.x0(guidance.add_noise(x, noise, t), noise, t).float(), x, atol=1e-4)


def test_kill_and_resume_matches(stage1_checkpoint, tmp_path):
    common = ["train.checkpoint_every=6"]
    train(stage2(stage1_checkpoint, *common, "train.max_steps=12"), tmp_path / "straight")
    train(stage2(stage1_checkpoint, *common, "train.max_steps=6"), tmp_path / "resumed")
    train(stage2(stage1_checkpoint, *common, "train.max_steps=12", "train.resume=latest"), tmp_path / "resumed")
    for name in ("model.safetensors", "guidance.safetensors"):
        a, b = (load_file(tmp_path / run / "checkpoints" / "step_0000012" / name) for run in ("straight", "resumed"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a, b = (torch.load(tmp_path / run / "checkpoints" / "step_0000012" / "guidance_optimizer.pt") for run in ("straight", "resumed"))
    assert a["state"].keys() == b["state"].keys() and all(torch.equal(a["state"][k][m], b["state"][k][m])
                                                        for k in a["state"] for m in ("exp_avg", "exp_avg_sq"))
    logs = [[json.loads(line) for line in (tmp_path / run / "logs" / "train_rank0.jsonl").read_text().splitlines()]
            for run in ("straight", "resumed")]
    assert logs[0] == logs[1]


def test_a_missing_stage1_checkpoint_is_trained_first(tmp_path):
    """`onedc-train experiment=quickstart_stage2` without the quickstart's checkpoint, as a user
    runs it: the bootstrap Stage I run (composed inside the running Hydra app) makes it first."""
    assert compose(["experiment=quickstart_stage2"]).dmd.bootstrap == ["experiment=quickstart"]
    init = tmp_path / "stage1" / "checkpoints" / "best"
    bootstrap = ",".join(f"'{o}'" for o in STAGE1)
    run_python("-m", "onedc.train", "experiment=quickstart_stage2", "train.logger=none", f"train.init_from={init}",
               "validation.every=100", "validation.crop=64", "data.policies=[{name:crop128,weight:1.0,mode:crop,size:128,batch_fraction:1.0}]",
               "train.max_steps=2", "train.checkpoint_every=2", f"dmd.bootstrap=[{bootstrap}]", f"hydra.run.dir={tmp_path / 'stage2'}")
    assert (init / "model.safetensors").is_file()
    assert (tmp_path / "stage2" / "checkpoints" / "step_0000002" / "guidance.safetensors").is_file()


def test_sharded_guidance_matches_ddp_and_resumes_exactly(stage1_checkpoint, tmp_path):
    """2 CPU processes (gloo): dmd.fsdp=true keeps about half the guidance on each rank, trains as
    DDP does (to float rounding), and resumes bit-exactly from its gathered checkpoint."""

    def stage2_launch(run_dir: Path, fsdp: bool, *extra: str) -> str:
        return run_python(*ACCELERATE_2_PROCESSES, "-m", "onedc.train",
                          "experiment=quickstart_stage2", "train.logger=none", f"train.init_from={stage1_checkpoint}",
                          "validation.every=100", "validation.crop=64",
                          "data.policies=[{name:crop128,weight:1.0,mode:crop,size:128,batch_fraction:1.0}]",
                          "train.max_steps=4", "train.checkpoint_every=2", "schedule.warmup_steps=0", "dmd.generator_every=2",
                          f"dmd.fsdp={str(fsdp).lower()}", f"hydra.run.dir={run_dir}", *extra)

    sharded, replicated, resumed = tmp_path / "fsdp", tmp_path / "ddp", tmp_path / "resumed"
    output = stage2_launch(sharded, True)
    local, total = (int(n.replace(",", "")) for n in re.search(r"rank 0 holds ([\d,]+) of its ([\d,]+) parameters", output).groups())
    assert 0.45 < local / total < 0.55, (local, total)
    stage2_launch(replicated, False)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(sharded / "checkpoints" / "step_0000002", resumed / "checkpoints" / "step_0000002")
    shutil.copytree(sharded / "logs", resumed / "logs")
    stage2_launch(resumed, True, "train.resume=latest")

    def final(run: Path, name: str) -> dict:
        return load_file(run / "checkpoints" / "step_0000004" / name)

    for name in ("model.safetensors", "guidance.safetensors"):
        a, b, c = final(sharded, name), final(replicated, name), final(resumed, name)
        assert a.keys() == b.keys() == c.keys()
        assert all(torch.equal(a[k], c[k]) for k in a), name
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), name
        assert any(not torch.equal(a[k], v) for k, v in load_file(sharded / "checkpoints" / "step_0000002" / name).items())
    for rank in (0, 1):
        logs = [[json.loads(line) for line in (run / "logs" / f"train_rank{rank}.jsonl").read_text().splitlines()]
                for run in (sharded, replicated, resumed)]
        assert logs[0] == logs[2]
        assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [1, 2, 3, 4]
        assert all(abs(x["guidance_loss"] - y["guidance_loss"]) < 1e-4 for x, y in zip(logs[0], logs[1]))


def test_a_sharded_guidance_needs_several_processes(stage1_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="2 or more"):
        Stage2Trainer(stage2(stage1_checkpoint, "dmd.fsdp=true"), tmp_path).setup()


def test_stage2_config_errors_name_the_key(stage1_checkpoint):
    with pytest.raises(ConfigError, match="train.mixed_precision=bf16"):
        stage2(stage1_checkpoint, "train.mixed_precision=fp16")
    with pytest.raises(ConfigError, match="train.grad_accum=1"):
        stage2(stage1_checkpoint, "train.grad_accum=2")
