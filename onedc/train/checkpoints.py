"""Training checkpoints: `<run>/checkpoints/step_NNNNNNN/` holds

    model.safetensors, onedc.json     the trainable OneDC weights (OneDC.from_pretrained loads it)
    code_predictor.safetensors        the Stage I code predictor
    guidance.safetensors, guidance_optimizer.pt   Stage II: fake score + GAN head, their AdamW state
    optimizer.bin, random_states_*.pkl   via Accelerate (the learning rate follows from the step)
    trainer_state.json                step, lambda, best validation value
    checksums.json                    size and SHA-256 of every other file, and its own checksum

A step folder is first written as a hidden temporary folder by all ranks and renamed by rank 0
once complete, so an interrupted write never hides the previous checkpoint; a write that fails
(a full disk) removes the temporary folder and stops the run saying what to free. Resuming
verifies checksums.json first, so a truncated or bit-flipped file is named before anything is
loaded. `checkpoints/best/` holds the weights of the best validation so far.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..atomic import folder_bytes, free_space_note, remove_interrupted_writes, temporary_folder
from ..checksums import file_sha256, json_checksum
from ..errors import CheckpointError, WriteError
from ..state_dicts import load_safetensors

STEP_PATTERN = re.compile(r"^step_(\d{7})$")
TRAINER_STATE = "trainer_state.json"
PREDICTOR_FILE = "code_predictor.safetensors"
CHECKSUMS = "checksums.json"


def step_folder(root: Path, step: int) -> Path:
    return root / f"step_{step:07d}"


def step_folders(root: Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_PATTERN.match(p.name))]
    return sorted(found)


def resolve_resume(resume: str, root: Path) -> Path | None:
    """The checkpoint folder to resume from, verified (`verify`): `latest` (None when there is
    none yet, so a first launch starts fresh) or an explicit folder, which must be a complete
    checkpoint. A corrupt newest checkpoint is an error naming the newest good one."""
    if resume == "latest":
        folders = [p for _, p in step_folders(root)]
        if not folders:
            return None
        try:
            verify(folders[-1])
        except CheckpointError as e:
            good = next((p for p in reversed(folders[:-1]) if _verifies(p)), None)
            advice = (f"the newest good one is {good}: resume from it with train.resume={good} (or move {folders[-1].name} away)"
                      if good else "no earlier checkpoint verifies either")
            raise CheckpointError(f"train.resume=latest: the newest checkpoint {folders[-1].name} is corrupt ({e}); {advice}") from e
        return folders[-1]
    path = Path(resume).expanduser()
    if not (path / TRAINER_STATE).is_file():
        raise CheckpointError(f"train.resume={resume}: not a complete training checkpoint (no {TRAINER_STATE})")
    verify(path)
    return path


def write_checksums(folder: Path) -> None:
    """checksums.json: the size and SHA-256 of every other file of `folder`, and its own checksum."""
    files = {f.name: {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
             for f in sorted(folder.iterdir()) if f.is_file() and f.name != CHECKSUMS}
    document = {"files": files}
    (folder / CHECKSUMS).write_text(json.dumps({**document, "checksum": json_checksum(document)}, indent=1))


def verify(folder: Path) -> None:
    """CheckpointError naming the first file of `folder` that is missing, of another size
    (truncated) or another SHA-256 (bit flips) than checksums.json records, or checksums.json
    itself if it is corrupt. Folders written before checksums.json existed are not checked."""
    path = folder / CHECKSUMS
    if not path.is_file():
        return
    try:
        document = json.loads(path.read_text())
        files = document["files"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not valid JSON or not a checksum list ({e}): the file is corrupt") from e
    if document.get("checksum") != json_checksum(document):
        raise CheckpointError(f"{path}: checksum mismatch: the file is corrupt")
    for name, expected in files.items():
        f = folder / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing (listed in {CHECKSUMS})")
        if f.stat().st_size != expected["bytes"]:
            raise CheckpointError(
                f"{f}: size mismatch ({f.stat().st_size} bytes, {expected['bytes']} in {CHECKSUMS}): the file is truncated or corrupt")
        if file_sha256(f) != expected["sha256"]:
            raise CheckpointError(f"{f}: digest mismatch with {CHECKSUMS}: the file is corrupt")


def _verifies(folder: Path) -> bool:
    try:
        verify(folder)
    except CheckpointError:
        return False
    return True


def load_tensors(path: Path) -> dict:
    """A safetensors file of a checkpoint, or CheckpointError."""
    return load_safetensors(path, error=CheckpointError)


def load_object(path: Path):
    """A torch-saved object of a checkpoint (tensors, numbers, strings, lists and dicts only:
    `weights_only`), or CheckpointError."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated or not such an object: one clear message
        raise CheckpointError(f"cannot read {path}: {e}") from e


def read_trainer_state(folder: Path) -> dict:
    path = folder / TRAINER_STATE
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}): the file is corrupt or truncated") from e


def restore(accelerator, folder: Path) -> dict:
    """Load a verified checkpoint into the accelerator's objects; returns its trainer state.
    Any failure is a CheckpointError naming the folder."""
    try:
        accelerator.load_state(str(folder))
    except CheckpointError:
        raise
    except Exception as e:  # a file Accelerate or torch cannot read (checkpoints without checksums.json)
        raise CheckpointError(f"cannot restore the training state from {folder}: {type(e).__name__}: {e}") from e
    return read_trainer_state(folder)


def save(accelerator, root: Path, step: int, state: dict, keep_last: int) -> None:
    """Write checkpoint `step` under `root` (every rank calls this): Accelerate's state (our
    save hooks write the model and the stage's extras) into a temporary folder, then `finish`.
    A failed write (a full disk, a quota, an I/O error) removes the temporary folder and raises
    WriteError saying what to free; the previous checkpoints stay as they were."""
    from accelerate.utils import broadcast_object_list

    temporary = None
    try:
        if accelerator.is_main_process:
            temporary = temporary_folder(step_folder(root, step))
        temporary = Path(broadcast_object_list([str(temporary)])[0])
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            finish(temporary, root, step, state, keep_last)
    except Exception as e:
        raise write_failed(e, temporary, root, step) from e
    accelerator.wait_for_everyone()


def finish(temporary: Path, root: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write trainer_state.json and checksums.json, flush, rename the temporary folder to
    step_NNNNNNN, and delete all but the newest `keep_last` step folders (and leftovers of
    interrupted writes)."""
    (temporary / TRAINER_STATE).write_text(json.dumps(state, indent=2))
    write_checksums(temporary)
    for f in temporary.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    final = step_folder(root, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    for _, old in step_folders(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    remove_interrupted_writes(root)
    return final


def write_failed(error: Exception, temporary: Path | None, root: Path, step: int) -> WriteError:
    """After a failed checkpoint write (a full disk, a quota, an I/O error): remove the partial
    temporary folder and return the error that stops the run, saying what to free."""
    written = folder_bytes(temporary) if temporary else 0
    if temporary:
        shutil.rmtree(temporary, ignore_errors=True)
    previous = step_folders(root)
    needed = folder_bytes(previous[-1][1]) if previous else written
    intact = (f"the previous checkpoint {previous[-1][1].name} is intact: continue from it with train.resume=latest"
              if previous else "no earlier checkpoint exists")
    return WriteError(f"checkpoint step_{step:07d} could not be written to {root} ({type(error).__name__}: {error}); "
                      f"{free_space_note(root, needed)} (a checkpoint takes about {needed / 1e6:,.1f} MB; train.keep_last "
                      f"sets how many are kept); the partial folder was removed; {intact}")
