"""The `onedc` command: compress and decompress images, import the official release, print a
model's parameter counts, and check or download external weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .atomic import atomic_file
from .cli_common import add_version_argument, add_weights_argument, default_device, import_model_libraries, load_model, positive_int
from .errors import OneDCError

PROGRAM = "onedc"
TINY_DEFAULT = "onedc_tiny"
MAX_PIXELS_HELP = ("largest image to code, in pixels after padding to multiples of 64; default: max_pixels of "
                   "configs/limits.yaml (4096x4096), and the estimated memory must fit the device; a given N alone applies")


def _load_model(args: argparse.Namespace, model: str | None, default_model: str, decoding: bool):
    """The model to code with, on --device, holding only what its direction uses, whose
    unused weights are never read (`OneDC.from_pretrained(role=...)`). A decoder keeps its
    frozen weights in bf16 on a GPU and is compiled with --compile; an encoder has no h_sem,
    g_s, generator or VAE decoder, and needs no U-Net weights."""
    import torch

    from .weights import load_weight_paths

    device = args.device or default_device()
    frozen_dtype = torch.bfloat16 if decoding and device.startswith("cuda") else torch.float32
    net = load_model(PROGRAM, args.checkpoint, model, default_model, load_weight_paths(args.weights),
                     "decoder" if decoding else "encoder", frozen_dtype).to(device)
    return net.compile_decoder() if decoding and args.compile else net


def _batches(items: list, key, size: int) -> list[list]:
    """Consecutive runs of at most `size` items with the same key(item), in input order."""
    batches: list[list] = []
    for item in items:
        if batches and len(batches[-1]) < size and key(batches[-1][0]) == key(item):
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def _progress(total: int, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=total < 2)


def cmd_compress(args: argparse.Namespace) -> None:
    import_model_libraries()
    from .bitstream import bits_per_pixel
    from .image_io import load_image

    source, output = Path(args.input), Path(args.output)
    if source.is_dir():
        return _compress_folder(source, output, args)
    x, notes = load_image(source, args.max_pixels)
    for note in notes:
        print(f"onedc: note: {source}: {note}", file=sys.stderr)
    net = _load_model(args, args.model, TINY_DEFAULT, decoding=False)
    data = net.compress(x, args.max_pixels)
    with atomic_file(output) as tmp:
        tmp.write_bytes(data)
    h, w = x.shape[-2:]
    print(f"{output}: {len(data)} bytes, {8 * len(data)} bits, {bits_per_pixel(len(data), h, w):.5f} bpp ({w}x{h}, {net.identity.describe()})")


def _compress_folder(source: Path, output: Path, args: argparse.Namespace) -> None:
    """Every image of `source` (not recursive) -> output/<stem>.onedc, images of one size in
    batches of --batch; each file is what compressing the image alone writes."""
    from .image_io import IMAGE_SUFFIXES, load_image

    paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise OneDCError(f"{source}: no images found")
    sizes = {path: _image_size(path) for path in paths}
    paths.sort(key=sizes.get)  # one size per batch
    net = _load_model(args, args.model, TINY_DEFAULT, decoding=False)

    def load(path: Path):
        x, notes = load_image(path, args.max_pixels)
        for note in notes:
            print(f"onedc: note: {path}: {note}", file=sys.stderr)
        return x

    total = 0
    with _progress(len(paths), "image") as bar:
        for batch in _batches(paths, sizes.get, args.batch):
            for path, data in zip(batch, net.compress([load(p) for p in batch], args.max_pixels)):
                with atomic_file(output / f"{path.stem}.onedc") as tmp:
                    tmp.write_bytes(data)
                total += len(data)
            bar.update(len(batch))
    print(f"{output}: {len(paths)} files, {total} bytes ({net.identity.describe()})")


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image's header; an unreadable file raises load_image's error."""
    from PIL import Image

    from .image_io import load_image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - load_image says what is wrong with the file
        load_image(path)
        raise


def cmd_decompress(args: argparse.Namespace) -> None:
    import_model_libraries()
    from PIL import Image

    from . import bitstream
    from .config import model_config_names
    from .limits import check_size

    source, output = Path(args.input), Path(args.output)
    if source.is_dir():
        return _decompress_folder(source, output, args)
    latents_only = output.suffix == ".safetensors"
    image_format = Image.registered_extensions().get(output.suffix.lower())
    if not latents_only and image_format is None:
        raise OneDCError(f"{output}: unknown output type; use an image suffix (.png, ...) or .safetensors for the latents")
    data = _read(source)
    header, _, _ = bitstream.read(data)
    if not args.checkpoint and header.model.name not in model_config_names():
        raise OneDCError(f"{source} was written by {header.model.describe()}: pass its --checkpoint")
    device = args.device or default_device()
    check_size(header.model.name, "decompress", header.height, header.width, device, args.max_pixels)  # before loading the model
    net = _load_model(args, None, header.model.name, decoding=True)  # without --checkpoint: the config the file names
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

    compile_s = net.compile_for(data, args.max_pixels)
    image = net.render(rec)
    with atomic_file(output) as tmp:
        save_image(image, tmp, format=image_format)
    print(f"{output}: {rec.width}x{rec.height} image decoded from {len(data)} bytes ({rec.model.describe()})"
          + _compile_note(net, compile_s))


def _compile_note(net, compile_s: float) -> str:
    """What a compiled decoder spent compiling (not part of decoding), for the closing line."""
    return f"; compiling the decoder took {compile_s:.1f} s" if net.decoder_compiled else ""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise OneDCError(f"cannot read {path}: {e}") from e


