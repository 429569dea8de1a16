"""Complexity in the layout of the supplementary's Table A (parameters, encode and decode time,
peak decode memory), with a per-stage profile of both directions.

Encode = image -> file: SD VAE encoder, g_a, h_enc + FSQ, exact entropy networks, rANS,
container. Decode = file -> image: container + z, exact entropy networks, rANS, h_sem + g_s,
U-Net, SD VAE decoder. Batch 1, a random image, after a warm-up call; each stage is
synchronised at both ends (`onedc.profiling`); times are medians of the repeats. The generator
and the VAE run under bf16 autocast on a GPU, as the official inference does (`precision="fp32"`
disables it); the entropy-parameter networks run in exact fixed point (float64) on the model's
device, whatever the precision.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError
from ..model import OneDC
from ..profiling import StageProfile

ENCODE_STAGES = ("vae_encoder", "g_a", "h_enc_fsq", "entropy_networks", "rans", "h_sem", "container")
DECODE_STAGES = ("container_z", "entropy_networks", "rans", "h_sem_g_s", "unet", "vae_decoder")
TABLE_A = Path(__file__).with_name("table_a.json")


def paper_table_a() -> dict:
    """Table A of the supplementary as printed: {"source", "peak_decode_memory_mb_512", "rows"}."""
    return json.loads(TABLE_A.read_text())


def timed(fn: Callable[[], object], repeat: int, device: torch.device) -> tuple[float, object]:
    """(median seconds of `repeat` calls after one warm-up call, the last result); CUDA work is
    synchronised before and after each call."""
    seconds, _, result = profiled(fn, repeat, device)
    return seconds, result


def profiled(fn: Callable[[], object], repeat: int, device: torch.device) -> tuple[float, dict[str, float], object]:
    """(median total seconds, median seconds per stage, the last result) of `repeat` calls of
    `fn` after one warm-up call, each inside a StageProfile on `device`. The stages a call
    does not reach are absent; "other" is the rest of the call's wall time."""
    result = fn()
    totals, stages = [], []
    for _ in range(repeat):
        with StageProfile(device) as profile:
            profile.synchronize()
            start = time.perf_counter()
            result = fn()
            profile.synchronize()
            totals.append(time.perf_counter() - start)
        seconds = dict(profile.seconds)
        seconds["other"] = totals[-1] - sum(seconds.values())
        stages.append(seconds)
    median = {name: statistics.median(s.get(name, 0.0) for s in stages) for name in stages[0]}
    return statistics.median(totals), median, result


def inference_parameters(model: OneDC) -> int:
    """Parameters the model holds: codec + generator (U-Net with LoRA, vae_reduction) + VAE
    (a decoding model holds only the decoder's parts)."""
    return sum(p.numel() for p in model.parameters())


def tensor_megabytes(module: torch.nn.Module) -> float:
    """Bytes of a module's parameters and buffers, in MiB."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def parse_size(size: str | int) -> tuple[int, int]:
    """"512" (a square side) or "768x512" (W x H) -> (height, width)."""
    text = str(size)
    try:
        w, h = (int(v) for v in text.split("x")) if "x" in text else (int(text),) * 2
    except ValueError:
        raise ConfigError(f"image size {text!r}: expected a side (512) or WxH (768x512)") from None
    if w < 1 or h < 1:
        raise ConfigError(f"image size {text!r}: sides must be positive")
    return h, w


def measure(model: OneDC, sizes: list[str | int], repeat: int = 5, precision: str = "bf16", seed: int = 0,
            compile_decoder: bool = False) -> dict:
    """Encode/decode seconds (total and per stage) per image size in `sizes` ("512" or
    "768x512", a random image) on the model's device, and the decode memory (weights vs
    activations) at the first size. Encodes with `model`, then turns it into a decoder in place
    (`OneDC.for_decoding`: encoder parts dropped; frozen weights in bf16 on a GPU under bf16
    precision; `compile_decoder`: torch.compile, compiled per size before the timing by
    `OneDC.compile_for`, whose seconds are reported as compile_s) and decodes. Returns a
    JSON-ready dict keyed by the sizes as given."""
    device = model.device
    cuda = device.type == "cuda"

    def autocast():
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def median(fn):
        with autocast():
            return profiled(fn, repeat, device)

    parameters = inference_parameters(model)
    rows, files = {}, {}
    for size in sizes:
        h, w = parse_size(size)
        image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed + w)) * 2 - 1
        t_enc, enc_stages, files[size] = median(lambda: model.compress(image))
        rows[str(size)] = {"encode_s": round(t_enc, 4), "bytes": len(files[size]), "encode_stages_s": _rounded(enc_stages)}
    model.for_decoding(torch.bfloat16 if cuda and precision == "bf16" else torch.float32)
    if cuda:
        torch.cuda.empty_cache()
    if compile_decoder:
        model.compile_decoder()
    for i, size in enumerate(sizes):
        row = rows[str(size)]
        with autocast():
            compile_s = model.compile_for(files[size])
        t_dec, dec_stages, _ = median(lambda: model.decompress(files[size]))
        row.update(decode_s=round(t_dec, 4), decode_stages_s=_rounded(dec_stages))
        if compile_decoder:
            row["compile_s"] = round(compile_s, 2)
        if i == 0:
            row["decode_memory_mb"] = _decode_memory(model, files[size], autocast) if cuda else _cpu_memory(model)
    return {
        "model": model.config.name,
        "identity": model.identity.describe(),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "precision": precision,
        "compiled": compile_decoder,
        "repeat": repeat,
        "parameters": parameters,
        "decoder_parameters": inference_parameters(model),
        "sizes": rows,
    }


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in seconds.items()}


def _decode_memory(model: OneDC, data: bytes, autocast) -> dict:
    """Peak GPU memory of one decode, split into what is allocated before it (weights) and the
    rest (activations and workspaces)."""
    device = model.device
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    weights = torch.cuda.memory_allocated(device)
    with autocast():
        model.decompress(data)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"peak": round(peak / 2**20), "weights": round(weights / 2**20), "activations": round((peak - weights) / 2**20)}


def _cpu_memory(model: OneDC) -> dict:
    """On the CPU: the (decoding) model's parameter and buffer bytes, and the process's peak
    RSS so far (the full model and the encodes included)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"weights": round(tensor_megabytes(model)), "process_peak_rss": round(rss)}


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _label(size: str) -> str:
    h, w = parse_size(size)
    return f"{w}x{h}"


