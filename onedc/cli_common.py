"""What the command-line programs `onedc`, `onedc-eval` and `onedc-train` share: the
`--weights NAME=PATH` and `--version` options, one warning style, and loading the model a
command works with. Importing this module does not import torch, so `--help` stays fast."""

from __future__ import annotations

import argparse
import gc
import sys

from . import __version__

WEIGHTS_HELP = ("local path of an external weight, e.g. sd21_vae=/data/sd21/vae (repeatable; "
                "`onedc weights check` lists the names and where each is looked for)")


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"{parser.prog} {__version__}")


def add_weights_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", action="append", default=[], metavar="NAME=PATH", help=WEIGHTS_HELP)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def warn(program: str, message: str) -> None:
    print(f"{program}: warning: {message}", file=sys.stderr)


def import_model_libraries() -> None:
    """Import onedc.model, and with it torch, diffusers and peft, with the cyclic garbage
    collector paused, then freeze what the imports made (about 870k objects, which live until
    the process exits). Collecting over them cost 1.2 s during the imports and 1.5 s at exit of a
    9 s `onedc decompress` on 2 cores (docs/benchmarks.md). Once per process: a later freeze
    would also pin the garbage cycles of whatever the program made since."""
    if "onedc.model" in sys.modules:
        return
    gc.disable()
    try:
        from . import model  # noqa: F401
    finally:
        gc.freeze()
        gc.enable()


def default_device() -> str:
    """cuda where a GPU is visible, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(program: str, checkpoint: str | None, model_name: str | None, default_model: str,
               weight_paths: dict[str, str | None], role: str = "full", frozen_dtype=None):
    """The model of a command, in eval mode on the CPU: the checkpoint folder's
    (`OneDC.from_pretrained`; a `--model` naming another config is ignored with a warning), or
    without one the untrained, seeded `model_name` (or `default_model`), with a warning; made
    for `role` ("full", "encoder" or "decoder", frozen weights in `frozen_dtype`, default
    float32: `OneDC.for_role`), a checkpoint's unused weights never read."""
    import torch

    from .config import load_model_config
    from .model import OneDC

    frozen_dtype = frozen_dtype or torch.float32
    if checkpoint:
        model = OneDC.from_pretrained(checkpoint, weight_paths, role, frozen_dtype)
        if model_name and model_name != model.config.name:
            warn(program, f"--model {model_name} ignored: the checkpoint holds {model.config.name}")
    else:
        model = OneDC.untrained(load_model_config(model_name or default_model)).for_role(role, frozen_dtype)
        warn(program, f"no --checkpoint given: using an untrained {model.config.name} (seed {model.config.seed}); "
                      "its files and pixels show the pipeline, not compression quality")
    return model.eval()
