"""Stopping a run cleanly on a signal: SLURM sends SIGTERM before it kills a preempted job and,
with `--signal`, SIGUSR1 or SIGUSR2 ahead of the time limit (submitit asks for SIGUSR2).

While training, a handler for each of `train.stop_signals` only records the signal. After every
optimizer step the ranks agree on it (`agreed`: one rank receiving it stops them all after the
same step); the trainer then writes a checkpoint and stops, and `hand_over` passes the signal to
the handler that was installed before (inside a submitit job, the one that requeues the job). A
run continued with `train.resume=latest` equals an uninterrupted one.
"""

from __future__ import annotations

import signal

import torch


class StopSignals:
    """Context manager: record `names` (e.g. ["SIGTERM", "SIGUSR1"]) instead of dying on them."""

    def __init__(self, names: list[str]):
        self.signals = [signal.Signals[name] for name in names]
        self.received: signal.Signals | None = None
        self.previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> "StopSignals":
        for s in self.signals:
            self.previous[s] = signal.signal(s, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _record(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum)

    def agreed(self, accelerator) -> signal.Signals | None:
        """The signal every rank stops on after this step (the highest-numbered one any rank
        received), or None; a collective: call it on every rank after every step."""
        code = torch.tensor([int(self.received or 0)], device=accelerator.device)
        code = int(accelerator.gather(code).max()) if accelerator.num_processes > 1 else int(code)
        return signal.Signals(code) if code else None

    def hand_over(self, received: signal.Signals) -> None:
        """Pass `received` to the handler installed before ours, if it was a Python function
        (submitit's checkpoint-and-requeue; it may exit the process)."""
        handler = self.previous.get(received)
        if callable(handler):
            handler(int(received), None)
