"""Benchmark: throughput of batched coding (images/s) for images of one size.

Compresses `--images` random images of `--size` (WxH) with `OneDC.compress(list)` in batches
of each `--batch`, then decompresses the files with `OneDC.decompress(list)` on a decoding-only
model (frozen weights in bf16 on a GPU); reports images/s (median of `--repeat` passes after a
warm-up pass) per batch size. The per-stage profile of one image is `onedc-eval complexity`.
Example: python scripts/bench_codec.py --model onedc_tiny --size 512x512 --batch 1 8 16
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from onedc import OneDC, load_model_config
from onedc.eval.complexity import parse_size, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="onedc_tiny")
    parser.add_argument("--size", default="512x512", help="WxH")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--images", type=int, default=16, help="images per pass (a multiple of every batch size)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", help="also write the figures as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = parse_size(args.size)
    encoder = OneDC.untrained(load_model_config(args.model)).to(device).eval()
    decoder = copy.deepcopy(encoder).for_decoding(torch.bfloat16 if device.type == "cuda" else torch.float32).to(device)
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=gen) * 2 - 1 for _ in range(args.images)]
    files = encoder.compress(images)
    rows = []
    for batch in args.batch:
        groups = [slice(i, i + batch) for i in range(0, len(images), batch)]
        t_enc, out = timed(lambda: [f for g in groups for f in encoder.compress(images[g])], args.repeat, device)
        assert out == files, "a batch wrote other files than batch 1"
        t_dec, _ = timed(lambda: [x for g in groups for x in decoder.decompress(files[g])], args.repeat, device)
        rows.append({"batch": batch, "compress_images_per_s": round(len(images) / t_enc, 3),
                     "decompress_images_per_s": round(len(images) / t_dec, 3)})
    print(f"model {args.model} (untrained), {w}x{h}, device {device}, {torch.get_num_threads()} threads, "
          f"{args.images} images, median of {args.repeat}")
    print("| batch | compress images/s | decompress images/s |\n|---:|---:|---:|")
    for row in rows:
        print(f"| {row['batch']} | {row['compress_images_per_s']} | {row['decompress_images_per_s']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "size": args.size, "device": str(device), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
