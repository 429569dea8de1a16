"""Size limits: the decompression-bomb guard.

A .onedc file (or an image) declares its size before anything is decoded, and a 29 KB file can
declare 8192 x 8192. Coding costs time and memory in proportion to the pixels the model computes
on (the size padded to multiples of 64), and, through self-attention, also in their square.
Before anything is allocated from a declared size, `check_size` estimates both on the chosen
device from per-pixel coefficients measured by `scripts/measure_costs.py` (configs/limits.yaml)
and raises `SizeLimitError`, naming the size, the estimate and the override, when

* the padded size exceeds `max_pixels` (default: `max_pixels` in configs/limits.yaml), or
* with the default limit, the estimated peak memory exceeds the memory the device has available
  (host: available memory within this process's cgroup limit; CUDA: free plus cached by torch).

An explicit `max_pixels` (Python) or `--max-pixels` (command line) is the caller's decision:
then that limit alone applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict

from omegaconf import MISSING, OmegaConf

from .errors import SizeLimitError

OPERATIONS = {"compress": "encode", "decompress": "decode"}


@dataclass
class Cost:
    """One operation on one device, for P padded pixels: seconds = f + a P + b P^2 (on a CPU,
    one core's) and peak memory above what the loaded model holds = g + c P + d P^2 bytes."""

    seconds_fixed: float = MISSING  # f
    seconds_per_pixel: float = MISSING  # a
    seconds_per_pixel2: float = MISSING  # b
    bytes_fixed: float = MISSING  # g
    bytes_per_pixel: float = MISSING  # c
    bytes_per_pixel2: float = MISSING  # d


@dataclass
class DeviceCosts:
    compress: Cost = field(default_factory=Cost)
    decompress: Cost = field(default_factory=Cost)


@dataclass
class ModelCosts:
    cpu: DeviceCosts = field(default_factory=DeviceCosts)  # also other device types than CUDA
    cuda: DeviceCosts = field(default_factory=DeviceCosts)


@dataclass
class LimitsConfig:
    max_pixels: int = MISSING
    pad_multiple: int = MISSING
    fallback_model: str = MISSING
    costs: Dict[str, ModelCosts] = field(default_factory=dict)  # by model config name


@lru_cache(maxsize=1)
def load_limits() -> LimitsConfig:
    """configs/limits.yaml, checked against `LimitsConfig`."""
    from importlib.resources import files

    from .config import parse_structured

    raw = OmegaConf.load(files("onedc.configs") / "limits.yaml")
    return parse_structured(LimitsConfig, raw, "limits config (configs/limits.yaml)")


def default_max_pixels() -> int:
    return load_limits().max_pixels


@dataclass(frozen=True)
class Estimate:
    """What coding one image is expected to cost."""

    height: int  # padded
    width: int  # padded
    seconds: float
    bytes: int  # peak memory above the loaded model's

    @property
    def pixels(self) -> int:
        return self.height * self.width

    def describe(self) -> str:
        return f"about {_duration(self.seconds)} and {_size(self.bytes)}"


def estimate(model_name: str, operation: str, height: int, width: int, device_type: str, threads: int = 1) -> Estimate:
    """The cost of `operation` ("compress" or "decompress") of an H x W image with model
    `model_name` on a device of type `device_type` ("cpu", "cuda", ...), the CPU's one-core
    seconds shared by `threads`. Models without measured coefficients are costed as the
    fallback model (the full-size one), devices other than CUDA as the CPU."""
    limits = load_limits()
    model_costs = limits.costs.get(model_name) or limits.costs[limits.fallback_model]
    cost = getattr(model_costs.cuda if device_type == "cuda" else model_costs.cpu, operation)
    m = limits.pad_multiple
    padded_h, padded_w = math.ceil(height / m) * m, math.ceil(width / m) * m
    p = padded_h * padded_w
    seconds = (cost.seconds_fixed + cost.seconds_per_pixel * p + cost.seconds_per_pixel2 * p * p) / (1 if device_type == "cuda" else threads)
    return Estimate(padded_h, padded_w, seconds, math.ceil(cost.bytes_fixed + cost.bytes_per_pixel * p + cost.bytes_per_pixel2 * p * p))


def check_size(model_name: str, operation: str, height: int, width: int, device, max_pixels: int | None = None) -> Estimate:
    """Refuse (SizeLimitError) to code an H x W image above the limit or beyond the device's
    available memory (see the module docstring); returns the estimate otherwise."""
    import torch

    device = torch.device(device)
    est = estimate(model_name, operation, height, width, device.type, torch.get_num_threads())
    verb = OPERATIONS[operation]
    what = f"refusing to {verb} a {width}x{height} image"
    needs = f"{model_name} on {device.type} would need {est.describe()} (estimate)"
    override = f"--max-pixels {est.pixels} (Python: max_pixels={est.pixels})"
    limit = default_max_pixels() if max_pixels is None else max_pixels
    if est.pixels > limit:
        padded = f" (padded to {est.width}x{est.height})" if (est.height, est.width) != (height, width) else ""
        kind = "the default limit" if max_pixels is None else "the limit"
        raise SizeLimitError(f"{what}: {est.pixels:,} pixels{padded} exceed {kind} of {limit:,}; {needs}. "
                             f"If you trust it, raise the limit: {override}")
    if max_pixels is None:
        available = available_memory(device)
        if available is not None and est.bytes > available:
            raise SizeLimitError(f"{what}: {needs}, more than the {_size(available)} available on {device}; free memory or use "
                                 f"a larger device, or, if the estimate is too cautious for this machine, {override}")
    return est


def available_memory(device) -> int | None:
    """Bytes that can still be allocated on `device`: CUDA: free plus cached by torch's
    allocator; CPU: the host's available memory, within this process's cgroup (v2) limit.
    None where unknown (other device types)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    import psutil

    available = psutil.virtual_memory().available
    in_cgroup = cgroup_available()
    return available if in_cgroup is None else min(available, in_cgroup)


def cgroup_available(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), e.g. a SLURM job's or a
    container's limit; None without a limit or without cgroup v2."""
    try:
        line = next(entry for entry in membership.read_text().splitlines() if entry.startswith("0::"))
        group = root / line[3:].lstrip("/")
        limit = (group / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((group / "memory.current").read_text()))
    except (OSError, StopIteration, ValueError):
        return None


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.0f} KB"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"
