"""Complexity in the layout of the supplementary's Table A: parameters, encode and decode time
(batch 1, after a warm-up, synchronised, median of repeats) and peak decode memory.

Encode = image -> file (SD VAE encoder, codec, rANS, container); decode = file -> image (exact
entropy networks, rANS, g_s, the one-step U-Net, SD VAE decoder). The generator and the VAE run
under bf16 autocast on a GPU, as the official inference does (`precision="fp32"` to disable);
the entropy-parameter networks always run in exact fixed point on the CPU.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable

import torch

from ..model import OneDC

# Table A of the supplementary: parameters and times at 1024x1024 (A100) as printed
PAPER_TABLE_A = [
    {"method": "MS-ILLM", "params": "181M", "encode_s": "0.14", "decode_s": "0.17"},
    {"method": "DiffEIC", "params": "1.4B", "encode_s": "0.32", "decode_s": "12.4"},
    {"method": "PerCo (SD)", "params": "3.8B+340M+955M", "encode_s": "0.58", "decode_s": "8.80"},
    {"method": "DiffC", "params": "950M", "encode_s": "3.9-15.6", "decode_s": "6.9-10.8"},
    {"method": "DDCM", "params": "950M", "encode_s": "-", "decode_s": "-"},
    {"method": "OneDC", "params": "1.4B", "encode_s": "0.15", "decode_s": "0.34"},
]


def timed(fn: Callable[[], object], repeat: int, device: torch.device) -> tuple[float, object]:
    """(median seconds of `repeat` calls after one warm-up call, the last result); CUDA work is
    synchronised before and after each call."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    result = fn()
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def inference_parameters(model: OneDC) -> int:
    """Parameters used at inference: codec + generator (U-Net with LoRA, vae_reduction) + VAE."""
    return sum(p.numel() for p in model.parameters())


def measure(model: OneDC, sizes: list[int], repeat: int = 5, precision: str = "bf16", seed: int = 0) -> dict:
    """Encode/decode seconds per square image side in `sizes` (random image) on the model's
    device, and the peak GPU memory of one decode at the first size. Returns a JSON-ready dict."""
    device = model.device
    cuda = device.type == "cuda"

    def autocast():
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def median(fn):
        with autocast():
            return timed(fn, repeat, device)

    rows = {}
    for i, side in enumerate(sizes):
        image = torch.rand(3, side, side, generator=torch.Generator().manual_seed(seed + side)) * 2 - 1
        t_enc, data = median(lambda: model.compress(image))
        t_dec, _ = median(lambda: model.decompress(data))
        row = {"encode_s": round(t_enc, 4), "decode_s": round(t_dec, 4), "bytes": len(data)}
        if cuda and i == 0:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            with autocast():
                model.decompress(data)
            torch.cuda.synchronize(device)
            row["decode_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
        rows[str(side)] = row
    return {
        "model": model.config.name,
        "identity": model.identity.describe(),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "precision": precision,
        "repeat": repeat,
        "parameters": inference_parameters(model),
        "sizes": rows,
    }


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def format_table_a(measured: dict, side: int | None = None, bd_rates: dict[str, dict] | None = None) -> str:
    """Markdown in Table A's layout: the paper's rows, then ours (times at `side`, default the
    largest measured). `bd_rates` (method -> {metric: percent or None}) fills the BD-rate columns."""
    side = side or max(int(s) for s in measured["sizes"])
    ours = measured["sizes"][str(side)]
    metrics = ("lpips", "dists", "fid")
    bd_rates = bd_rates or {}

    def bd(method: str) -> list[str]:
        values = bd_rates.get(method, {})
        return [f"{values[m]:.1f}%" if values.get(m) is not None else "-" for m in metrics]

    lines = [
        "| Model | Params | Enc. time (s) | Dec. time (s) | BD-rate LPIPS | BD-rate DISTS | BD-rate FID |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in PAPER_TABLE_A:
        lines.append(f"| {row['method']} | {row['params']} | {row['encode_s']} | {row['decode_s']} | " + " | ".join(bd(row["method"])) + " |")
    name = f"onedc ({measured['model']})"
    lines.append(f"| {name} | {_count(measured['parameters'])} | {ours['encode_s']:.2f} | {ours['decode_s']:.2f} | " + " | ".join(bd(name)) + " |")
    notes = [
        "Paper rows: supplementary Table A (1024x1024, A100; BD-rate on MS-COCO 30K against OneDC).",
        f"Ours: {side}x{side}, {measured['device']}, {measured['precision']}, batch 1, median of {measured['repeat']} after a warm-up.",
    ]
    peak = next((r["decode_peak_mb"] for r in measured["sizes"].values() if "decode_peak_mb" in r), None)
    if peak is not None:
        first = next(s for s, r in measured["sizes"].items() if "decode_peak_mb" in r)
        notes.append(f"Peak decode memory at {first}x{first}: {peak:,} MB (paper: 8,038 MB at 512x512).")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
