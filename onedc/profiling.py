"""Per-stage wall-clock profile of the coding path.

The coding code marks its stages with `stage("name")`. Outside a `StageProfile` that costs
one context-variable lookup. Inside one, each stage synchronises the profile's device at
both ends and adds its *exclusive* seconds (its own time minus that of the stages nested in
it) under its name, so the stages of one call add up to the call's wall time.

    with StageProfile(device) as profile:
        model.decompress(data)
    profile.seconds  # {"container_z": ..., "entropy_networks": ..., "rans": ..., ...}
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

import torch

_ACTIVE: ContextVar["StageProfile | None"] = ContextVar("onedc_stage_profile", default=None)


class StageProfile:
    """Collects exclusive seconds per stage name for the calls made inside `with`."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = defaultdict(float)
        self._nested: list[float] = []  # per open stage: seconds spent in its nested stages
        self._token = None

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> "StageProfile":
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the enclosed code as stage `name` of the active profile (no-op without one)."""
    profile = _ACTIVE.get()
    if profile is None:
        yield
        return
    profile.synchronize()
    start = time.perf_counter()
    profile._nested.append(0.0)
    try:
        yield
    finally:
        profile.synchronize()
        total = time.perf_counter() - start
        nested = profile._nested.pop()
        profile.seconds[name] += total - nested
        if profile._nested:
            profile._nested[-1] += total


def synchronized_seconds(fn: Callable[[], object], device: torch.device | str) -> tuple[float, object]:
    """(wall seconds, result) of one call of `fn`, CUDA work on `device` synchronised before
    and after it."""
    profile = StageProfile(device)
    profile.synchronize()
    start = time.perf_counter()
    result = fn()
    profile.synchronize()
    return time.perf_counter() - start, result
