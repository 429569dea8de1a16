"""A full disk loses nothing: a checkpoint or results write that fails at any of its writes
leaves the previous checkpoint and results intact and loadable, removes its temporary files, and
stops with a message saying what to free. Corrupt checkpoints are named on resume."""

import errno
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from onedc import CheckpointError, OneDC, WriteError
from onedc.atomic import folder_bytes
from onedc.eval.datasets import Setting
from onedc.eval.runner import MetricSuite, evaluate
from onedc.train import checkpoints
from onedc.train.config import compose
from onedc.train.loop import _truncate_log
from onedc.train.stage1 import Stage1Trainer
from onedc.train.stage2 import Stage2Trainer

FAST = ["experiment=quickstart", "train.logger=none", "train.batch_size=1", "model.distillation.predictor.window=2",
        "data.policies=[{name:crop64,weight:1.0,mode:crop,size:64,batch_fraction:1.0}]", "validation.crop=64",
        "validation.every=100", "train.checkpoint_every=1"]


def no_space(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.fixture()
def fail_writing(monkeypatch):
    """fail_writing(name, folder): the write of file `name` (or of its atomic temporary
    ".name.*") into a folder whose name starts with `folder` writes a few bytes, then fails with
    ENOSPC, as a full disk does partway through a file; "fsync" fails the flush of a file there,
    "rename" the rename of such a folder. A new call replaces the previous one."""

    def arm(name: str, folder: str) -> None:
        monkeypatch.undo()
        write_bytes = Path.write_bytes

        def hit(target) -> bool:
            if not isinstance(target, (str, os.PathLike)):
                return False
            target = Path(target)
            return target.parent.name.startswith(folder) and (target.name == name or target.name.startswith(f".{name}."))

        def failing(original, target_of):
            def wrapped(*args, **kwargs):
                target = target_of(*args, **kwargs)
                if hit(target):
                    write_bytes(Path(target), bytes(17))
                    raise no_space(target)
                return original(*args, **kwargs)
            return wrapped

        for module in ("onedc.model", "onedc.train.stage1", "onedc.train.stage2"):
            monkeypatch.setattr(f"{module}.save_file", failing(importlib.import_module(module).save_file, lambda tensors, filename, **k: filename))
        monkeypatch.setattr(torch, "save", failing(torch.save, lambda obj, f, *args, **kwargs: f))
        monkeypatch.setattr(Path, "write_text", failing(Path.write_text, lambda self, *args, **kwargs: self))
        monkeypatch.setattr(Path, "write_bytes", failing(write_bytes, lambda self, *args, **kwargs: self))
        real_replace, real_fsync = os.replace, os.fsync

        def replace(src, dst, **kwargs):
            if name == "rename" and Path(src).name.startswith(folder):
                raise no_space(dst)
            return real_replace(src, dst, **kwargs)

        def fsync(fd):
            if name == "fsync" and Path(os.readlink(f"/proc/self/fd/{fd}")).parent.name.startswith(folder):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "fsync", fsync)

    return arm


