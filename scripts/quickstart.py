"""Quickstart: compress and decompress the scikit-image sample photos with the tiny OneDC
on the CPU, printing bits, bpp, PSNR and a round-trip check of every file.

The model is the deterministically seeded, untrained onedc_tiny until the Stage I trainer
lands, so the rates and PSNR show the pipeline at work, not compression quality. Files and
decoded PNGs go to outputs/quickstart/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import skimage.data
import torch
from PIL import Image

from onedc import OneDC, load_model_config
from onedc.bitstream import read
from onedc.image_io import load_image, save_image, to_uint8

SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "camera")  # camera is grayscale


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of two (3, H, W) images in [-1, 1], after rounding both to 8 bits."""
    mse = ((torch.from_numpy(to_uint8(x)).float() - torch.from_numpy(to_uint8(y)).float()) ** 2).mean()
    return float(10 * torch.log10(255**2 / mse))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/quickstart", help="output folder")
    parser.add_argument("--model", default="onedc_tiny", help="model config")
    args = parser.parse_args()
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)

    model = OneDC.untrained(load_model_config(args.model)).eval()
    print(f"model {model.identity.describe()}: untrained (seed {model.config.seed}), on the CPU")
    print(f"{'image':<10} {'size':>9} {'bytes':>6} {'bits':>7} {'bpp':>7} {'y B':>6} {'z B':>4} {'PSNR':>6} {'enc ms':>7} {'dec ms':>7}  round trip")
    failures = 0
    for name in SAMPLES:
        png = out / "images" / f"{name}.png"
        Image.fromarray(getattr(skimage.data, name)()).save(png)
        x, notes = load_image(png)
        start = time.perf_counter()
        data, expected = model.encode(x)
        encoded = time.perf_counter()
        rec = model.decode_latents(data)
        image = model.render(rec)
        decoded = time.perf_counter()
        (out / f"{name}.onedc").write_bytes(data)
        save_image(image, out / f"{name}_decoded.png")
        _, y_stream, z_stream = read(data)
        h, w = x.shape[-2:]
        ok = torch.equal(rec.y_hat, expected.y_hat) and image.shape == x.shape
        failures += not ok
        print(
            f"{name:<10} {f'{w}x{h}':>9} {len(data):>6} {8 * len(data):>7} {8 * len(data) / (h * w):>7.4f} "
            f"{len(y_stream):>6} {len(z_stream):>4} {psnr(x, image):>6.2f} {1000 * (encoded - start):>7.0f} "
            f"{1000 * (decoded - encoded):>7.0f}  {'y_hat identical' if ok else 'MISMATCH'}"
            + (f"  ({'; '.join(notes)})" if notes else "")
        )
    print(f"\nfiles in {out}/; the same from the command line:")
    print(f"  onedc compress {out}/images/chelsea.png chelsea.onedc && onedc decompress chelsea.onedc chelsea.png")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
