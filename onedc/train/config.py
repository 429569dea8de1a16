"""Schema of the training config (`configs/train.yaml` and the experiment/data groups): the
dataclasses check types, `validate` checks values and names the key at fault."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from ..config import ModelConfig, model_config_from_dict, parse_structured
from ..errors import ConfigError


def process_rank() -> int:
    """This process's global rank, before torch.distributed starts: `accelerate launch` (torchrun)
    sets RANK; inside a SLURM or local submitit job it is the task's."""
    for name in ("RANK", "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


# Every rank runs Hydra: only rank 0 writes the .hydra/ folder, each rank its own log file.
OmegaConf.register_new_resolver("onedc_hydra_subdir", lambda: ".hydra" if process_rank() == 0 else None, replace=True)
OmegaConf.register_new_resolver("onedc_rank", process_rank, replace=True)


# what train.gradient_checkpointing may name per stage: the parts that run with gradients (the VAE
# encoder, the frozen codec of Stage II and the real score run without, so have nothing to recompute)
CHECKPOINTABLE = {"stage1": ("analysis_unet", "generator_unet", "vae_decoder"), "stage2": ("generator_unet", "vae_decoder", "fake_unet")}


@dataclass
class TrainConfig:
    lmbda: float = MISSING
    max_steps: int = MISSING
    batch_size: int = MISSING
    grad_accum: int = MISSING
    max_grad_norm: float = MISSING
    mixed_precision: str = MISSING
    gradient_checkpointing: list[str] = MISSING  # parts whose activations are recomputed in the backward pass
    compile: bool = MISSING  # torch.compile of the U-Nets and the VAE
    channels_last: bool = MISSING  # convolutions in NHWC memory layout
    frozen_bf16: bool = MISSING  # frozen parts stored in bf16 (with mixed_precision=bf16)
    seed: int = MISSING
    checkpoint_every: int = MISSING
    keep_last: int = MISSING
    resume: Optional[str] = None
    stop_signals: list[str] = MISSING  # checkpoint and stop after the current step on these
    lock_expiry_s: float = MISSING  # a run-folder lock whose heartbeat is older than this is stale
    init_from: Optional[str] = None  # Stage II: the Stage I checkpoint folder to start from
    log_every: int = MISSING
    logger: str = MISSING
    wandb_project: str = MISSING
    num_workers: int = MISSING
    cpu: bool = MISSING


@dataclass
class OptimizerConfig:
    """AdamW (configs/optimizer/)."""

    lr: float = MISSING
    betas: list[float] = MISSING
    weight_decay: float = MISSING
    fused: bool = MISSING


@dataclass
class ScheduleConfig:
    """The learning rate: linear warm-up, then optimizer.lr x factors[i] from milestones[i] on (configs/schedule/)."""

    warmup_steps: int = MISSING
    milestones: list[int] = field(default_factory=list)
    factors: list[float] = field(default_factory=list)


@dataclass
class SeedOffsetsConfig:
    """Added to model.seed for the parts built apart from the model's own seeded initialisation."""

    predictor: int = MISSING
    guidance: int = MISSING
    text_conditioner: int = MISSING


@dataclass
class LossConfig:
    l1_weight: float = MISSING
    lpips_weight: float = MISSING
    lpips_weights: str = MISSING
    aux_weight: float = MISSING
    lmbda_warmup_steps: int = MISSING
    lmbda_start: float = MISSING


@dataclass
class SourceConfig:
    type: str = MISSING
    path: Optional[str] = None
    image_column: Optional[str] = None
    caption_column: Optional[str] = None
    split: str = "train"
    names: list[str] = field(default_factory=list)


@dataclass
class PolicyConfig:
    name: str = MISSING
    weight: float = MISSING
    mode: str = MISSING
    size: int = MISSING
    batch_fraction: float = MISSING


@dataclass
class DataConfig:
    train: SourceConfig = field(default_factory=SourceConfig)
    validation: SourceConfig = field(default_factory=SourceConfig)
    min_side: int = MISSING
    policies: list[PolicyConfig] = MISSING


@dataclass
class ValidationConfig:
    every: int = MISSING
    crop: Optional[int] = None
    best_metric: str = MISSING
    mode: str = MISSING


@dataclass
class DMDConfig:
    """Stage II (docs/design.md 6.3); Stage I ignores it."""

    generator_every: int = MISSING
    real_guidance: float = MISSING
    min_timestep: int = MISSING
    max_timestep: int = MISSING
    gan_max_timestep: int = MISSING
    dmd_weight: float = MISSING
    gan_generator_weight: float = MISSING
    pixel_weight: float = MISSING
    fake_denoise_weight: float = MISSING
    gan_guidance_weight: float = MISSING
    head_norm_eps: float = MISSING
    guidance_lr: float = MISSING
    real_score_bf16: bool = MISSING
    fsdp: bool = MISSING  # shard the guidance over the processes (FSDP2)
    bootstrap: Optional[list[str]] = None  # Stage I overrides to train first when train.init_from does not exist yet
    init_guidance_from: Optional[str] = None  # an official Stage II training checkpoint's guidance


@dataclass
class RunConfig:
    stage: str
    experiment_name: str
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    seed_offsets: SeedOffsetsConfig
    loss: LossConfig
    validation: ValidationConfig
    dmd: DMDConfig
    weights: dict


def compose(overrides: list[str] | None = None) -> RunConfig:
    """The training config with Hydra-style overrides, e.g. compose(["experiment=quickstart",
    "train.max_steps=10"]), checked, as dataclasses."""
    return run_config(compose_config(overrides))


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The composed Hydra config of `onedc-train` with overrides, unchecked: from scripts and
    tests, or inside the running `onedc-train` (whose Hydra already searches onedc.configs)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return hydra_compose("train", overrides=overrides or [])
    with initialize_config_module("onedc.configs", version_base="1.3"):
        return hydra_compose("train", overrides=overrides or [])


def run_config(cfg: DictConfig) -> RunConfig:
    """Check the composed Hydra config and return it as dataclasses."""
    sections = {"train": TrainConfig, "optimizer": OptimizerConfig, "schedule": ScheduleConfig, "seed_offsets": SeedOffsetsConfig,
                "loss": LossConfig, "data": DataConfig, "validation": ValidationConfig, "dmd": DMDConfig}
    parsed = {}
    for key, schema in sections.items():
        if key not in cfg:
            raise ConfigError(f"the training config has no `{key}` section")
        parsed[key] = parse_structured(schema, cfg[key], f"`{key}` config")
    run = RunConfig(
        stage=cfg.stage,
        experiment_name=cfg.experiment_name,
        model=model_config_from_dict(cfg.model, source="model"),
        weights=OmegaConf.to_container(cfg.weights) if "weights" in cfg else {},
        **parsed,
    )
    validate(run)
    return run


def validate(run: RunConfig) -> None:
    t, loss, v, opt, sched = run.train, run.loss, run.validation, run.optimizer, run.schedule
    checks = [
        (t.lmbda >= 0, f"train.lmbda must be >= 0, got {t.lmbda}"),
        (t.max_steps > 0, "train.max_steps must be positive"),
        (t.batch_size > 0, "train.batch_size must be positive"),
        (t.grad_accum >= 1, "train.grad_accum must be at least 1"),
        (opt.lr > 0 and opt.weight_decay >= 0 and len(opt.betas) == 2, "optimizer: lr > 0, weight_decay >= 0, two betas"),
        (sched.warmup_steps >= 0, "schedule.warmup_steps must be >= 0"),
        (len(sched.milestones) == len(sched.factors), "schedule: one factor per milestone"),
        (all(a < b for a, b in zip(sched.milestones, sched.milestones[1:])) and all(f > 0 for f in sched.factors),
         "schedule: milestones must increase and factors be positive"),
        (t.max_grad_norm > 0, "train.max_grad_norm must be positive"),
        (t.mixed_precision in ("no", "bf16", "fp16"), f"train.mixed_precision must be no, bf16 or fp16, got {t.mixed_precision!r}"),
        (t.checkpoint_every > 0 and t.keep_last >= 1, "train.checkpoint_every must be positive and train.keep_last at least 1"),
        (t.logger in ("tensorboard", "wandb", "none"), f"train.logger must be tensorboard, wandb or none, got {t.logger!r}"),
        (t.log_every > 0 and t.num_workers >= 0, "train.log_every must be positive, train.num_workers >= 0"),
        (all(name in signal.Signals.__members__ for name in t.stop_signals),
         f"train.stop_signals: unknown signal name in {t.stop_signals} (e.g. SIGTERM, SIGUSR1)"),
        (t.lock_expiry_s > 0, "train.lock_expiry_s must be positive"),
        (not t.frozen_bf16 or t.mixed_precision == "bf16",
         "train.frozen_bf16=true needs train.mixed_precision=bf16 (the frozen parts compute under bf16 autocast)"),
        (loss.lmbda_warmup_steps >= 0 and loss.lmbda_start >= 0, "loss: lmbda_warmup_steps and lmbda_start must be >= 0"),
        (min(loss.l1_weight, loss.lpips_weight, loss.aux_weight) >= 0, "loss weights must be >= 0"),
        (v.every > 0, "validation.every must be positive"),
        (v.best_metric in ("rd_loss", "bpp", "psnr", "lpips"), f"validation.best_metric must be rd_loss, bpp, psnr or lpips, got {v.best_metric!r}"),
        (v.mode in ("min", "max"), "validation.mode must be min or max"),
        (v.best_metric != "lpips" or loss.lpips_weight > 0, "validation.best_metric=lpips needs loss.lpips_weight > 0 (the LPIPS network)"),
        (run.data.min_side > 0, "data.min_side must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if run.stage not in ("stage1", "stage2"):
        raise ConfigError(f"stage must be stage1 or stage2, got {run.stage!r}")
    unknown = sorted(set(t.gradient_checkpointing) - set(CHECKPOINTABLE[run.stage]))
    if unknown:
        choices = ", ".join(CHECKPOINTABLE[run.stage])
        raise ConfigError(f"train.gradient_checkpointing: {run.stage} has no part {unknown[0]!r} (choose from {choices})")
    if run.stage == "stage2":
        d = run.dmd
        stage2_checks = [
            (t.init_from is not None, "Stage II starts from a Stage I checkpoint: set train.init_from=PATH"),
            (t.grad_accum == 1,
             "Stage II does not support gradient accumulation (the generator and guidance turns share each batch): set train.grad_accum=1"),
            (t.mixed_precision != "fp16",
             "Stage II trains in bf16 or fp32 (fp16 would need loss scaling in the guidance's optimizer): set train.mixed_precision=bf16"),
            (d.generator_every >= 1, "dmd.generator_every must be at least 1"),
            (0 <= d.min_timestep <= d.max_timestep < 1000, "dmd: need 0 <= min_timestep <= max_timestep < 1000"),
            (0 < d.gan_max_timestep <= 1000, "dmd.gan_max_timestep must be in (0, 1000]"),
            (d.guidance_lr > 0, "dmd.guidance_lr must be positive"),
        ]
        # the GAN head needs an 8x8 mid-block: image / 8 (VAE) / 2^(levels - 1) (U-Net) >= 8
        smallest = 64 * 2 ** (len(run.model.generator.unet.block_out_channels) - 1)
        stage2_checks += [(p.size >= smallest,
                           f"data policy {p.name}: Stage II needs crops of at least {smallest} (the GAN head's 8x8 mid-block), got {p.size}")
                          for p in run.data.policies]
        for ok, message in stage2_checks:
            if not ok:
                raise ConfigError(message)
    if t.logger == "wandb":
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("train.logger=wandb needs Weights & Biases: pip install wandb (or use train.logger=tensorboard)")
    # the code predictor works on 1/32 tokens in windows: crops must tile them exactly
    multiple = 32 * run.model.distillation.predictor.window
    for p in run.data.policies:
        if p.size % multiple:
            raise ConfigError(f"data policy {p.name}: size {p.size} must be a multiple of {multiple} (32 x the code predictor's window)")
