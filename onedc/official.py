"""The official OneDC release (onedc-codec/onedc; docs/design.md 9) in our terms.

* Key correspondence: our modules keep the official structure below the top level, so each
  file's mapping is a table of prefix renames (first match wins); the test suite checks against
  the published key manifest that every official key maps to exactly one of ours, same shape.
* `import_official`: one released rate-point folder (model.safetensors = generator,
  model_1.safetensors = codec) -> our checkpoint folder, the DMD2 U-Net base bundled.
* `load_code_predictor`: the Stage I code predictor of an official training checkpoint.
* `load_guidance`: the Stage II guidance (real and fake scores, GAN head) of an official
  training checkpoint, to continue Stage II from it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_directory
from .config import ModelConfig
from .errors import CheckpointError
from .state_dicts import check_keys, read_state_dict, shapes

OFFICIAL_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    # the codec (IntraNoAR)
    "model_1.safetensors": (
        ("enc.trans_coding.", "codec.g_a.trunk."),
        ("enc.", "codec.g_a."),
        ("hyper_enc.", "codec.h_enc."),
        ("hyper_dec.feat_in.", "codec.h_dec.stem."),
        ("hyper_dec.to_entropy.", "codec.h_dec.trunk."),
        ("y_prior_fusion.", "codec.context.prior_fusion."),
        ("y_spatial_prior_reduction.", "codec.context.reduction."),
        ("y_spatial_prior_adaptor_1.", "codec.context.adaptors.0."),
        ("y_spatial_prior_adaptor_2.", "codec.context.adaptors.1."),
        ("y_spatial_prior_adaptor_3.", "codec.context.adaptors.2."),
        ("y_spatial_prior.", "codec.context.trunk."),
        ("semantic_adaptor.to_semantic.", "codec.h_sem.blocks."),
        ("dec.", "codec.g_s."),
    ),
    # the generator: the LoRA-wrapped U-Net (peft names) with vae_reduction attached
    "model.safetensors": (
        ("vae_reduction.", "generator.vae_reduction."),
        ("", "generator.unet."),
    ),
    # the SD2.1 VAE, diffusers layout
    "sd21_vae": (("", "vae."),),
}


def official_key(file: str, key: str) -> str:
    """Our state-dict key for `key` of an official `file`; KeyError if it has no counterpart."""
    for official, ours in OFFICIAL_PREFIXES[file]:
        if key.startswith(official):
            return ours + key[len(official) :]
    raise KeyError(f"{file}: key without a counterpart: {key}")


RELEASE_FILES = ("model.safetensors", "model_1.safetensors")
# Files an official folder may also hold, which the import does not need (training state).
KNOWN_EXTRA_FILES = {
    "model_2.safetensors": "training-only model (Stage I code predictor or Stage II guidance)",
    "optimizer*.bin": "optimizer state",
    "scheduler*.bin": "learning-rate scheduler state",
    "random_states_*.pkl": "RNG state",
    "*.md": "notes",
    "*.txt": "notes",
}
# Stored by the official predictor as Parameters; fixed, recomputed by us (code_predictor.py).
PREDICTOR_MASKS = ("left_right_mask", "upper_lower_mask")
# DMD2's guidance stores a one-layer placeholder network that no loss uses; we have none.
GUIDANCE_PLACEHOLDER = "dummy_network."


@dataclass
class FileReport:
    file: str
    keys: int
    parameters: int
    trainable: int = 0
    frozen: int = 0


@dataclass
class ImportReport:
    source: Path
    output: Path
    lmbda: float | None  # None: the z-only model, which has no rate point
    files: list[FileReport] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def release_lambda(folder: Path, lmbda: float | None, z_only: bool) -> float | None:
    """The rate point: given, or read from a folder name such as `lambda4.6` / `lmbda_12.2`;
    the z-only release (`exlow_bpp0034`) has none."""
    if lmbda is not None:
        return float(lmbda)
    match = re.search(r"l(?:a)?m(?:b)?da[_-]?(\d+(?:\.\d+)?)", folder.name, re.IGNORECASE)
    if match:
        return float(match.group(1))
    if z_only:
        return None
    raise CheckpointError(f"cannot tell the rate point of {folder}: pass --lmbda")


def import_official(source: str | Path, output: str | Path, config: ModelConfig, lmbda: float | None = None) -> ImportReport:
    """Convert an official rate-point folder into our checkpoint folder (written atomically).
    Every key of both files must map onto a codec or generator weight of `config` with its
    shape, and every such weight must be filled; anything else is a CheckpointError. The z-only
    release has the same files and keys: import it with a z-only config (onedc_sd15_zonly)."""
    from .model import OneDC, write_checkpoint

    source, output = Path(source), Path(output)
    if not source.is_dir():
        raise CheckpointError(f"official checkpoint folder not found: {source}")
    present = sorted(p.name for p in source.iterdir() if p.is_file())
    missing = [f for f in RELEASE_FILES if f not in present]
    if missing:
        raise CheckpointError(f"{source} is not an official OneDC rate point: {', '.join(missing)} missing "
                              "(a release folder holds model.safetensors, the generator, and model_1.safetensors, the codec)")
    report = ImportReport(source, output, release_lambda(source, lmbda, config.codec.z_only))
    for name in present:
        if name in RELEASE_FILES:
            continue
        reason = next((why for pattern, why in KNOWN_EXTRA_FILES.items() if fnmatch.fnmatch(name, pattern)), None)
        if reason is None:
            raise CheckpointError(f"{source}: unexpected file {name}; an official rate point holds {' and '.join(RELEASE_FILES)}")
        report.ignored.append((name, reason))

    with torch.device("meta"):
        target = OneDC(config)
    trainable_keys = set(target.trainable_state_dict())
    expected = {k: v for k, v in shapes(target.state_dict()).items() if k.startswith(("codec.", "generator."))}
    converted: dict[str, torch.Tensor] = {}
    for file in RELEASE_FILES:
        state = read_state_dict(source / file)
        mapped, unmapped = {}, []
        for key, tensor in state.items():
            try:
                mapped[official_key(file, key)] = tensor.float()
            except KeyError:
                unmapped.append(key)
        if unmapped:
            raise CheckpointError(f"{source / file}: {len(unmapped)} keys without a counterpart (e.g. {unmapped[:3]})")
        check_keys({k: expected[k] for k in mapped if k in expected}, {k: v for k, v in mapped.items() if k in expected},
                   str(source / file), "OneDC model", error=CheckpointError)
        stray = sorted(set(mapped) - set(expected))
        if stray:
            raise CheckpointError(f"{source / file}: {len(stray)} keys that map outside our model (e.g. {stray[:3]})")
        converted.update(mapped)
        report.files.append(FileReport(file, len(mapped), sum(t.numel() for t in mapped.values()),
                                       trainable=sum(t.numel() for k, t in mapped.items() if k in trainable_keys),
                                       frozen=sum(t.numel() for k, t in mapped.items() if k not in trainable_keys)))
    check_keys(expected, converted, str(source), "OneDC model", error=CheckpointError)
    trainable = {k: v for k, v in converted.items() if k in trainable_keys}
    frozen = {k: v for k, v in converted.items() if k not in trainable_keys}
    # the U-Net base travels inside the checkpoint: no separate DMD2 download for this model
    imported = replace(config, external=replace(config.external, unet=None))
    with atomic_directory(output) as tmp:
        write_checkpoint(tmp, imported, report.lmbda, trainable, frozen)
    return report


def load_code_predictor(predictor: nn.Module, path: Path) -> None:
    """The Stage I code predictor of an official training checkpoint (`model_2.safetensors`);
    its six fixed shifted-window masks are skipped: ours are recomputed from the window size."""
    state = {k: v for k, v in read_state_dict(path).items() if not k.endswith(PREDICTOR_MASKS)}
    check_keys(shapes(predictor.state_dict()), state, str(path), "code predictor", error=CheckpointError)
    predictor.load_state_dict(state)


def load_guidance(guidance: nn.Module, path: str | Path) -> None:
    """The Stage II guidance of an official training checkpoint (a `checkpoint_model_NNNNNN`
    folder or its `model_2.safetensors`) into our `train.dmd.Guidance`: `real_unet.*` (stored in
    bf16), `fake_unet.*` and `cls_pred_branch.*` have our names; `dummy_network.*` is skipped;
    the stored `alphas_cumprod` must be our noise schedule (to float32 precision)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model_2.safetensors"
    state = read_state_dict(path)
    alphas = state.pop("alphas_cumprod", None)
    if alphas is None:
        raise CheckpointError(f"{path}: no alphas_cumprod; not the Stage II guidance of an official training checkpoint "
                              "(a Stage I checkpoint's model_2.safetensors is the code predictor)")
    ours = guidance.alphas_cumprod.cpu()
    if alphas.shape != ours.shape or not torch.allclose(alphas.double(), ours, rtol=0, atol=1e-6):
        raise CheckpointError(f"{path}: its noise schedule (alphas_cumprod) differs from ours (model.generator.noise_schedule)")
    state = {k: v for k, v in state.items() if not k.startswith(GUIDANCE_PLACEHOLDER)}
    check_keys(shapes(guidance.state_dict()), state, str(path), "Stage II guidance", error=CheckpointError)
    guidance.load_state_dict(state)  # copies cast: bf16 real score -> the module's dtype
