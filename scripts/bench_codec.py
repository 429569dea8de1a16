"""Benchmark: encode and decode time of OneDC (image -> file -> image).

Prints the median wall-clock of `--repeat` runs after one warm-up, per stage, for a random
image of `--size` (WxH). Example: python scripts/bench_codec.py --model onedc_tiny --size 768x512
"""

from __future__ import annotations

import argparse

import torch

from onedc import OneDC, load_model_config
from onedc.eval.complexity import timed
from onedc.model import pad_to_multiple


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="onedc_tiny")
    parser.add_argument("--size", default="768x512", help="WxH")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    w, h = (int(v) for v in args.size.split("x"))
    model = OneDC.untrained(load_model_config(args.model)).to(device).eval()
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = pad_to_multiple(image[None].to(device), 64)

    t_vae, _ = timed(lambda: model.encode_latent(x), args.repeat, device)
    t_enc, data = timed(lambda: model.compress(image), args.repeat, device)
    t_dec, _ = timed(lambda: model.decompress(data), args.repeat, device)
    t_latents, _ = timed(lambda: model.decode_latents(data), args.repeat, device)

    print(f"model {args.model} (untrained), {w}x{h}, device {device}, {torch.get_num_threads()} threads, median of {args.repeat}")
    print(f"  compress (VAE encode + codec + container)  {1000 * t_enc:8.1f} ms   ({len(data)} bytes)")
    print(f"    of which SD VAE encoder                  {1000 * t_vae:8.1f} ms")
    print(f"  decompress (codec + generator + VAE dec.)  {1000 * t_dec:8.1f} ms")
    print(f"    of which file -> y_hat, c                {1000 * t_latents:8.1f} ms")


if __name__ == "__main__":
    main()
