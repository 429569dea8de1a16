"""Stage I training on the tiny model, on the CPU."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onedc import ConfigError, OneDC
from onedc.train import checkpoints
from onedc.train.config import compose
from onedc.train.losses import lmbda_at
from onedc.train.stage1 import train

from helpers import ACCELERATE_2_PROCESSES, run_python

FAST = [
    "experiment=quickstart",
    "train.logger=none",
    "train.batch_size=2",
    "model.distillation.predictor.window=2",
    "data.policies=[{name:crop64,weight:0.6,mode:crop,size:64,batch_fraction:1.0},{name:crop128,weight:0.4,mode:crop,size:128,batch_fraction:0.5}]",
    "validation.crop=64",
]


def steps(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logs" / "train_rank0.jsonl").read_text().splitlines()]


def test_lambda_warmup():
    assert lmbda_at(0, 4.6, 4000, 1e-4) == pytest.approx(1e-4)
    assert lmbda_at(2000, 4.6, 4000, 1e-4) == pytest.approx(1e-4 + 0.25 * (4.6 - 1e-4))
    assert lmbda_at(4000, 4.6, 4000, 1e-4) == pytest.approx(4.6)
    assert lmbda_at(10000, 4.6, 4000, 1e-4) == pytest.approx(4.6)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="must be a multiple of 64"):
        compose([*FAST, "data.policies=[{name:odd,weight:1,mode:crop,size:96,batch_fraction:1}]"])
    with pytest.raises(ConfigError, match="train.logger"):
        compose([*FAST, "train.logger=mlflow"])


@pytest.mark.parametrize("accumulate", [1, 2])
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, accumulate):
    common = [*FAST, "train.checkpoint_every=3", "validation.every=100", f"train.grad_accum={accumulate}"]
    train(compose([*common, "train.max_steps=6"]), tmp_path / "straight")
    train(compose([*common, "train.max_steps=3"]), tmp_path / "resumed")
    state = train(compose([*common, "train.max_steps=6", "train.resume=latest"]), tmp_path / "resumed")
    assert state["step"] == 6
    a, b = (load_file(tmp_path / run / "checkpoints" / "step_0000006" / "model.safetensors") for run in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    p, q = (load_file(tmp_path / run / "checkpoints" / "step_0000006" / checkpoints.PREDICTOR_FILE) for run in ("straight", "resumed"))
    assert all(torch.equal(p[k], q[k]) for k in p)
    assert [(s["step"], s["policy"], s["loss"]) for s in steps(tmp_path / "straight")] == [(s["step"], s["policy"], s["loss"]) for s in steps(tmp_path / "resumed")]
    # keep_last=2 of the quickstart: step 3 and 6 remain; every step folder loads as a model
    assert [s for s, _ in checkpoints.step_folders(tmp_path / "resumed" / "checkpoints")] == [3, 6]
    assert OneDC.from_pretrained(tmp_path / "resumed" / "checkpoints" / "step_0000006").lmbda == compose(FAST).train.lmbda


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
    train(compose([*FAST, "train.max_steps=4", "train.checkpoint_every=4", "validation.every=2", "validation.best_metric=psnr", "validation.mode=max"]), run)
    rows = [json.loads(line) for line in (run / "logs" / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4] and all({"bpp", "psnr", "lpips", "rd_loss"} <= r.keys() for r in rows)
    best = max(rows, key=lambda r: r["psnr"])
    state = checkpoints.read_trainer_state(run / "checkpoints" / "step_0000004")
    assert state["best"] == {"metric": "psnr", "value": best["psnr"], "step": best["step"]}
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()


def test_two_processes_share_the_batch_policy_of_every_step(tmp_path):
    run = tmp_path / "ddp"
    run_python(*ACCELERATE_2_PROCESSES, "-m", "onedc.train", *FAST, "train.max_steps=4", "train.checkpoint_every=4",
               "validation.every=100", f"hydra.run.dir={run}")
    logs = [[json.loads(line) for line in (run / "logs" / f"train_rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [s["step"] for s in logs[0]] == [s["step"] for s in logs[1]] == [1, 2, 3, 4]
    assert [s["policy"] for s in logs[0]] == [s["policy"] for s in logs[1]]
    assert [s["loss"] for s in logs[0]] != [s["loss"] for s in logs[1]]  # different samples per rank
    assert (run / "checkpoints" / "step_0000004" / "random_states_1.pkl").is_file()
    assert not (run / ".hydra").exists() or (run / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_the_tiny_model_learns(tmp_path):
    """200 steps on the sample photos: +3 dB validation PSNR; lambda 12.2 gives a lower rate than 0.6."""
    results = {}
    for lmbda in (0.6, 12.2):
        run = tmp_path / f"l{lmbda}"
        overrides = [*FAST, "train.batch_size=4", "train.lr=2e-3", "train.max_steps=200", "train.checkpoint_every=1000",
                     "validation.every=200", "validation.crop=128", f"train.lmbda={lmbda}",
                     "data.policies=[{name:crop64,weight:1.0,mode:crop,size:64,batch_fraction:1.0}]"]
        train(compose(overrides), run)
        results[lmbda] = [json.loads(line) for line in (run / "logs" / "validation.jsonl").read_text().splitlines()]
    start, end = results[0.6][0], results[0.6][-1]
    assert end["psnr"] - start["psnr"] >= 3.0, (start, end)
    assert results[12.2][-1]["bpp"] < end["bpp"]
