"""What the training stages share: Accelerate set-up, the run folder (Hydra's, chosen by rank 0
and broadcast, locked against a second job), the seeded data stream, atomic checkpoints with
exact resume, a clean stop on SLURM's signals, validation on real files with a best checkpoint,
and logging (tqdm, TensorBoard or W&B, per-rank JSON lines).

A stage subclasses `StageTrainer` and supplies its modules and one optimizer step:
    required_weights()  names of the external weights it loads (checked before building)
    build()             modules and optimizers, prepared with self.accelerator; sets self.model
    train_batch()       one (micro-)batch -> (loss terms, whether an optimizer step happened)
    save_extras() / load_extras()   trainable state beyond the OneDC model's own (called on
                                    every rank; the main process writes)
Resuming replays the same data (a function of seed and step), noise (checkpointed RNG) and
losses as an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .. import weights as external
from ..bitstream import bits_per_pixel
from ..data.sources import build_source, load_images
from ..data.training import StepBatchSampler, TrainingCrops, collate, policies_from_config
from ..errors import ConfigError, RunInUseError
from ..eval.metrics import psnr
from ..image_io import to_uint8_tensor
from ..model import OneDC
from . import checkpoints
from .config import RunConfig
from .preemption import StopSignals
from .run_lock import RunLock


@torch.no_grad()
def validate(model: OneDC, perceptual, images: list[tuple[str, torch.Tensor]], run: RunConfig) -> dict[str, float]:
    """Real files: compress, decompress, then bpp of the file, the entropy model's estimates of it
    (ours and the official code's, whose eval-mode sigma floor differs: docs/reproducing.md),
    PSNR (8 bit), LPIPS, rd_loss."""
    rows = []
    for _, x in images:
        data = model.compress(x)
        x_hat = model.decompress(data)
        height, width = x.shape[-2:]
        estimate = model.estimate_bits(x)
        rows.append({
            "bpp": bits_per_pixel(len(data), height, width),
            "bpp_estimated": (estimate["y"] + estimate["z"]) / (height * width),
            "bpp_estimated_official": (estimate["y_official"] + estimate["z"]) / (height * width),
            "psnr": psnr(to_uint8_tensor(x), to_uint8_tensor(x_hat)),
            "l1": float((x_hat - x).abs().mean() / 2),
            "lpips": float(perceptual(x_hat[None].to(model.device), x[None].to(model.device))) if perceptual is not None else 0.0,
        })
    metrics = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    loss = run.loss
    metrics["rd_loss"] = loss.l1_weight * metrics["l1"] + loss.lpips_weight * metrics["lpips"] + run.train.lmbda * metrics["bpp"]
    return metrics


class StageTrainer:
    def __init__(self, run: RunConfig, run_dir: Path):
        self.run, self.run_dir = run, Path(run_dir)
        self.model: OneDC | None = None  # the (unwrapped) model that is validated and checkpointed
        self.perceptual = None  # LPIPS network used by validation, if any
        self.accelerator = None
        self.lock: RunLock | None = None  # the run folder's, held by the main process

    # -------------------------------------------------------------- supplied by a stage
    def required_weights(self) -> list[str]:
        raise NotImplementedError

    def build(self) -> None:
        raise NotImplementedError

    def train_batch(self, batch: dict, step: int) -> tuple[dict[str, torch.Tensor], bool]:
        raise NotImplementedError

    def profile_components(self) -> dict[str, list[torch.nn.Module]]:
        """Named groups of modules whose time and memory `profiling.StepProfiler` reports."""
        raise NotImplementedError

    def profile_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def save_extras(self, folder: Path) -> None:
        pass

    def load_extras(self, folder: Path) -> None:
        pass

    # -------------------------------------------------------------- shared
    def make_accelerator(self):
        """The Accelerator of this run (mixed precision, accumulation, CPU, logger, run folder)."""
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        t = self.run.train
        return Accelerator(
            mixed_precision=t.mixed_precision,
            gradient_accumulation_steps=t.grad_accum,
            cpu=t.cpu,
            log_with=None if t.logger == "none" else t.logger,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "logs")),
        )

    def setup(self) -> None:
        """Accelerate, the run folder, the fail-fast checks, the stage's modules, checkpoint hooks."""
        from accelerate.utils import DistributedType, broadcast_object_list, set_seed

        run, t = self.run, self.run.train
        accelerator = self.accelerator = self.make_accelerator()
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):  # would shard what rank 0 validates and saves
            raise ConfigError(f"Accelerate's {accelerator.distributed_type.value} mode is not supported: launch with a DDP config "
                              "(configs/accelerate/4gpu.yaml); Stage II shards its guidance itself with dmd.fsdp=true")
        self.run_dir = Path(broadcast_object_list([str(self.run_dir)])[0])  # rank 0's choice
        self.lock_run_folder()
        set_seed(t.seed, device_specific=True)

        # fail fast, before building billion-parameter models: every weight and data source present
        for name in self.required_weights():
            external.require(name, run.weights)
        self.source, self.validation_source = build_source(run.data.train), build_source(run.data.validation)
        self.build()

        def save_hook(models, state_dicts, output_dir):
            if accelerator.is_main_process:
                self.model.write_checkpoint_files(Path(output_dir))
            self.save_extras(Path(output_dir))  # on every rank: it may gather sharded tensors
            state_dicts.clear()  # nothing else of the models: frozen weights come from their sources

        def load_hook(models, input_dir):
            models.clear()
            self.model.load_trainable_state_dict(checkpoints.load_tensors(Path(input_dir) / "model.safetensors"), source=str(input_dir))
            self.load_extras(Path(input_dir))

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

    def lock_run_folder(self) -> None:
        """Rank 0 takes the run folder's lock (run_lock.py); every rank fails if it is refused."""
        from accelerate.utils import broadcast_object_list

        refused = None
        if self.accelerator.is_main_process:
            self.lock = RunLock(self.run_dir, self.run.train.lock_expiry_s)
            try:
                note = self.lock.acquire()
                if note:
                    self.accelerator.print(f"note: {note}")
            except RunInUseError as e:
                refused, self.lock = str(e), None
        refused = broadcast_object_list([refused])[0]
        if refused:
            raise RunInUseError(refused)

    def train(self) -> dict:
        """Train into the run folder; returns the final trainer state ("stopped_by": the signal
        name if a stop signal ended it before train.max_steps, after a checkpoint)."""
        try:
            self.setup()
            with StopSignals(self.run.train.stop_signals) as stop:
                state = self.train_loop(stop)
        finally:
            if self.lock is not None:
                self.lock.release()
        if "stopped_by" in state:
            stop.hand_over(signal.Signals[state["stopped_by"]])
        return state

    def train_loop(self, stop: StopSignals) -> dict:
        from accelerate.utils import broadcast_object_list
        from tqdm.auto import tqdm

        run, t, accelerator = self.run, self.run.train, self.accelerator
        run_dir, ckpt_root = self.run_dir, self.run_dir / "checkpoints"
        source, validation_source = self.source, self.validation_source
        state = {"step": 0, "lmbda": t.lmbda, "experiment": run.experiment_name, "best": None}
        resume = checkpoints.resolve_resume(t.resume, ckpt_root) if t.resume else None
        if resume is not None:
            state = checkpoints.restore(accelerator, resume)
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
        step_log = open(step_log_path, "a", buffering=1)  # a line per step, written as it happens

        def run_validation(step: int) -> None:
            if accelerator.is_main_process:
                modes = [(m, m.training) for m in self.model.modules()]  # restored exactly afterwards
                self.model.eval()
                with accelerator.autocast():  # the training precision (float64 exact entropy parts stay exact)
                    metrics = validate(self.model, self.perceptual, validation_images, run)
                for m, training in modes:
                    m.training = training
                accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
                value = metrics[run.validation.best_metric]
                best = state["best"]
                better = best is None or (value < best["value"] if run.validation.mode == "min" else value > best["value"])
                accelerator.print(f"step {step}: " + ", ".join(f"val/{k} {v:.4f}" for k, v in metrics.items()))
                if better:
                    state["best"] = {"metric": run.validation.best_metric, "value": value, "step": step}
                    self.model.save_pretrained(ckpt_root / "best")
                with open(logs / "validation.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, **metrics}) + "\n")
            state["best"] = broadcast_object_list([state["best"]])[0]
            accelerator.wait_for_everyone()

        if state["step"] == 0:
            run_validation(0)
        progress = tqdm(total=t.max_steps, initial=state["step"], disable=not accelerator.is_main_process, desc=run.experiment_name)
        for batch in loader:
            if state["step"] >= t.max_steps:
                break
            terms, stepped = self.train_batch(batch, state["step"])
            if not stepped:
                continue
            state["step"] += 1
            step = state["step"]
            local = {k: float(v.detach()) for k, v in terms.items()}
            step_log.write(json.dumps({"step": step, "policy": batch["policy"], "batch": len(batch["caption"]), **local}) + "\n")
            if step % t.log_every == 0 or step == t.max_steps:
                mean = {k: float(v) for k, v in accelerator.reduce({k: v.detach().float() for k, v in terms.items()}, "mean").items()}
                accelerator.log({f"train/{k}": v for k, v in mean.items()}, step=step)
                progress.set_postfix({k: f"{mean[k]:.4f}" for k in list(mean)[:3]})
            progress.update(1)
            if step % run.validation.every == 0 or step == t.max_steps:
                run_validation(step)
            saved = step % t.checkpoint_every == 0 or step == t.max_steps
            if saved:
                checkpoints.save(accelerator, ckpt_root, step, state, t.keep_last)
            stopped = stop.agreed(accelerator)
            if stopped is not None and step < t.max_steps:
                if not saved:
                    checkpoints.save(accelerator, ckpt_root, step, state, t.keep_last)
                state["stopped_by"] = stopped.name
                accelerator.print(f"stopped by {stopped.name} after step {step}, checkpoint written: continue with train.resume=latest")
                break
        progress.close()
        step_log.close()
        accelerator.end_training()
        return state


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep the JSON lines of `path` whose step is at most `last_step`."""
    if path.is_file():
        lines = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= last_step:
                    lines.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # a line torn by a crash or a full disk
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
