"""The `onedc` command: compress, decompress, info."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .atomic import atomic_file
from .errors import OneDCError

_TINY_DEFAULT = "onedc_tiny"
MAX_PIXELS_HELP = ("largest image to code, in pixels after padding to multiples of 64; default: max_pixels of "
                   "configs/limits.yaml (4096x4096), and the estimated memory must fit the device; a given N alone applies")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels, got {text}")
    return value


def _device(name: str | None) -> str:
    import torch

    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _warn(message: str) -> None:
    print(f"onedc: warning: {message}", file=sys.stderr)


def _load_model(model: str | None, checkpoint: str | None, device: str, weight_overrides: list[str] | None = None):
    from .config import load_model_config
    from .model import OneDC
    from .weights import load_pretrained, load_weight_paths

    if checkpoint:
        net = load_pretrained(checkpoint, load_weight_paths(weight_overrides))
        if model and model != net.config.name:
            _warn(f"--model {model} ignored: the checkpoint holds {net.config.name}")
    else:
        name = model or _TINY_DEFAULT
        net = OneDC.untrained(load_model_config(name))
        _warn(
            f"no --checkpoint given: using an untrained {net.config.name} (seed {net.config.seed}); "
            "the file shows the format, not compression quality"
        )
    return net.to(device).eval()


def cmd_compress(args: argparse.Namespace) -> None:
    from .image_io import load_image

    x, notes = load_image(args.input, args.max_pixels)
    for note in notes:
        print(f"onedc: note: {args.input}: {note}", file=sys.stderr)
    net = _load_model(args.model, args.checkpoint, _device(args.device), args.weights)
    data = net.compress(x, args.max_pixels)
    output = Path(args.output)
    with atomic_file(output) as tmp:
        tmp.write_bytes(data)
    h, w = x.shape[-2:]
    print(f"{output}: {len(data)} bytes, {8 * len(data)} bits, {8 * len(data) / (h * w):.5f} bpp ({w}x{h}, {net.identity.describe()})")


def cmd_decompress(args: argparse.Namespace) -> None:
    from PIL import Image

    from . import bitstream
    from .config import model_config_names
    from .limits import check_size

    output = Path(args.output)
    latents_only = output.suffix == ".safetensors"
    image_format = Image.registered_extensions().get(output.suffix.lower())
    if not latents_only and image_format is None:
        raise OneDCError(f"{output}: unknown output type; use an image suffix (.png, ...) or .safetensors for the latents")
    try:
        data = Path(args.input).read_bytes()
    except OSError as e:
        raise OneDCError(f"cannot read {args.input}: {e}") from e
    header, _, _ = bitstream.read(data)
    if not args.checkpoint and header.model.name not in model_config_names():
        raise OneDCError(f"{args.input} was written by {header.model.describe()}: pass its --checkpoint")
    device = _device(args.device)
    check_size(header.model.name, "decompress", header.height, header.width, device, args.max_pixels)  # before loading the model
    net = _load_model(None if args.checkpoint else header.model.name, args.checkpoint, device, args.weights)
    rec = net.decode_latents(data, args.max_pixels)
    if latents_only:
        from safetensors.torch import save_file

        tensors = {"y_hat": rec.y_hat.cpu().contiguous(), "c": rec.c.cpu().contiguous()}
        meta = {"height": str(rec.height), "width": str(rec.width), "model": rec.model.describe()}
        with atomic_file(output) as tmp:
            save_file(tensors, tmp, metadata=meta)
        print(f"{output}: y_hat {tuple(rec.y_hat.shape)}, c {tuple(rec.c.shape)} for a {rec.width}x{rec.height} image")
        return
    from .image_io import save_image

    image = net.render(rec)
    with atomic_file(output) as tmp:
        save_image(image, tmp, format=image_format)
    print(f"{output}: {rec.width}x{rec.height} image decoded from {len(data)} bytes ({rec.model.describe()})")


def cmd_info(args: argparse.Namespace) -> None:
    from .config import load_model_config
    from .model import parameter_table

    rows = parameter_table(load_model_config(args.model))
    width = max(len(name) for name, _ in rows)
    print(f"model {args.model}: parameters")
    for name, n in rows:
        print(f"  {name:<{width}}  {n:>13,}")


def cmd_weights_check(args: argparse.Namespace) -> int:
    from .weights import EXTERNAL_WEIGHTS, load_weight_paths, locate, missing_message

    paths = load_weight_paths(args.path)
    names = args.names or list(EXTERNAL_WEIGHTS)
    unknown = [n for n in names if n not in EXTERNAL_WEIGHTS]
    if unknown:
        raise OneDCError(f"unknown weights {', '.join(unknown)}; known: {', '.join(EXTERNAL_WEIGHTS)}")
    width = max(len(n) for n in names)
    missing = 0
    print(f"{'name':<{width}}  status   details")
    for name in names:
        found, searched = locate(name, paths)
        if found:
            print(f"{name:<{width}}  found    {found}")
        else:
            missing += 1
            weight = EXTERNAL_WEIGHTS[name]
            print(f"{name:<{width}}  missing  {weight.description}")
            print(f"{'':<{width}}           looked in: {'; '.join(searched)}")
            print(f"{'':<{width}}           get it:    {weight.how_to_get(name)}")
    print(f"{len(names) - missing} of {len(names)} found")
    return 1 if missing else 0


def cmd_weights_download(args: argparse.Namespace) -> None:
    from .weights import EXTERNAL_WEIGHTS, download

    for name in args.names:
        if name not in EXTERNAL_WEIGHTS:
            raise OneDCError(f"unknown weights {name}; known: {', '.join(EXTERNAL_WEIGHTS)}")
        print(f"{name}: {download(name)}")


def cmd_import_official(args: argparse.Namespace) -> None:
    from .config import load_model_config
    from .official import import_official

    report = import_official(args.source, args.output, load_model_config(args.model), args.lmbda)
    print(f"imported {report.source} (lambda {report.lmbda:g}) -> {report.output}")
    print(f"  {'file':<22} {'keys':>6} {'parameters':>14} {'trainable':>14} {'frozen (bundled)':>17}")
    for f in report.files:
        print(f"  {f.file:<22} {f.keys:>6} {f.parameters:>14,} {f.trainable:>14,} {f.frozen:>17,}")
    for name, reason in report.ignored:
        print(f"  ignored {name}: {reason}")
    print(f"use it: onedc compress IMAGE OUT.onedc --checkpoint {report.output}   (needs the SD2.1 VAE: onedc weights check sd21_vae)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onedc", description="OneDC image codec")
    parser.add_argument("--version", action="version", version=f"onedc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="compress an image into a .onedc file")
    p.add_argument("input", help="image file (PNG, JPEG, WebP, ...)")
    p.add_argument("output", help="output file")
    p.add_argument("--model", help=f"model config name or YAML file (default without checkpoint: {_TINY_DEFAULT})")
    p.add_argument("--checkpoint", help="checkpoint folder (model.safetensors + onedc.json)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--weights", action="append", metavar="NAME=PATH", help="local path of an external weight (repeatable)")
    p.add_argument("--max-pixels", type=_positive, metavar="N", help=MAX_PIXELS_HELP)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="decode a .onedc file")
    p.add_argument("input", help="a file written by `onedc compress`")
    p.add_argument("output", help="decoded image (.png, ...), or .safetensors for the latents y_hat and c")
    p.add_argument("--checkpoint", help="checkpoint folder of the model that wrote the file")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--weights", action="append", metavar="NAME=PATH", help="local path of an external weight (repeatable)")
    p.add_argument("--max-pixels", type=_positive, metavar="N", help=MAX_PIXELS_HELP)
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("info", help="print the parameter counts of a model config")
    p.add_argument("--model", default="onedc_sd15", help="model config name or YAML file (default: onedc_sd15)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("import-official", help="convert a rate-point folder of the official OneDC release into an onedc checkpoint")
    p.add_argument("source", help="official folder with model.safetensors (generator) and model_1.safetensors (codec)")
    p.add_argument("output", help="checkpoint folder to write")
    p.add_argument("--lmbda", type=float, help="rate point of the release (default: read from the folder name, e.g. lambda4.6)")
    p.add_argument("--model", default="onedc_sd15", help="model config of the release's architecture (default: onedc_sd15)")
    p.set_defaults(func=cmd_import_official)

    weights = sub.add_parser("weights", help="external weights: check where they are, download them")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    p = wsub.add_parser("check", help="list every external weight: found where, or how to get it (exit 1 if any is missing)")
    p.add_argument("names", nargs="*", help="weights to check (default: all)")
    p.add_argument("--path", action="append", metavar="NAME=PATH", help="local path of a weight (repeatable)")
    p.set_defaults(func=cmd_weights_check)
    p = wsub.add_parser("download", help="download weights into the HF cache / TORCH_HOME (not with HF_HUB_OFFLINE)")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_weights_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except OneDCError as e:
        print(f"onedc: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
