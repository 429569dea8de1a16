"""The `onedc` command: compress, decompress, info."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from . import __version__
from .errors import OneDCError

_TINY_DEFAULT = "onedc_tiny"


def _device(name: str | None) -> str:
    import torch

    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _warn(message: str) -> None:
    print(f"onedc: warning: {message}", file=sys.stderr)


def _load_model(model: str | None, checkpoint: str | None, device: str):
    from .config import load_model_config
    from .model import OneDC

    if checkpoint:
        net = OneDC.from_pretrained(checkpoint)
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


def _write_atomically(path: Path, write) -> None:
    """Call write(tmp_path) and rename the result onto `path`, so no partial file remains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_compress(args: argparse.Namespace) -> None:
    from .image_io import load_image

    x, notes = load_image(args.input)
    for note in notes:
        print(f"onedc: note: {args.input}: {note}", file=sys.stderr)
    net = _load_model(args.model, args.checkpoint, _device(args.device))
    data = net.compress(x)
    output = Path(args.output)
    _write_atomically(output, lambda p: p.write_bytes(data))
    h, w = x.shape[-2:]
    print(f"{output}: {len(data)} bytes, {8 * len(data)} bits, {8 * len(data) / (h * w):.5f} bpp ({w}x{h}, {net.identity.describe()})")


def cmd_decompress(args: argparse.Namespace) -> None:
    from PIL import Image

    from . import bitstream
    from .config import model_config_names

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
    net = _load_model(None if args.checkpoint else header.model.name, args.checkpoint, _device(args.device))
    rec = net.decode_latents(data)
    if latents_only:
        from safetensors.torch import save_file

        tensors = {"y_hat": rec.y_hat.cpu().contiguous(), "c": rec.c.cpu().contiguous()}
        meta = {"height": str(rec.height), "width": str(rec.width), "model": rec.model.describe()}
        _write_atomically(output, lambda p: save_file(tensors, p, metadata=meta))
        print(f"{output}: y_hat {tuple(rec.y_hat.shape)}, c {tuple(rec.c.shape)} for a {rec.width}x{rec.height} image")
        return
    from .image_io import save_image

    image = net.render(rec)
    _write_atomically(output, lambda p: save_image(image, p, format=image_format))
    print(f"{output}: {rec.width}x{rec.height} image decoded from {len(data)} bytes ({rec.model.describe()})")


def cmd_info(args: argparse.Namespace) -> None:
    from .config import load_model_config
    from .model import parameter_table

    rows = parameter_table(load_model_config(args.model))
    width = max(len(name) for name, _ in rows)
    print(f"model {args.model}: parameters")
    for name, n in rows:
        print(f"  {name:<{width}}  {n:>13,}")


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
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="decode a .onedc file")
    p.add_argument("input", help="a file written by `onedc compress`")
    p.add_argument("output", help="decoded image (.png, ...), or .safetensors for the latents y_hat and c")
    p.add_argument("--checkpoint", help="checkpoint folder of the model that wrote the file")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("info", help="print the parameter counts of a model config")
    p.add_argument("--model", default="onedc_sd15", help="model config name or YAML file (default: onedc_sd15)")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except OneDCError as e:
        print(f"onedc: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
