"""`onedc-eval`: the paper's evaluation from the command line.

    onedc-eval run --checkpoint 'RUN/lmbda*/checkpoints/best' --dataset kodak_crop512 --root /data/kodak
    accelerate launch --num_processes 8 -m onedc.eval run ...   # the images split over 8 GPUs
    onedc-eval bdrate --dataset mscoco30k --anchor OneDC [--results out/mscoco30k/results.json] [--json F]
    onedc-eval report --dir out/kodak_crop512           # rewrite the reports from the summaries
    onedc-eval complexity --checkpoint CKPT --device cuda --sizes 512 1024
    onedc-eval list                                     # settings, datasets, shipped baselines
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_common import (
    add_version_argument,
    add_weights_argument,
    default_device,
    import_model_libraries,
    load_model,
    non_negative_int,
    positive_int,
)
from ..errors import OneDCError

PROGRAM = "onedc-eval"

DATASET_HELP = ("a setting: kodak, kodak_crop512, clic2020, clic2020_crop768, div2k, mscoco30k, "
                "or folder (any image folder, full resolution or --crop S)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="evaluate checkpoints (one rate point each) on a dataset setting")
    run.add_argument("--checkpoint", nargs="*", default=[],
                     help="checkpoint folders (ours or imported) or globs of them, one rate point each; none: the untrained --model")
    run.add_argument("--model", help="config of the untrained model used without --checkpoint (default: onedc_tiny)")
    run.add_argument("--dataset", required=True, help=DATASET_HELP)
    run.add_argument("--root", required=True, help="the dataset's folder")
    run.add_argument("--file-list", help="image list (required for mscoco30k; optional for folder)")
    run.add_argument("--crop", type=int, help="folder only: resize & center-crop to this size")
    run.add_argument("--fid-patch", type=int, default=256, help="folder only: FID/KID patch size (0: no FID)")
    run.add_argument("--out", default="outputs/eval", help="output root (one folder per setting)")
    run.add_argument("--name", default="onedc (ours)", help="the curve these checkpoints belong to (e.g. stage1, stage2)")
    run.add_argument("--metrics", default="psnr,ms-ssim,lpips,dists,fid", help="comma-separated subset")
    run.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--precision", choices=("bf16", "fp32"), help="VAE and generator (default: bf16 on a GPU, else fp32)")
    run.add_argument("--allow-partial", action="store_true", help="evaluate an incomplete dataset (with a warning)")
    run.add_argument("--limit", type=int, help="only the first N images (quick checks)")
    run.add_argument("--show", type=int, default=4, help="side-by-side crops in the HTML report")
    run.add_argument("--batch-size", type=positive_int, default=1, help="images of one size coded together (per process)")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the U-Net and VAE decoder (each image size and batch size compiles once; "
                          "pixels within one 8-bit step of eager; the summaries record the compile time apart from decode_s)")
    run.add_argument("--workers", type=non_negative_int, default=2, help="image-reading processes per evaluating process")
    add_weights_argument(run)

    bd = sub.add_parser("bdrate", help="BD-rate of the shipped baselines (and our results) against an anchor")
    bd.add_argument("--dataset", required=True, help="baseline folder: " + DATASET_HELP.split(": ", 1)[1].split(", or")[0])
    bd.add_argument("--anchor", default="OneDC")
    bd.add_argument("--results", nargs="*", default=[], help="our results.json files")
    bd.add_argument("--method", default="cubic", choices=("cubic", "pchip", "akima"))
    bd.add_argument("--metrics", help="comma-separated (default: LPIPS, DISTS, FID where the anchor has them)")
    bd.add_argument("--json", help="also write the table as JSON")

    report = sub.add_parser("report", help="rewrite results.json, tables, plots and HTML of an evaluated setting")
    report.add_argument("--dir", required=True, help="the setting's output folder, e.g. outputs/eval/kodak")

    cx = sub.add_parser("complexity", help="parameters, encode/decode time per stage and decode memory (Table A layout)")
    cx.add_argument("--checkpoint", help="checkpoint folder; none: the untrained --model")
    cx.add_argument("--model", help="config of the untrained model used without --checkpoint (default: onedc_sd15)")
    cx.add_argument("--sizes", nargs="+", default=["512", "1024"], help="square sides (512) or WxH (768x512); Table A: 1024")
    cx.add_argument("--repeat", type=int, default=5)
    cx.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    cx.add_argument("--precision", choices=("bf16", "fp32"), help="VAE and generator (default: bf16 on a GPU, else fp32)")
    cx.add_argument("--compile", action="store_true", help="torch.compile the U-Net and VAE decoder (compile time reported apart)")
    cx.add_argument("--json", help="also write the measurement as JSON")
    add_weights_argument(cx)

    sub.add_parser("list", help="settings, their protocols and the shipped baselines")
    return parser


def _load(checkpoint: str | None, model: str | None, weights: dict, device: str, compile_decoder: bool):
    """One rate point's model on `device`, loaded when the runner first needs it."""
    net = load_model(PROGRAM, checkpoint, model, "onedc_tiny", weights).to(device)
    return net.compile_decoder() if compile_decoder else net


