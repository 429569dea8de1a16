"""`onedc-train`: the Hydra entry point of training (configs/train.yaml).

    onedc-train experiment=quickstart
    onedc-train -m experiment=stage1 train.lmbda=0.6,1.0,1.8,2.9,4.6,7.4,12.2
    onedc-train -m hydra/launcher=slurm experiment=stage1 train.lmbda=0.6,1.0,1.8,2.9,4.6,7.4,12.2   # 7 SLURM jobs
    onedc-train experiment=stage2 train.init_from=outputs/stage1/lmbda4.6/checkpoints/best
    accelerate launch --config_file configs/accelerate/4gpu.yaml -m onedc.train experiment=stage1
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..errors import OneDCError
from .config import run_config
from .launcher import export_torch_distributed_env


@hydra.main(config_path="pkg://onedc.configs", config_name="train", version_base="1.3")
def run(cfg: DictConfig) -> None:
    export_torch_distributed_env()  # inside a submitit job: as `accelerate launch` would
    try:
        settings = run_config(cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if settings.stage == "stage2":
            from .stage2 import train
        else:
            from .stage1 import train
        state = train(settings, run_dir)
    except OneDCError as e:
        print(f"onedc-train: error: {e}", file=sys.stderr)
        sys.exit(1)
    if "stopped_by" in state:  # checkpointed; the status of a process ended by that signal
        sys.exit(128 + signal.Signals[state["stopped_by"]])


def main() -> None:
    run()
