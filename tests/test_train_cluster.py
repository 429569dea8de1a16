"""The lambda sweep as submitit jobs: SLURM's environment -> torch.distributed, requeue with
resume, and a 2-point sweep of the tiny model on the local executor with 2 processes per job."""

import json
import os
import subprocess
import sys

from onedc.train import checkpoints
from onedc.train.launcher import SlurmLauncher, export_torch_distributed_env

DISTRIBUTED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_slurm_tasks_get_the_variables_accelerate_launch_would_set(monkeypatch):
    for name in DISTRIBUTED:  # recorded, so that what export sets is removed after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_NODEID": "1", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[017-018]"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    export_torch_distributed_env()
    exported = {name: os.environ[name] for name in DISTRIBUTED}
    port = exported.pop("MASTER_PORT")
    assert exported == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "gpu017"}
    assert 20000 <= int(port) <= 60000  # the same on every task: derived from the job id
    monkeypatch.setenv("SLURM_PROCID", "0")
    export_torch_distributed_env()  # a launcher's (or an earlier call's) RANK is kept
    assert os.environ["RANK"] == "5"


def test_a_checkpointed_slurm_job_is_requeued_to_resume():
    launcher = SlurmLauncher(submitit_folder="unused")
    requeued = launcher.checkpoint(["experiment=stage1", "train.lmbda=4.6", "train.resume=/old/step"], "hydra.sweep.dir", 3, "id", {})
    assert requeued.args[0] == ["experiment=stage1", "train.lmbda=4.6", "train.resume=latest"]
    assert requeued.args[1:] == ("hydra.sweep.dir", 3, "id", {})


def test_a_two_point_sweep_on_the_local_submitit_launcher(tmp_path):
    """2 jobs (lambda 0.6 and 12.2) x 2 CPU processes (gloo), from the command line as a user runs it."""
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "onedc.train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
               "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}", "experiment=quickstart", "train.lmbda=0.6,12.2",
               "train.logger=none", "train.batch_size=2", "train.max_steps=2", "train.checkpoint_every=2", "validation.every=100",
               "validation.crop=64", "model.distillation.predictor.window=2",
               "data.policies=[{name:crop64,weight:1.0,mode:crop,size:64,batch_fraction:1.0}]"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**{k: v for k, v in os.environ.items() if k not in DISTRIBUTED}, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for lmbda in ("0.6", "12.2"):
        run = sweep / f"lmbda{lmbda}"
        assert [s for s, _ in checkpoints.step_folders(run / "checkpoints")] == [2]
        assert (run / "checkpoints" / "step_0000002" / "random_states_1.pkl").is_file()  # saved by 2 ranks
        assert checkpoints.read_trainer_state(run / "checkpoints" / "step_0000002")["lmbda"] == float(lmbda)
        logs = [[json.loads(line) for line in (run / "logs" / f"train_rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
        assert [s["step"] for s in logs[0]] == [s["step"] for s in logs[1]] == [1, 2]
        assert [s["policy"] for s in logs[0]] == [s["policy"] for s in logs[1]]
        assert logs[0][0]["loss"] != logs[1][0]["loss"]  # each rank its own samples
        assert (run / "train_rank0.log").is_file() and (run / "train_rank1.log").is_file()
