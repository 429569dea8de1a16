"""Benchmark: y-stream size of real files against the entropy model's two estimates (ours, with
sigma >= 0.11, and the official eval-mode one, sigma >= 1e-5), and a z-only file's size.

Models: the tiny model with its entropy model fitted to the sample photos (the fit of the test
suite, tests/helpers.py), and the untrained full-size model (random weights; its scales are
noise). Prints one line per image. Example: python scripts/bench_rate.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import fit_entropy_model, photo  # noqa: E402  (the test suite's fitted tiny model)
from onedc import OneDC, load_model_config  # noqa: E402
from onedc.bitstream import bits_per_pixel, read  # noqa: E402
from onedc.image_io import from_uint8  # noqa: E402


def report(model: OneDC, name: str, image: torch.Tensor) -> None:
    data = model.compress(image)
    _, y, z = read(data)
    est = model.estimate_bits(image)
    print(f"{model.config.name} {name}: file {len(data)} B (y {len(y)} B, z {len(z)} B); y-stream bits {8 * len(y)}, "
          f"estimate ours {est['y']:.0f} (file {100 * (8 * len(y) / est['y'] - 1):+.2f}%), "
          f"official {est['y_official']:.0f} ({100 * (est['y_official'] / est['y'] - 1):+.2f}% vs ours)")


def main() -> None:
    torch.set_num_threads(1)
    coffee = np.asarray(Image.fromarray(skimage.data.coffee()).resize((768, 512), Image.BICUBIC))
    coffee = from_uint8(coffee)
    tiny = OneDC.untrained(load_model_config("onedc_tiny"))
    tiny.lmbda = 4.6
    tiny = fit_entropy_model(tiny, [photo(n) for n in ("astronaut", "coffee", "chelsea", "rocket")])
    for name, image in [("coffee 768x512", coffee), ("astronaut 512x512", photo("astronaut")), ("rocket 640x427", photo("rocket"))]:
        report(tiny, name, image)
    z_only = OneDC.untrained(load_model_config("onedc_tiny_zonly"))
    data = z_only.compress(coffee)
    print(f"onedc_tiny_zonly coffee 768x512: {len(data)} B, {bits_per_pixel(len(data), 512, 768):.5f} bpp")
    report(OneDC.untrained(load_model_config("onedc_sd15")).eval(), "chelsea 192x320", photo("chelsea")[:, :192, :320])


if __name__ == "__main__":
    main()
