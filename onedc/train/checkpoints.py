"""Training checkpoints: `<run>/checkpoints/step_NNNNNNN/` holds

    model.safetensors, onedc.json     the trainable OneDC weights (OneDC.from_pretrained loads it)
    code_predictor.safetensors        the Stage I code predictor
    guidance.safetensors, guidance_optimizer.pt   Stage II: fake score + GAN head, their AdamW state
    optimizer.bin, custom_checkpoint_*.pkl (scheduler), random_states_*.pkl   via Accelerate
    trainer_state.json                step, lambda, best validation value

A step folder is first written as a hidden temporary folder by all ranks and renamed by rank 0
once complete, so an interrupted write never hides the previous checkpoint. `checkpoints/best/`
holds the weights of the best validation so far.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..atomic import default_mode
from ..errors import CheckpointError

STEP_PATTERN = re.compile(r"^step_(\d{7})$")
TRAINER_STATE = "trainer_state.json"
PREDICTOR_FILE = "code_predictor.safetensors"


def step_folder(root: Path, step: int) -> Path:
    return root / f"step_{step:07d}"


def step_folders(root: Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_PATTERN.match(p.name))]
    return sorted(found)


def resolve_resume(resume: str, root: Path) -> Path | None:
    """The checkpoint folder to resume from: `latest` (None when there is none yet, so a
    first launch starts fresh) or an explicit folder, which must be a complete checkpoint."""
    if resume == "latest":
        folders = step_folders(root)
        return folders[-1][1] if folders else None
    path = Path(resume).expanduser()
    if not (path / TRAINER_STATE).is_file():
        raise CheckpointError(f"train.resume={resume}: not a complete training checkpoint (no {TRAINER_STATE})")
    return path


def load_tensors(path: Path) -> dict:
    """A safetensors file of a checkpoint, or CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e


def load_object(path: Path):
    """A torch-saved object of a checkpoint (tensors, numbers, strings, lists and dicts only:
    `weights_only`), or CheckpointError."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated or not such an object: one clear message
        raise CheckpointError(f"cannot read {path}: {e}") from e


def read_trainer_state(folder: Path) -> dict:
    try:
        return json.loads((folder / TRAINER_STATE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {folder / TRAINER_STATE}: {e}") from e


def new_temporary_folder(root: Path, step: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".step_{step:07d}.tmp-", dir=root))
    os.chmod(folder, default_mode(folder=True))
    return folder


def finish(temporary: Path, root: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write trainer_state.json, flush, rename the temporary folder to step_NNNNNNN, and delete
    all but the newest `keep_last` step folders (and leftovers of interrupted writes)."""
    (temporary / TRAINER_STATE).write_text(json.dumps(state, indent=2))
    for f in temporary.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    final = step_folder(root, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    for _, old in step_folders(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".step_*.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return final