def _setting(args):
    from .datasets import SETTINGS, Setting
    from .metrics import Protocol

    if args.dataset == "folder":
        protocols = (Protocol(f"fid{args.fid_patch}", args.fid_patch, 2, "folder: grid plus the half-patch-shifted grid"),) if args.fid_patch else ()
        return Setting("folder" if args.crop is None else f"folder_crop{args.crop}", "folder", args.crop, protocols)
    if args.dataset not in SETTINGS:
        raise OneDCError(f"unknown dataset setting {args.dataset!r}; {DATASET_HELP}")
    return SETTINGS[args.dataset]


def expand_checkpoints(patterns: list[str]) -> list[str]:
    """Checkpoint folders from arguments that may be globs (quoted, so the shell leaves them):
    each glob's matches in sorted order; a glob without a match is an error."""
    import glob

    folders = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise OneDCError(f"--checkpoint {pattern!r} matches nothing")
            folders += matches
        else:
            folders.append(pattern)
    return list(dict.fromkeys(folders))


def _run(args) -> int:
    import_model_libraries()
    from functools import partial

    from accelerate import PartialState

    from .. import weights as external
    from .datasets import load_dataset
    from .runner import MetricSuite, evaluate

    checkpoints = expand_checkpoints(args.checkpoint) or [None]
    device = args.device or default_device()
    state = PartialState(cpu=device == "cpu")  # under `accelerate launch`: this process's rank and GPU
    device = str(state.device) if state.num_processes > 1 else device
    weights = external.load_weight_paths(args.weights)
    setting = _setting(args)
    paths = load_dataset(setting.dataset, args.root, args.file_list, allow_partial=args.allow_partial)
    if args.limit:
        paths = paths[: args.limit]
    suite = MetricSuite.build(setting, tuple(m.strip() for m in args.metrics.split(",") if m.strip()), weights, device)
    rate_points = [partial(_load, c, args.model, weights, device, args.compile) for c in checkpoints]
    precision = args.precision or ("bf16" if device.startswith("cuda") else "fp32")
    written = evaluate(rate_points, setting, paths, Path(args.out), suite, args.name, args.show, precision=precision,
                       batch_size=args.batch_size, workers=args.workers)
    if written:  # the main process
        print(written["markdown"].read_text())
        print("written: " + ", ".join(str(p) for p in written.values()))
    return 0


def _complexity(args) -> int:
    import_model_libraries()
    from .. import weights as external
    from .complexity import format_profile, format_table_a, measure

    weights = external.load_weight_paths(args.weights)
    device = args.device or default_device()
    model = load_model(PROGRAM, args.checkpoint, args.model, "onedc_sd15", weights).to(device)
    precision = args.precision or ("bf16" if device.startswith("cuda") else "fp32")
    measured = measure(model, args.sizes, args.repeat, precision, compile_decoder=args.compile)
    print(format_table_a(measured))
    print(f"Per-stage profile (ms; {measured['device']}, {measured['precision']}, median of {measured['repeat']}):\n")
    print(format_profile(measured))
    print(json.dumps(measured))
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=1) + "\n")
    return 0


def _list() -> int:
    from . import baselines
    from .datasets import DATASETS, SETTINGS

    for s in SETTINGS.values():
        fid = ", ".join(f"{p.name} ({p.patch or 'whole'}/{p.split})" for p in s.protocols) or "no FID/KID"
        shipped = ", ".join(baselines.methods(s.name)) if s.name in baselines.datasets() else "none"
        print(f"{s.name:<18} {DATASETS[s.dataset].count or 'any':>5} images, {s.note}; {fid}; baselines: {shipped}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "bdrate":
            from .bd_rate import bdrate_command

            metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
            print(bdrate_command(args.dataset, args.anchor, args.results, args.method, args.json, metrics))
            return 0
        if args.command == "report":
            from .runner import write_reports

            for path in write_reports(Path(args.dir)).values():
                print(path)
            return 0
        if args.command == "complexity":
            return _complexity(args)
        return _list()
    except OneDCError as error:
        print(f"onedc-eval: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
