"""`onedc-train`: the Hydra entry point of training (configs/train.yaml).

    onedc-train experiment=quickstart
    onedc-train -m experiment=stage1 train.lmbda=0.6,1.0,1.8,2.9,4.6,7.4,12.2
    onedc-train -m hydra/launcher=slurm experiment=stage1 train.lmbda=0.6,1.0,1.8,2.9,4.6,7.4,12.2   # 7 SLURM jobs
    onedc-train experiment=stage2 train.init_from=outputs/stage1/lmbda4.6/checkpoints/best
    accelerate launch --config_file configs/accelerate/4gpu.yaml -m onedc.train experiment=stage1

Besides Hydra's arguments it takes the options of the other onedc commands: `--version`, and
`--weights NAME=PATH` (repeatable), which becomes the Hydra override `weights.NAME=PATH`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..atomic import free_space_note
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
    except OSError as e:  # e.g. a full disk while writing the logs
        print(f"onedc-train: error: {e}; {free_space_note(Path(HydraConfig.get().runtime.output_dir))}", file=sys.stderr)
        sys.exit(1)
    if "stopped_by" in state:  # checkpointed; the status of a process ended by that signal
        sys.exit(128 + signal.Signals[state["stopped_by"]])


def hydra_arguments(argv: list[str]) -> list[str]:
    """onedc-train's command line with `--weights NAME=PATH` (or `--weights=NAME=PATH`) turned
    into `weights.NAME=PATH` overrides; `--version` prints the version and exits."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    from .. import __version__

    if "--version" in argv:
        print(f"onedc-train {__version__}")
        sys.exit(0)
    names = list(OmegaConf.load(files("onedc.configs.weights") / "default.yaml"))
    out, items = [], iter(argv)
    for arg in items:
        if arg == "--weights":
            value = next(items, "")
        elif arg.startswith("--weights="):
            value = arg[len("--weights="):]
        else:
            out.append(arg)
            continue
        name, sep, path = value.partition("=")
        if not sep or name not in names:
            print(f"onedc-train: error: --weights takes NAME=PATH with NAME one of {', '.join(names)}; got {value!r}", file=sys.stderr)
            sys.exit(2)
        out.append(f"weights.{name}={path}")
    return out


def main() -> None:
    sys.argv = [sys.argv[0], *hydra_arguments(sys.argv[1:])]
    run()
