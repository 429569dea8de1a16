"""Stage I training (SPEC.md 6.2) on Accelerate: the codec, the generator's LoRA + conv_in +
vae_reduction and the code predictor learn L1 + LPIPS + lambda(step) * bpp_y + 0.001 * L_aux
through the frozen U-Net base and VAE.

One process per device (`accelerate launch` for several); DDP, bf16 autocast and gradient
accumulation come from Accelerate. The run folder is `run_dir` (Hydra's run directory, chosen
by rank 0 and broadcast). Resuming replays the same data, noise and losses as an uninterrupted
run: data come from (seed, step) only (onedc.data.training), RNG states are checkpointed.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import weights as external
from ..data.sources import build_source, load_images
from ..data.training import StepBatchSampler, TrainingCrops, collate, policies_from_config
from ..image_io import to_uint8
from ..model import OneDC, build_code_predictor, build_tokenizer
from . import checkpoints
from .config import RunConfig
from .losses import Stage1Loss, build_lpips_vgg, lmbda_at

log = logging.getLogger(__name__)


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


def required_weights(run: RunConfig) -> list[str]:
    """Names of the external weights this run loads."""
    ext = run.model.external
    return [n for n in (ext.unet, ext.vae, ext.tokenizer, run.loss.lpips_weights if run.loss.lpips_weight > 0 else None) if n]


def build_module(run: RunConfig) -> Stage1Module:
    """Seeded model with its external frozen weights, code predictor, teacher and loss."""
    model = OneDC.untrained(run.model)
    model.lmbda = run.train.lmbda
    external.load_frozen_weights(model, run.weights)
    # seeded apart from the global RNG: the frozen tokenizer is not checkpointed and must come
    # out the same on every rank and after every resume
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.model.seed + 1)
        predictor = build_code_predictor(run.model)
        tokenizer = build_tokenizer(run.model)
    if run.model.external.tokenizer:
        external.load_tokenizer(tokenizer, external.require(run.model.external.tokenizer, run.weights))
    perceptual = build_lpips_vgg(external.require(run.loss.lpips_weights, run.weights)) if run.loss.lpips_weight > 0 else None
    if run.train.gradient_checkpointing:
        model.generator.unet.enable_gradient_checkpointing()
        model.codec.g_a.unet.enable_gradient_checkpointing()
        model.vae.enable_gradient_checkpointing()
    return Stage1Module(model, predictor, tokenizer, Stage1Loss(run.loss, perceptual, run.model.distillation.mse_weight))


@torch.no_grad()
def validate(module: Stage1Module, images: list[tuple[str, torch.Tensor]], run: RunConfig) -> dict[str, float]:
    """Real files: compress, decompress, then bpp of the file, PSNR (8 bit), LPIPS, rd_loss."""
    model, perceptual = module.model, module.loss.perceptual
    was_training = module.training
    module.eval()
    rows = []
    for _, x in images:
        data = model.compress(x)
        x_hat = model.decompress(data)
        ref, rec = torch.from_numpy(to_uint8(x)).float(), torch.from_numpy(to_uint8(x_hat)).float()
        mse = float((ref - rec).square().mean())
        row = {
            "bpp": 8 * len(data) / (x.shape[-2] * x.shape[-1]),
            "psnr": 10 * math.log10(255**2 / max(mse, 1e-10)),
            "l1": float((x_hat - x).abs().mean() / 2),
            "lpips": float(perceptual(x_hat[None].to(model.device), x[None].to(model.device))) if perceptual is not None else 0.0,
        }
        rows.append(row)
    module.train(was_training)
    metrics = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    loss = run.loss
    metrics["rd_loss"] = loss.l1_weight * metrics["l1"] + loss.lpips_weight * metrics["lpips"] + run.train.lmbda * metrics["bpp"]
    return metrics


def train(run: RunConfig, run_dir: Path) -> dict:
    """Train Stage I into `run_dir`; returns the final trainer state."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
    from diffusers.optimization import get_scheduler
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    t = run.train
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum,
        cpu=t.cpu,
        log_with=None if t.logger == "none" else t.logger,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    run_dir = Path(broadcast_object_list([str(run_dir)])[0])  # rank 0's run directory for everyone
    ckpt_root = run_dir / "checkpoints"
    set_seed(t.seed, device_specific=True)

    # fail fast, before building a billion-parameter model: every weight and data source present
    for name in required_weights(run):
        external.require(name, run.weights)
    source, validation_source = build_source(run.data.train), build_source(run.data.validation)
    module = build_module(run)
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=t.warmup_steps)
    module, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped once per optimizer step by us
    inner: Stage1Module = accelerator.unwrap_model(module)

    def save_hook(models, state_dicts, output_dir):
        if accelerator.is_main_process:
            inner.model.write_checkpoint_files(Path(output_dir))
            save_file({k: v.detach().cpu().contiguous() for k, v in inner.predictor.state_dict().items()}, Path(output_dir) / checkpoints.PREDICTOR_FILE)
        state_dicts.clear()  # nothing else of the models: the frozen weights come from their sources

    def load_hook(models, input_dir):
        models.clear()
        inner.model.load_trainable_state_dict(load_file(Path(input_dir) / "model.safetensors"), source=str(input_dir))
        inner.predictor.load_state_dict(load_file(Path(input_dir) / checkpoints.PREDICTOR_FILE))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    state = {"step": 0, "lmbda": t.lmbda, "experiment": run.experiment_name, "best": None}
    resume = checkpoints.resolve_resume(t.resume, ckpt_root) if t.resume else None
    if resume is not None:
        accelerator.load_state(str(resume))
        state = checkpoints.read_trainer_state(resume)
        accelerator.print(f"resumed from {resume} at step {state['step']}")

    policies = policies_from_config(run.data.policies)
    sampler = StepBatchSampler(len(source), policies, t.batch_size, t.seed, accelerator.process_index,
                               accelerator.num_processes, start_step=state["step"] * t.grad_accum)
    # its own generator: starting the loader must not draw from the (restored) global RNG
    loader = DataLoader(TrainingCrops(source, policies, run.data.min_side), batch_sampler=sampler,
                        num_workers=t.num_workers, collate_fn=collate, pin_memory=accelerator.device.type == "cuda",
                        generator=torch.Generator().manual_seed(t.seed))
    validation_images = load_images(validation_source, run.validation.crop) if accelerator.is_main_process else []

    if accelerator.is_main_process and t.logger != "none":
        project = t.wandb_project if t.logger == "wandb" else run.experiment_name
        wandb_run = {"wandb": {"name": f"{run.experiment_name}-lmbda{t.lmbda}", "dir": str(run_dir)}}
        accelerator.init_trackers(project, config=_flat({"train": asdict(t), "loss": asdict(run.loss)}), init_kwargs=wandb_run)
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # a run killed between checkpoints logged steps it will now redo: drop them, so the logs
    # read like those of an uninterrupted run
    step_log_path = logs / f"train_rank{accelerator.process_index}.jsonl"
    _truncate_log(step_log_path, state["step"])
    if accelerator.is_main_process:
        _truncate_log(logs / "validation.jsonl", state["step"])
    step_log = open(step_log_path, "a")

    def save(step: int) -> None:
        tmp = checkpoints.new_temporary_folder(ckpt_root, step) if accelerator.is_main_process else None
        tmp = Path(broadcast_object_list([str(tmp)])[0])
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            checkpoints.finish(tmp, ckpt_root, step, state, t.keep_last)
        accelerator.wait_for_everyone()

    def run_validation(step: int) -> None:
        if accelerator.is_main_process:
            metrics = validate(inner, validation_images, run)
            accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
            value = metrics[run.validation.best_metric]
            best = state["best"]
            better = best is None or (value < best["value"] if run.validation.mode == "min" else value > best["value"])
            accelerator.print(f"step {step}: " + ", ".join(f"val/{k} {v:.4f}" for k, v in metrics.items()))
            if better:
                state["best"] = {"metric": run.validation.best_metric, "value": value, "step": step}
                inner.model.save_pretrained(ckpt_root / "best")
            with open(logs / "validation.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        state["best"] = broadcast_object_list([state["best"]])[0]
        accelerator.wait_for_everyone()

    if state["step"] == 0:
        run_validation(0)
    module.train()
    progress = tqdm(total=t.max_steps, initial=state["step"], disable=not accelerator.is_main_process, desc=run.experiment_name)
    for batch in loader:
        if state["step"] >= t.max_steps:
            break
        lmbda = lmbda_at(state["step"], t.lmbda, run.loss.lmbda_warmup_steps, run.loss.lmbda_start)
        with accelerator.accumulate(module):
            terms = module(batch["image"].to(accelerator.device), lmbda)
            accelerator.backward(terms["loss"])
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(trainable, t.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        scheduler.step()
        state["step"] += 1
        step = state["step"]
        local = {k: float(v.detach()) for k, v in terms.items()}
        step_log.write(json.dumps({"step": step, "policy": batch["policy"], "batch": len(batch["caption"]), "lmbda": lmbda, **local}) + "\n")
        if step % t.log_every == 0 or step == t.max_steps:
            mean = {k: float(v) for k, v in accelerator.reduce({k: v.detach().float() for k, v in terms.items()}, "mean").items()}
            accelerator.log({**{f"train/{k}": v for k, v in mean.items()}, "train/lmbda": lmbda, "train/lr": scheduler.get_last_lr()[0]}, step=step)
            progress.set_postfix(loss=f"{mean['loss']:.4f}", bpp_y=f"{mean['bpp_y']:.4f}", l1=f"{mean['l1']:.4f}")
        progress.update(1)
        if step % run.validation.every == 0 or step == t.max_steps:
            run_validation(step)
        if step % t.checkpoint_every == 0 or step == t.max_steps:
            step_log.flush()
            save(step)
    progress.close()
    step_log.close()
    accelerator.end_training()
    return state


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep the JSON lines of `path` whose step is at most `last_step`."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= last_step]
        path.write_text("".join(line + "\n" for line in lines))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "/"))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
