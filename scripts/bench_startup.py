"""Benchmark: start-up of the coding commands, wall time and peak memory of `onedc decompress`
and `onedc compress`, each run a fresh process.

--model onedc_tiny (default): a 128x128 image, the untrained tiny model (no checkpoint).
--model onedc_sd15: a 256x256 image, a full-size checkpoint of the untrained model, with its
frozen parts written as the external weight files (the U-Net base as a torch pickle like DMD2's
pytorch_model.bin, float32 as DMD2's or float16 with --unet-dtype, and a diffusers VAE folder;
5.6 GB in --workdir): what loading a real release costs, with random weights.

With --baseline DIR (a checkout of another commit, e.g. `git worktree add /tmp/base HEAD~1`),
the two code trees run interleaved, so both see the same machine load. With --format-2 (full
size), this tree also decodes with the checkpoint's metadata rewritten as format 2 (no decoder
digest: every trainable weight read and verified, as before format 3), the same weight files.
Prints every run and the median per tree and command.
Example: python scripts/bench_startup.py --runs 5 --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import skimage.data
from PIL import Image

HERE = Path(__file__).resolve().parents[1]


def timed_run(tree: Path, args: list[str], folder: Path) -> tuple[float, float]:
    """(wall seconds, peak resident GB) of `python -m onedc.cli ARGS` run in `folder` (`-m`
    puts the working folder first on the path), importing onedc from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "onedc.cli", *args], env=env, cwd=folder,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"onedc {' '.join(args)} failed: {child.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1e6


MAKE_FULL_SIZE_FILES = """
import sys
from pathlib import Path
import torch
from onedc import OneDC, load_model_config
folder = Path(sys.argv[1])
model = OneDC.untrained(load_model_config("onedc_sd15"))
model.lmbda = 4.6
base = {k.replace(".base_layer.", "."): v.to(getattr(torch, sys.argv[2])).contiguous() for k, v in model.generator.unet.state_dict().items()
        if ".lora_" not in k and not k.startswith("conv_in.")}
torch.save(base, folder / "dmd2_unet.bin")
model.vae.save_pretrained(folder / "vae")
model.save_pretrained(folder / "ckpt")
"""


def full_size_files(folder: Path, unet_dtype: str) -> list[str]:
    """A full-size checkpoint and its external weights in `folder`, the U-Net base in
    `unet_dtype` (made once, in a process of their own: a child's peak memory counts from its
    parent's at the fork); the options that point the commands at them."""
    if not (folder / "ckpt" / "onedc.json").is_file():
        subprocess.run([sys.executable, "-c", MAKE_FULL_SIZE_FILES, str(folder), unet_dtype], check=True)
    return ["--checkpoint", str(folder / "ckpt"), "--weights", f"dmd2_unet={folder / 'dmd2_unet.bin'}",
            "--weights", f"sd21_vae={folder / 'vae'}", "--device", "cpu"]


AS_FORMAT_2 = """
import json, sys
from pathlib import Path
from onedc.checksums import json_checksum
source, copy = Path(sys.argv[1]), Path(sys.argv[2])
meta = json.loads((source / "onedc.json").read_text())
del meta["decoder_digest"], meta["checksum"]
meta["format_version"] = 2
copy.mkdir(exist_ok=True)
(copy / "onedc.json").write_text(json.dumps({**meta, "checksum": json_checksum(meta)}, indent=2))
if not (copy / "model.safetensors").exists():
    (copy / "model.safetensors").symlink_to(source / "model.safetensors")
"""


def format_2_options(folder: Path, options: list[str]) -> list[str]:
    """`options` with the checkpoint replaced by a format-2 copy of it (its metadata without
    the decoder digest, its weights file linked), made in a process of its own."""
    subprocess.run([sys.executable, "-c", AS_FORMAT_2, str(folder / "ckpt"), str(folder / "ckpt_format_2")], check=True)
    return [str(folder / "ckpt_format_2") if value == str(folder / "ckpt") else value for value in options]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", choices=("onedc_tiny", "onedc_sd15"), default="onedc_tiny")
    parser.add_argument("--baseline", type=Path, help="another checkout, timed interleaved with this one")
    parser.add_argument("--workdir", type=Path, help="where the full-size files are made (kept); default: a temporary folder")
    parser.add_argument("--format-2", action="store_true", help="onedc_sd15: also decompress with the checkpoint as format 2")
    parser.add_argument("--unet-dtype", choices=("float32", "float16"), default="float32",
                        help="onedc_sd15: the dtype of the U-Net stand-in (DMD2's file is float32; a new --workdir per dtype)")
    args = parser.parse_args()
    if args.format_2 and args.model != "onedc_sd15":
        parser.error("--format-2 needs --model onedc_sd15 (the tiny model has no checkpoint)")
    trees = {"this": HERE, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        side = 128 if args.model == "onedc_tiny" else 256
        options = [] if args.model == "onedc_tiny" else full_size_files(work, args.unet_dtype)
        image, file = work / "astronaut.png", work / "astronaut.onedc"
        Image.fromarray(skimage.data.astronaut()).resize((side, side), Image.BICUBIC).save(image)
        commands = {"decompress": ["decompress", str(file), str(work / "out.png"), *options],
                    "compress": ["compress", str(image), str(file), *options]}
        for tree in trees.values():  # the file to decode, and numba's kernel cache of each tree
            timed_run(tree, commands["compress"], work)
        variants = {name: (tree, commands) for name, tree in trees.items()}  # name: (code tree, commands)
        if args.format_2:
            variants["this, format-2 checkpoint"] = (HERE, {"decompress": ["decompress", str(file), str(work / "out_format_2.png"),
                                                                         *format_2_options(work, options)]})
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for run in range(args.runs):
            for name, (tree, argvs) in variants.items():
                for command, argv in argvs.items():
                    seconds, peak = timed_run(tree, argv, work)
                    times.setdefault((name, command), []).append((seconds, peak))
                    print(f"run {run + 1} {name} {command}: {seconds:.2f} s, peak {peak:.2f} GB", flush=True)
    for (name, command), values in times.items():
        seconds = [s for s, _ in values]
        print(f"{args.model} {name} {command}: median {statistics.median(seconds):.2f} s, range {min(seconds):.2f}-"
              f"{max(seconds):.2f} s, peak memory {max(p for _, p in values):.2f} GB over {len(values)} runs")


if __name__ == "__main__":
    main()