def _decompress_folder(source: Path, output: Path, args: argparse.Namespace) -> None:
    """Every .onedc file of `source` -> output/<stem>.png, files of one image size decoded in
    batches of --batch. All files must come from one model (the checkpoint's, or one
    untrained config)."""
    from . import bitstream
    from .image_io import save_image
    from .limits import check_size

    paths = sorted(source.glob("*.onedc"))
    if not paths:
        raise OneDCError(f"{source}: no .onedc files found")
    headers = {path: bitstream.read(_read(path))[0] for path in paths}
    models = {h.model.describe() for h in headers.values()}
    if len(models) > 1:
        raise OneDCError(f"{source} holds files of {len(models)} models ({'; '.join(sorted(models))}): decode one model's files at a time")
    model_name = next(iter(headers.values())).model.name
    device = args.device or default_device()
    for header in headers.values():  # before loading the model
        check_size(model_name, "decompress", header.height, header.width, device, args.max_pixels)
    net = _load_model(args, None, model_name, decoding=True)
    paths.sort(key=lambda p: (headers[p].height, headers[p].width))
    compile_s = 0.0
    with _progress(len(paths), "image") as bar:
        for batch in _batches(paths, lambda p: (headers[p].height, headers[p].width), args.batch):
            files = [_read(p) for p in batch]
            compile_s += net.compile_for(files, args.max_pixels)
            for path, image in zip(batch, net.decompress(files, args.max_pixels)):
                with atomic_file(output / f"{path.stem}.png") as tmp:
                    save_image(image, tmp, format="PNG")
            bar.update(len(batch))
    print(f"{output}: {len(paths)} images decoded ({net.identity.describe()})" + _compile_note(net, compile_s))


def cmd_info(args: argparse.Namespace) -> None:
    from .config import load_model_config
    from .model import parameter_table

    rows = parameter_table(load_model_config(args.model))
    width = max(len(name) for name, _ in rows)
    print(f"model {args.model}: parameters")
    for name, n in rows:
        print(f"  {name:<{width}}  {n:>13,}")


def cmd_weights_check(args: argparse.Namespace) -> int:
    from .weights import EXTERNAL_WEIGHTS, load_weight_paths, locate

    paths = load_weight_paths(args.weights)
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
    rate = "z-only, no lambda" if report.lmbda is None else f"lambda {report.lmbda:g}"
    print(f"imported {report.source} ({rate}) -> {report.output}")
    print(f"  {'file':<22} {'keys':>6} {'parameters':>14} {'trainable':>14} {'frozen (bundled)':>17}")
    for f in report.files:
        print(f"  {f.file:<22} {f.keys:>6} {f.parameters:>14,} {f.trainable:>14,} {f.frozen:>17,}")
    for name, reason in report.ignored:
        print(f"  ignored {name}: {reason}")
    print(f"use it: onedc compress IMAGE OUT.onedc --checkpoint {report.output}   (needs the SD2.1 VAE: onedc weights check sd21_vae)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="OneDC image codec")
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="compress an image into a .onedc file (or a folder of images into a folder)")
    p.add_argument("input", help="image file (PNG, JPEG, WebP, ...) or a folder of them")
    p.add_argument("output", help="output file (a folder for a folder input)")
    p.add_argument("--batch", type=int, default=8, help="folder input: images of one size coded together (default: 8)")
    p.add_argument("--model", help=f"model config name or YAML file (default without checkpoint: {TINY_DEFAULT})")
    p.add_argument("--checkpoint", help="checkpoint folder (model.safetensors + onedc.json)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_weights_argument(p)
    p.add_argument("--max-pixels", type=positive_int, metavar="N", help=MAX_PIXELS_HELP)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="decode a .onedc file")
    p.add_argument("input", help="a file written by `onedc compress`, or a folder of them")
    p.add_argument("output", help="decoded image (.png, ...), or .safetensors for the latents y_hat and c; a folder (PNGs) for a folder input")
    p.add_argument("--batch", type=int, default=8, help="folder input: files of one image size decoded together (default: 8)")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net and the VAE decoder (pays off over many images of one size; "
                   "each image size and batch size compiles once, before its decode, and the compile time is printed)")
    p.add_argument("--checkpoint", help="checkpoint folder of the model that wrote the file")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_weights_argument(p)
    p.add_argument("--max-pixels", type=positive_int, metavar="N", help=MAX_PIXELS_HELP)
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("info", help="print the parameter counts of a model config")
    p.add_argument("--model", default="onedc_sd15", help="model config name or YAML file (default: onedc_sd15)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("import-official", help="convert a rate-point folder of the official OneDC release into an onedc checkpoint")
    p.add_argument("source", help="official folder with model.safetensors (generator) and model_1.safetensors (codec)")
    p.add_argument("output", help="checkpoint folder to write")
    p.add_argument("--lmbda", type=float, help="rate point of the release (default: read from the folder name, e.g. lambda4.6)")
    p.add_argument("--model", default="onedc_sd15",
                   help="model config of the release's architecture (default: onedc_sd15; onedc_sd15_zonly for the z-only exlow_bpp0034 folder)")
    p.set_defaults(func=cmd_import_official)

    weights = sub.add_parser("weights", help="external weights: check where they are, download them")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    p = wsub.add_parser("check", help="list every external weight: found where, or how to get it (exit 1 if any is missing)")
    p.add_argument("names", nargs="*", help="weights to check (default: all)")
    add_weights_argument(p)
    p.set_defaults(func=cmd_weights_check)
    p = wsub.add_parser("download", help="download weights into the HF cache / TORCH_HOME (not with HF_HUB_OFFLINE)")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_weights_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "batch", 1) < 1:
        parser.error("--batch must be at least 1")
    try:
        return args.func(args) or 0
    except OneDCError as e:
        print(f"onedc: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
