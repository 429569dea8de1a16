"""Measure what encoding and decoding cost per pixel: the numbers behind the size guard's
coefficients in configs/limits.yaml.

For each square size, a fresh process builds the untrained model (random weights: the compute
is that of the real model), warms up at 64x64, then calls `compress` (random image) --repeat
times and, in another fresh process, `decompress` of the file it wrote; it records the last
call's time and the peak memory above what the process held before the calls (CPU: peak RSS,
reset through /proc/self/clear_refs; CUDA: torch's peak reserved memory). Then:

    seconds = f + a * pixels + b * pixels^2   least squares, all >= 0 (attention grows with
    bytes   = g + c * pixels + d * pixels^2   pixels^2); g then raised to cover every measurement

Seconds are, on the CPU, one core's: the process CPU time with one thread (wall time on a shared
machine counts the other users' work; the guard divides by the threads in use); on a GPU, wall
time.

Example: python scripts/measure_costs.py --model onedc_tiny --sizes 256 512 1024 2048 --json tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_one(model_name: str, side: int, op: str, device: str, path: Path, precision: str, repeat: int) -> dict:
    """`repeat` calls of `op` (compress: writes `path`; decompress: reads it) in this process: the
    last call's wall and CPU seconds, and the peak memory above what the process held before."""
    import contextlib

    import torch

    from onedc import OneDC, load_model_config

    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(1)  # one core's seconds; the guard divides by the threads in use
    model = OneDC.untrained(load_model_config(model_name)).to(dev).eval()
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    warm = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with autocast:
        model.decompress(model.compress(warm), max_pixels=64 * 64)
    image = torch.rand(3, side, side, generator=torch.Generator().manual_seed(side)) * 2 - 1
    data = path.read_bytes() if op == "decompress" else None

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_reserved(dev)
    else:
        before = rss_bytes()
        reset_peak_rss()
    seconds = cpu_seconds = 0.0
    for _ in range(repeat):  # the last call is timed: the first one at a size pays one-off set-up
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        with autocast:
            if op == "compress":
                data = model.compress(image, max_pixels=side * side)
            else:
                model.decompress(data, max_pixels=side * side)
        sync()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak = torch.cuda.max_memory_reserved(dev) if dev.type == "cuda" else peak_rss_bytes()
    if op == "compress":
        path.write_bytes(data)
    return {"side": side, "pixels": side * side, "op": op, "device": device, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "peak_extra_bytes": max(0, peak - before),
            "threads": torch.get_num_threads(), "bytes": len(data)}


def idle_seconds(row: dict) -> float:
    """The time a call takes on an otherwise idle machine: on a CPU its process CPU time with
    one thread, i.e. one core's seconds (wall time on a shared machine counts the other users'
    work); on a GPU the wall time."""
    return row["seconds"] if row["device"].startswith("cuda") else row["cpu_seconds"]


def fit(rows: list[dict], bytes_per_pixel2: float | None = None) -> dict:
    """Coefficients of one operation's rows, each cost as f + a P + b P^2 with f, a, b >= 0:
    time by least squares; memory by least squares (with b given: b fixed, f and a fitted to the
    rest), its fixed part then raised until it covers every measurement (an upper envelope)."""
    import numpy as np
    from scipy.optimize import nnls

    p = np.array([r["pixels"] for r in rows], dtype=np.float64)
    scale = p.max()  # well-conditioned columns
    basis = np.stack([np.ones_like(p), p / scale, (p / scale) ** 2], axis=1)
    (t0, ta, tb), _ = nnls(basis, np.array([idle_seconds(r) for r in rows]))
    peak = np.array([r["peak_extra_bytes"] for r in rows], dtype=np.float64)
    if bytes_per_pixel2 is None:
        memory, _ = nnls(basis, peak)
    else:
        quadratic = bytes_per_pixel2 * scale**2
        linear, _ = nnls(basis[:, :2], np.maximum(0.0, peak - quadratic * basis[:, 2]))
        memory = np.array([*linear, quadratic])
    memory[0] += max(0.0, float(np.max(peak - basis @ memory)))  # raise the fixed part until it covers every point
    m0, ma, mb = memory
    return {"seconds_fixed": t0, "seconds_per_pixel": ta / scale, "seconds_per_pixel2": tb / scale**2,
            "bytes_fixed": m0, "bytes_per_pixel": ma / scale, "bytes_per_pixel2": mb / scale**2}


def measure(args) -> list[dict]:
    """One row per size and operation, each from a fresh process."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sizes:
            path = Path(tmp) / f"{side}.onedc"
            for op in ("compress", "decompress"):
                out = subprocess.run([sys.executable, __file__, "--model", args.model, "--device", args.device,
                                      "--precision", args.precision, "--repeat", str(args.repeat), "--one", str(side), op, str(path)],
                                     capture_output=True, text=True, check=False)
                if out.returncode:
                    sys.exit(f"{op} at {side}x{side} failed (exit code {out.returncode}):\n{out.stderr[-3000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{args.model} {op:<10} {side}x{side}: {row['seconds']:.3f} s wall, {row['cpu_seconds']:.3f} s CPU, "
                      f"peak +{row['peak_extra_bytes'] / 2**20:.0f} MiB ({row['peak_extra_bytes'] / row['pixels']:.0f} B/pixel)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="onedc_tiny")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="VAE and generator autocast")
    parser.add_argument("--repeat", type=int, default=2, help="calls per size; the last one is timed")
    parser.add_argument("--rows", nargs="+", help="fit the rows of earlier --json files instead of measuring")
    parser.add_argument("--bytes-per-pixel2", action="append", default=[], metavar="OP=D",
                        help="fix the P^2 memory coefficient of compress or decompress (when the sizes cannot resolve it)")
    parser.add_argument("--json", help="also write rows and fit here")
    parser.add_argument("--one", nargs=3, metavar=("SIDE", "OP", "FILE"), help=argparse.SUPPRESS)  # a worker
    args = parser.parse_args()
    if args.one:
        side, op, path = args.one
        print(json.dumps(measure_one(args.model, int(side), op, args.device, Path(path), args.precision, args.repeat)))
        return
    rows = [r for f in args.rows for r in json.loads(Path(f).read_text())["rows"]] if args.rows else measure(args)
    fixed = {op: float(value) for op, value in (item.split("=") for item in args.bytes_per_pixel2)}
    result = {"model": args.model, "device": args.device, "precision": args.precision, "rows": rows,
              "fit": {op: fit([r for r in rows if r["op"] == op], fixed.get(op)) for op in ("compress", "decompress")}}
    print(json.dumps(result["fit"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