def state(step: int) -> dict:
    return {"step": step, "lmbda": 0.6, "experiment": "quickstart", "best": None}


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A set-up Stage I trainer with checkpoint step 1 written."""
    trainer = Stage1Trainer(compose(FAST), tmp_path_factory.mktemp("stage1"))
    trainer.setup()
    root = trainer.run_dir / "checkpoints"
    checkpoints.save(trainer.accelerator, root, 1, state(1), keep_last=1)
    return trainer, root


STAGE1_WRITES = ["model.safetensors", "onedc.json", "code_predictor.safetensors", "optimizer.bin",
                 "random_states_0.pkl", "trainer_state.json", "checksums.json", "fsync", "rename"]


def assert_step1_intact(root: Path) -> None:
    assert [p.name for p in root.iterdir()] == ["step_0000001"]  # no temporary folder left
    assert checkpoints.resolve_resume("latest", root) == root / "step_0000001"  # verified against checksums.json
    assert OneDC.from_pretrained(root / "step_0000001").lmbda == 0.6


@pytest.mark.parametrize("write", STAGE1_WRITES)
def test_a_full_disk_at_any_checkpoint_write_keeps_the_previous_one(stage1, fail_writing, write):
    trainer, root = stage1
    fail_writing(write, ".step_0000002.tmp-")
    with pytest.raises(WriteError) as e:
        checkpoints.save(trainer.accelerator, root, 2, state(2), keep_last=1)  # keep_last=1: success would delete step 1
    message = str(e.value)
    assert message.startswith(f"checkpoint step_0000002 could not be written to {root}") and "No space left on device" in message
    assert "MB free on the filesystem of" in message and "(a checkpoint takes about 5" in message
    assert "the partial folder was removed; the previous checkpoint step_0000001 is intact" in message
    assert_step1_intact(root)


def test_without_a_failure_the_same_save_replaces_the_previous_checkpoint(stage1, tmp_path):
    trainer, root = stage1
    copy = tmp_path / "checkpoints"
    shutil.copytree(root, copy)
    checkpoints.save(trainer.accelerator, copy, 2, state(2), keep_last=1)
    assert [p.name for p in copy.iterdir()] == ["step_0000002"]
    checkpoints.verify(copy / "step_0000002")


@pytest.fixture(scope="module")
def stage2(stage1, tmp_path_factory):
    """A set-up Stage II trainer (from the Stage I model) with checkpoint step 1 written."""
    folder = tmp_path_factory.mktemp("stage2")
    stage1[0].model.save_pretrained(folder / "stage1")
    run = compose(["experiment=quickstart_stage2", "train.logger=none", f"train.init_from={folder / 'stage1'}", "validation.every=100",
                   "validation.crop=64", "data.policies=[{name:crop128,weight:1.0,mode:crop,size:128,batch_fraction:1.0}]"])
    trainer = Stage2Trainer(run, folder / "run")
    trainer.setup()
    root = trainer.run_dir / "checkpoints"
    checkpoints.save(trainer.accelerator, root, 1, state(1), keep_last=1)
    return trainer, root


@pytest.mark.parametrize("write", ["guidance.safetensors", "guidance_optimizer.pt"])
def test_a_full_disk_at_a_stage2_guidance_write_keeps_the_previous_checkpoint(stage2, fail_writing, write):
    trainer, root = stage2
    fail_writing(write, ".step_0000002.tmp-")
    with pytest.raises(WriteError, match=rf"{write}'\); .* the previous checkpoint step_0000001 is intact"):
        checkpoints.save(trainer.accelerator, root, 2, state(2), keep_last=1)
    assert [p.name for p in root.iterdir()] == ["step_0000001"]
    checkpoints.verify(root / "step_0000001")


def test_a_log_line_torn_by_a_full_disk_is_dropped_on_resume(tmp_path):
    log = tmp_path / "train_rank0.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    _truncate_log(log, 2)
    assert log.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n'


def test_resume_names_a_corrupt_file_and_the_newest_good_checkpoint(stage1, tmp_path):
    trainer, root = stage1
    copy = tmp_path / "checkpoints"
    shutil.copytree(root / "step_0000001", copy / "step_0000001")
    shutil.copytree(root / "step_0000001", copy / "step_0000002")
    newest = copy / "step_0000002"
    optimizer = bytearray((newest / "optimizer.bin").read_bytes())
    optimizer[len(optimizer) // 2] ^= 0x04  # one bit of an AdamW moment: torch.load would not notice
    (newest / "optimizer.bin").write_bytes(bytes(optimizer))
    with pytest.raises(CheckpointError) as e:
        checkpoints.resolve_resume("latest", copy)
    assert str(e.value) == (f"train.resume=latest: the newest checkpoint step_0000002 is corrupt ({newest / 'optimizer.bin'}: digest "
                            f"mismatch with checksums.json: the file is corrupt); the newest good one is {copy / 'step_0000001'}: resume "
                            f"from it with train.resume={copy / 'step_0000001'} (or move step_0000002 away)")
    with pytest.raises(CheckpointError, match="optimizer.bin: digest mismatch"):
        checkpoints.resolve_resume(str(newest), copy)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model.safetensors: size mismatch \(1000 bytes, \d+ in checksums.json\): the file is truncated"):
        checkpoints.verify(newest)
    (newest / "checksums.json").write_text((newest / "checksums.json").read_text().replace('"bytes": ', '"bytes":  1'))
    with pytest.raises(CheckpointError, match="checksums.json: checksum mismatch"):
        checkpoints.verify(newest)
    shutil.rmtree(newest)
    (copy / "step_0000001" / "trainer_state.json").write_text('{"step": 2, "lmbda": 0.6}')
    with pytest.raises(CheckpointError, match="the newest checkpoint step_0000001 is corrupt .*trainer_state.json: size mismatch"
                                              ".*no earlier checkpoint verifies either"):
        checkpoints.resolve_resume("latest", copy)


def test_a_full_disk_while_writing_results_keeps_the_previous_ones(tiny_model, tmp_path, fail_writing):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(images / f"im{i}.png")
    setting = Setting("folder", "folder", None, ())
    suite = MetricSuite.build(setting, ("psnr",))
    paths = sorted(images.glob("*.png"))
    evaluate([lambda: tiny_model], setting, paths, tmp_path / "out", suite, "curve", progress=False)
    folder = next(p for p in (tmp_path / "out" / "folder" / "curve").iterdir() if p.is_dir())
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for record in (folder / "per_image").iterdir():
        record.unlink()  # the rerun recomputes every image and rewrites every result
    for name, where in [("im1.png", "recon"), ("summary.json", folder.name)]:
        fail_writing(name, where)
        with pytest.raises(WriteError, match=rf"cannot write {folder}/.*{name}: OSError: \[Errno 28\] No space left on device.* MB free"):
            evaluate([lambda: tiny_model], setting, paths, tmp_path / "out", suite, "curve", progress=False)
        assert [p for p in folder.rglob(".*") if p.is_file()] == []  # no temporary file left
        kept = [p for p in before if "per_image" not in p.parts]  # records are rewritten as images are redone
        assert all(p.read_bytes() == before[p] for p in kept)  # the failed file and the summary as before
    assert json.loads((folder / "summary.json").read_text())["images"] == 2


@pytest.mark.skipif(shutil.which("unshare") is None or subprocess.run(
    ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode != 0,
    reason="needs unprivileged user and mount namespaces to mount a small tmpfs")
def test_onedc_train_on_a_small_real_filesystem_stops_cleanly(stage1, tmp_path):
    """A tmpfs that holds the best checkpoint and step 1 but not step 2: the run stops with one
    line saying what to free, and step 1 resumes."""
    trainer, root = stage1
    weights = (root / "step_0000001" / "model.safetensors").stat().st_size  # the best checkpoint holds these
    adam = 8 * sum(p.numel() for p in trainer.trainable)  # two fp32 moments, absent from the fixture's step 1
    step = folder_bytes(root / "step_0000001") + adam
    mount, after = tmp_path / "small", tmp_path / "after"
    mount.mkdir()
    overrides = " ".join(FAST[:4] + [f"'{FAST[4]}'"] + FAST[5:]) + f" train.max_steps=2 hydra.run.dir={mount}/run"
    script = (f"mount -t tmpfs -o size={(weights + 3 * step // 2) // 1024 + 1024}k tmpfs {mount} && "
              f"{sys.executable} -m onedc.train {overrides}; echo EXIT $?; cp -r {mount}/run {after}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                            capture_output=True, text=True, env=env, timeout=600)
    errors = [line for line in result.stderr.splitlines() if "onedc-train: error:" in line]
    assert "EXIT 1" in result.stdout and len(errors) == 1 and "Traceback" not in result.stderr, result.stdout[-2000:] + result.stderr[-3000:]
    assert errors[0].split("onedc-train: error: ")[1].startswith("checkpoint step_0000002 could not be written")
    assert "free at least" in errors[0] and "the previous checkpoint step_0000001 is intact" in errors[0]
    survivors = after / "checkpoints"
    assert sorted(p.name for p in survivors.iterdir()) == ["best", "step_0000001"]
    assert checkpoints.resolve_resume("latest", survivors) == survivors / "step_0000001"
    assert OneDC.from_pretrained(survivors / "step_0000001").lmbda == 0.6
