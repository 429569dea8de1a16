"""Stage I training on the tiny model, on the CPU."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import ACCELERATE_2_PROCESSES, run_python
from onedc import ConfigError, OneDC
from onedc.train import checkpoints, run_lock
from onedc.train.config import compose
from onedc.train.losses import lmbda_at
from onedc.train.optim import lr_factor
from onedc.train.stage1 import Stage1Trainer, train

FAST = [
    "experiment=quickstart",
    "train.logger=none",
    "train.batch_size=2",
    "model.distillation.predictor.window=2",
    "data.policies=[{name:crop64,weight:0.6,mode:crop,size:64,batch_fraction:1.0},{name:crop128,weight:0.4,mode:crop,size:128,batch_fraction:0.5}]",
    "validation.crop=64",
]


def steps_of(run_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logs" / f"train_rank{rank}.jsonl").read_text().splitlines()]


def steps(run_dir: Path) -> list[dict]:
    return steps_of(run_dir, 0)


def test_lambda_warmup():
    assert lmbda_at(0, 4.6, 4000, 1e-4) == pytest.approx(1e-4)
    assert lmbda_at(2000, 4.6, 4000, 1e-4) == pytest.approx(1e-4 + 0.25 * (4.6 - 1e-4))
    assert lmbda_at(4000, 4.6, 4000, 1e-4) == pytest.approx(4.6)
    assert lmbda_at(10000, 4.6, 4000, 1e-4) == pytest.approx(4.6)


def test_the_learning_rate_schedules():
    stage1 = compose(["experiment=stage1"])
    assert stage1.train.max_steps == 800_000 and stage1.optimizer.lr == 5e-5
    lrs = {step: stage1.optimizer.lr * lr_factor(step, stage1.schedule) for step in (0, 250, 500, 499_999, 500_000, 699_999, 700_000, 799_999)}
    assert lrs == pytest.approx({0: 0.0, 250: 2.5e-5, 500: 5e-5, 499_999: 5e-5, 500_000: 1e-5, 699_999: 1e-5, 700_000: 1e-6, 799_999: 1e-6})
    stage2 = compose(["experiment=stage2", "train.init_from=unused"])
    assert [stage2.optimizer.lr * lr_factor(step, stage2.schedule) for step in (0, 250, 500, 999_999)] == pytest.approx([0.0, 5e-7, 1e-6, 1e-6])
    assert stage2.dmd.guidance_lr == 1e-6


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="must be a multiple of 64"):
        compose([*FAST, "data.policies=[{name:odd,weight:1,mode:crop,size:96,batch_fraction:1}]"])
    with pytest.raises(ConfigError, match="train.logger"):
        compose([*FAST, "train.logger=mlflow"])
    with pytest.raises(ConfigError, match="one factor per milestone"):
        compose([*FAST, "schedule.milestones=[10,20]"])
    with pytest.raises(ConfigError, match="stage1 has no part 'fake_unet'"):
        compose([*FAST, "train.gradient_checkpointing=[fake_unet]"])


class SignalledTrainer(Stage1Trainer):
    """Receives `signum` (as from SLURM) in the middle of the optimizer step `at` (0-based)."""

    def __init__(self, *args, signum: int, at: int):
        super().__init__(*args)
        self.signum, self.at = signum, at

    def train_batch(self, batch: dict, step: int):
        if step == self.at and self.signum is not None:
            os.kill(os.getpid(), self.signum)
            self.signum = None
        return super().train_batch(batch, step)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_signalled_and_resumed_run_matches_an_uninterrupted_run(tmp_path, accumulate):
    # the learning rate warms up and drops at a milestone across the resume
    common = [*FAST, "train.checkpoint_every=3", "validation.every=100", f"train.grad_accum={accumulate}",
              "schedule.warmup_steps=2", "schedule.milestones=[4]", "schedule.factors=[0.1]", "train.max_steps=6"]
    train(compose(common), tmp_path / "straight")
    state = SignalledTrainer(compose(common), tmp_path / "resumed", signum=signal.SIGUSR1, at=1).train()
    assert state == {**state, "step": 2, "stopped_by": "SIGUSR1"}  # step 2 finished, checkpointed though not due
    assert [s for s, _ in checkpoints.step_folders(tmp_path / "resumed" / "checkpoints")] == [2]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored
    state = train(compose([*common, "train.resume=latest"]), tmp_path / "resumed")
    assert state["step"] == 6 and "stopped_by" not in state
    a, b = (load_file(tmp_path / run / "checkpoints" / "step_0000006" / "model.safetensors") for run in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    p, q = (load_file(tmp_path / run / "checkpoints" / "step_0000006" / checkpoints.PREDICTOR_FILE) for run in ("straight", "resumed"))
    assert all(torch.equal(p[k], q[k]) for k in p)
    straight, resumed = ([(s["step"], s["policy"], s["loss"]) for s in steps(tmp_path / name)] for name in ("straight", "resumed"))
    assert straight == resumed
    assert [s["lr"] for s in steps(tmp_path / "resumed")] == pytest.approx([0.0, 1e-3, 2e-3, 2e-3, 2e-4, 2e-4])
    # keep_last=2 of the quickstart: step 3 and 6 remain; every step folder loads as a model
    assert [s for s, _ in checkpoints.step_folders(tmp_path / "resumed" / "checkpoints")] == [3, 6]
    assert OneDC.from_pretrained(tmp_path / "resumed" / "checkpoints" / "step_0000006").lmbda == compose(FAST).train.lmbda
    assert not (tmp_path / "resumed" / run_lock.LOCK_FILE).exists()


def test_steps_logged_after_the_last_checkpoint_are_replaced_on_resume(tmp_path):
    run = tmp_path / "run"
    train(compose([*FAST, "train.max_steps=4", "train.checkpoint_every=2", "validation.every=100"]), run)
    shutil.rmtree(run / "checkpoints" / "step_0000004")  # as if killed after step 4 was logged, before its checkpoint
    train(compose([*FAST, "train.max_steps=4", "train.checkpoint_every=2", "validation.every=100", "train.resume=latest"]), run)
    assert [s["step"] for s in steps(run)] == [1, 2, 3, 4]


def test_an_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(compose([*FAST, "train.max_steps=2", "train.checkpoint_every=2", "validation.every=100"]), run)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the checkpoint")

    monkeypatch.setattr(checkpoints, "finish", killed)
    with pytest.raises(KeyboardInterrupt):
        train(compose([*FAST, "train.max_steps=4", "train.checkpoint_every=2", "validation.every=100", "train.resume=latest"]), run)
    root = run / "checkpoints"
    assert [s for s, _ in checkpoints.step_folders(root)] == [2]
    assert list(root.glob(".step_0000004.tmp-*"))  # the half-written one stays hidden
    assert checkpoints.resolve_resume("latest", root) == root / "step_0000002"
    OneDC.from_pretrained(root / "step_0000002")


def test_validation_keeps_the_best_checkpoint(tmp_path):
    run = tmp_path / "run"
    overrides = ["train.max_steps=4", "train.checkpoint_every=4", "validation.every=2", "validation.best_metric=psnr", "validation.mode=max"]
    train(compose([*FAST, *overrides]), run)
    rows = [json.loads(line) for line in (run / "logs" / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4] and all({"bpp", "psnr", "lpips", "rd_loss"} <= r.keys() for r in rows)
    best = max(rows, key=lambda r: r["psnr"])
    state = checkpoints.read_trainer_state(run / "checkpoints" / "step_0000004")
    assert state["best"] == {"metric": "psnr", "value": best["psnr"], "step": best["step"]}
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()


def rank_process(launcher: int, rank: int) -> int:
    """The pid of the training process of `rank` among the descendants of `launcher` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    todo = list(children.get(launcher, []))
    while todo:
        pid = todo.pop()
        try:
            env = dict(v.split("=", 1) for v in (Path("/proc") / str(pid) / "environ").read_text().split("\0") if "=" in v)
        except OSError:
            continue
        if env.get("RANK") == str(rank) and "LOCAL_RANK" in env:
            return pid
        todo += children.get(pid, [])
    raise AssertionError(f"no process of rank {rank} under {launcher}")


