"""GPU benchmark of the full OneDC (image -> file -> image) with random full-size weights.

Measures, per image size, encode and decode wall-clock (after warm-up, synchronised, batch 1,
median of --repeat) and the peak GPU memory of a decode at the first size. The generator and
VAE run under bf16 autocast as in the official inference (--precision fp32 to disable); the
entropy-parameter networks always run in exact fixed point on the CPU. Prints a table and one
JSON line. Example (on a GPU machine):
    python scripts/bench_gpu.py --model onedc_sd15 --sizes 512 1024
The paper reports 0.15 s encode / 0.34 s decode at 1024x1024 and 8,038 MB at 512x512.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch
from bench_codec import timed

from onedc import OneDC, load_model_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="onedc_sd15")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="square image sides")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def autocast():
        if args.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def median_time(fn) -> tuple[float, object]:
        with autocast():
            return timed(fn, args.repeat, device)

    build_start = time.perf_counter()
    model = OneDC.untrained(load_model_config(args.model)).to(device).eval()
    build = time.perf_counter() - build_start
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    results = {"model": args.model, "device": device_name, "precision": args.precision, "build_s": round(build, 1), "sizes": {}}
    for i, side in enumerate(args.sizes):
        image = torch.rand(3, side, side, generator=torch.Generator().manual_seed(side)) * 2 - 1
        t_enc, data = median_time(lambda: model.compress(image))
        t_dec, decoded = median_time(lambda: model.decompress(data))
        row = {"encode_s": round(t_enc, 4), "decode_s": round(t_dec, 4), "bytes": len(data), "decoded": list(decoded.shape)}
        if cuda and i == 0:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            with autocast():
                model.decompress(data)
            torch.cuda.synchronize(device)
            row["decode_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
        results["sizes"][side] = row
        print(f"{args.model} {side}x{side} on {device_name} ({args.precision}): encode {t_enc:.3f} s, decode {t_dec:.3f} s, "
              f"{len(data)} bytes" + (f", decode peak {row['decode_peak_mb']} MB" if "decode_peak_mb" in row else ""))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