def format_profile(measured: dict) -> str:
    """Markdown: one row per stage, one column per size and direction, in milliseconds."""
    sizes = list(measured["sizes"])
    lines = ["| stage | " + " | ".join(f"{_label(s)} encode | {_label(s)} decode" for s in sizes) + " |",
             "|---|" + "---:|---:|" * len(sizes)]
    names = list(dict.fromkeys([*ENCODE_STAGES, *DECODE_STAGES, "other"]))
    for name in names:
        cells = []
        for s in sizes:
            row = measured["sizes"][s]
            for key in ("encode_stages_s", "decode_stages_s"):
                value = row[key].get(name)
                cells.append("-" if value is None else f"{1000 * value:.1f}")
        if any(c != "-" for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = []
    for s in sizes:
        totals += [f"**{1000 * measured['sizes'][s]['encode_s']:.1f}**", f"**{1000 * measured['sizes'][s]['decode_s']:.1f}**"]
    lines.append("| total | " + " | ".join(totals) + " |")
    return "\n".join(lines) + "\n"


def format_table_a(measured: dict, size: str | int | None = None, bd_rates: dict[str, dict] | None = None) -> str:
    """Markdown in Table A's layout: the paper's rows, then ours (times at `size`, default the
    largest measured). `bd_rates` (method -> {metric: percent or None}) fills the BD-rate columns."""
    size = str(size or max(measured["sizes"], key=lambda s: math.prod(parse_size(s))))
    ours = measured["sizes"][size]
    metrics = ("lpips", "dists", "fid")
    bd_rates = bd_rates or {}
    paper = paper_table_a()

    def bd(method: str) -> list[str]:
        values = bd_rates.get(method, {})
        return [f"{values[m]:.1f}%" if values.get(m) is not None else "-" for m in metrics]

    lines = [
        "| Model | Params | Enc. time (s) | Dec. time (s) | BD-rate LPIPS | BD-rate DISTS | BD-rate FID |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in paper["rows"]:
        lines.append(f"| {row['method']} | {row['params']} | {row['encode_s']} | {row['decode_s']} | " + " | ".join(bd(row["method"])) + " |")
    name = f"onedc ({measured['model']})"
    lines.append(f"| {name} | {_count(measured['parameters'])} | {ours['encode_s']:.2f} | {ours['decode_s']:.2f} | " + " | ".join(bd(name)) + " |")
    notes = [
        f"Paper rows: {paper['source']} (BD-rate on MS-COCO 30K against OneDC).",
        f"Ours: {_label(size)}, {measured['device']}, {measured['precision']}{', compiled' if measured.get('compiled') else ''}, "
        f"batch 1, median of {measured['repeat']} after a warm-up.",
    ]
    first = next(iter(measured["sizes"]))
    memory = measured["sizes"][first].get("decode_memory_mb", {})
    compile_s = {s: r["compile_s"] for s, r in measured["sizes"].items() if "compile_s" in r}
    if compile_s:
        times = ", ".join(f"{_label(s)} {v:.1f} s" for s, v in compile_s.items())
        notes.append(f"Compile time (per size: the first decode's time minus the second's; not in the times): {times}.")
    if "peak" in memory:
        notes.append(
            f"Peak decode memory at {_label(first)}: {memory['peak']:,} MB = {memory['weights']:,} MB weights + "
            f"{memory['activations']:,} MB activations (paper: {paper['peak_decode_memory_mb_512']:,} MB at 512x512)."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
