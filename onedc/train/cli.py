"""`onedc-train`: the Hydra entry point of training (configs/train.yaml).

    onedc-train experiment=quickstart
    onedc-train -m experiment=stage1 train.lmbda=0.6,1.0,1.8,2.9,4.6,7.4,12.2
    onedc-train experiment=stage2 train.init_from=outputs/stage1/lmbda4.6/checkpoints/best
    accelerate launch --config_file configs/accelerate/4gpu.yaml -m onedc.train experiment=stage1
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..atomic import free_space_note
from ..errors import OneDCError
from .config import run_config


@hydra.main(config_path="pkg://onedc.configs", config_name="train", version_base="1.3")
def run(cfg: DictConfig) -> None:
    try:
        settings = run_config(cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if settings.stage == "stage2":
            from .stage2 import train
        else:
            from .stage1 import train
        train(settings, run_dir)
    except OneDCError as e:
        print(f"onedc-train: error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # e.g. a full disk while writing the logs
        print(f"onedc-train: error: {e}; {free_space_note(Path(HydraConfig.get().runtime.output_dir))}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    run()
