"""Quickstart: train the tiny OneDC on the scikit-image sample photos on the CPU for a few
minutes (Stage I, `experiment=quickstart`), then compress and decompress the photos with the
untrained and the trained model and print bits, bpp and PSNR before and after, with a
bit-exactness check of every file. Everything goes to outputs/quickstart/.

The same training from the command line:  onedc-train experiment=quickstart
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import skimage.data
import torch
from PIL import Image

from onedc import OneDC
from onedc.eval.metrics import psnr
from onedc.image_io import load_image, save_image, to_uint8_tensor
from onedc.train.config import compose
from onedc.train.stage1 import train

PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "camera")
HELD_OUT = {"chelsea", "camera"}  # the quickstart's validation photos, never trained on


def evaluate(model: OneDC, images: dict[str, tuple[torch.Tensor, list[str]]], out: Path) -> dict[str, dict]:
    """Compress and decompress every image; the decoder must rebuild the encoder's latent."""
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, (x, _) in images.items():
        start = time.perf_counter()
        data, expected = model.encode(x)
        rec = model.decode_latents(data)
        image = model.render(rec)
        seconds = time.perf_counter() - start
        (out / f"{name}.onedc").write_bytes(data)
        save_image(image, out / f"{name}.png")
        h, w = x.shape[-2:]
        rows[name] = {
            "size": f"{w}x{h}",
            "bytes": len(data),
            "bpp": 8 * len(data) / (h * w),
            "psnr": psnr(to_uint8_tensor(x), to_uint8_tensor(image)),
            "seconds": seconds,
            "exact": torch.equal(rec.y_hat, expected.y_hat) and image.shape == x.shape,
        }
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/quickstart", help="output folder")
    parser.add_argument("overrides", nargs="*", help="training config overrides, e.g. train.max_steps=100")
    args = parser.parse_args()
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images = {}
    for name in PHOTOS:
        path = out / "images" / f"{name}.png"
        Image.fromarray(getattr(skimage.data, name)()).save(path)
        images[name] = load_image(path)

    run = compose(["experiment=quickstart", *args.overrides])
    before = evaluate(OneDC.untrained(run.model), images, out / "before")
    print(f"training the tiny model for {run.train.max_steps} steps on the CPU (onedc-train experiment=quickstart) ...")
    start = time.perf_counter()
    train(run, out / "train")
    minutes = (time.perf_counter() - start) / 60
    trained = OneDC.from_pretrained(out / "train" / "checkpoints" / "best")
    after = evaluate(trained, images, out / "after")

    print(f"\ntrained in {minutes:.1f} min; best checkpoint: {out / 'train' / 'checkpoints' / 'best'} ({trained.identity.describe()})")
    print(f"{'image':<11} {'size':>9} {'bytes before':>12} {'after':>6} {'bpp before':>10} {'after':>7} {'PSNR before':>11} {'after':>6}  files")
    for name in PHOTOS:
        b, a = before[name], after[name]
        exact = "bit-exact" if b["exact"] and a["exact"] else "MISMATCH"
        notes = (["held out"] if name in HELD_OUT else []) + images[name][1]
        print(f"{name:<11} {b['size']:>9} {b['bytes']:>12} {a['bytes']:>6} {b['bpp']:>10.4f} {a['bpp']:>7.4f} {b['psnr']:>11.2f} {a['psnr']:>6.2f}  {exact}"
              + (f"  ({'; '.join(notes)})" if notes else ""))
    print(f"\nfiles in {out}/; single images from the command line:")
    print(f"  onedc compress {out}/images/chelsea.png chelsea.onedc --checkpoint {out}/train/checkpoints/best")
    print(f"  onedc decompress chelsea.onedc chelsea.png --checkpoint {out}/train/checkpoints/best")
    return 0 if all(r["exact"] for rows in (before, after) for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
