"""Training as cluster jobs through Hydra's submitit launcher (hydra-submitit-launcher):

    onedc-train -m hydra/launcher=slurm experiment=stage1 train.lmbda=0.6,1.0,1.8,2.9,4.6,7.4,12.2
    onedc-train -m hydra/launcher=submitit_local hydra.launcher.tasks_per_node=2 experiment=quickstart train.lmbda=0.6,12.2

submit one job per sweep point, each running `nodes x tasks_per_node` processes of the Hydra
task. `export_torch_distributed_env` gives those processes the variables `accelerate launch` (torchrun)
would set, so the Accelerator joins them into one DDP run. `SlurmLauncher` requeues a job that
submitit checkpoints (on its pre-timeout signal, after the trainer's own checkpoint) with
`train.resume=latest`, so the requeued job continues where it stopped.
"""

from __future__ import annotations

import os

from hydra_plugins.hydra_submitit_launcher import submitit_launcher


def export_torch_distributed_env() -> None:
    """Inside a submitit job of several tasks, and unless a launcher already set them: RANK,
    WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR (the job's first node) and MASTER_PORT
    (derived from the job id) from SLURM's SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and
    SLURM_JOB_NODELIST, or the local executor's equivalents. GPUs stay all visible: Accelerate
    takes cuda:LOCAL_RANK."""
    if "RANK" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    if env.world_size > 1:
        env.export(set_cuda_visible_devices=False)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher whose requeued jobs resume from their latest checkpoint."""

    def checkpoint(self, sweep_overrides: list[str], *args, **kwargs):
        overrides = [o for o in sweep_overrides if not o.startswith("train.resume=")] + ["train.resume=latest"]
        return super().checkpoint(overrides, *args, **kwargs)