def test_two_processes_share_the_batch_policy_of_every_step_and_stop_together(tmp_path):
    """2 CPU ranks; SIGUSR1 reaches rank 1 only: both stop after the same step with a checkpoint,
    and the resumed run completes the same steps."""
    run = tmp_path / "ddp"
    launch = [sys.executable, *ACCELERATE_2_PROCESSES, "-m", "onedc.train", *FAST, "train.max_steps=12", "train.checkpoint_every=100",
              "validation.every=100", f"hydra.run.dir={run}"]
    first = subprocess.Popen(launch, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rank1_log = run / "logs" / "train_rank1.jsonl"
    deadline = time.time() + 300
    while not (rank1_log.is_file() and rank1_log.read_text()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(rank_process(first.pid, 1), signal.SIGUSR1)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode != 0, "a stopped run does not report success"
    stopped = [s for s, _ in checkpoints.step_folders(run / "checkpoints")]
    assert len(stopped) == 1 and 1 <= stopped[0] < 12, (stopped, stderr[-2000:])
    assert [len(steps_of(run, r)) for r in (0, 1)] == stopped * 2  # both ranks stopped after the same step
    assert (run / "checkpoints" / f"step_{stopped[0]:07d}" / "random_states_1.pkl").is_file()
    run_python(*launch[1:], "train.resume=latest")
    logs = [steps_of(run, r) for r in (0, 1)]
    assert [s["step"] for s in logs[0]] == [s["step"] for s in logs[1]] == list(range(1, 13))
    assert [s["policy"] for s in logs[0]] == [s["policy"] for s in logs[1]]
    assert [s["loss"] for s in logs[0]] != [s["loss"] for s in logs[1]]  # different samples per rank
    assert not (run / ".hydra").exists() or (run / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_the_tiny_model_learns(tmp_path):
    """200 steps on the sample photos: +3 dB validation PSNR; lambda 12.2 gives a lower rate than 0.6."""
    results = {}
    for lmbda in (0.6, 12.2):
        run = tmp_path / f"l{lmbda}"
        overrides = [*FAST, "train.batch_size=4", "optimizer.lr=2e-3", "train.max_steps=200", "train.checkpoint_every=1000",
                     "validation.every=200", "validation.crop=128", f"train.lmbda={lmbda}",
                     "data.policies=[{name:crop64,weight:1.0,mode:crop,size:64,batch_fraction:1.0}]"]
        train(compose(overrides), run)
        results[lmbda] = [json.loads(line) for line in (run / "logs" / "validation.jsonl").read_text().splitlines()]
    start, end = results[0.6][0], results[0.6][-1]
    assert end["psnr"] - start["psnr"] >= 3.0, (start, end)
    assert results[12.2][-1]["bpp"] < end["bpp"]
