"""Where a training step's time and memory go, per component (`scripts/bench_train.py --profile`).

A component is a set of modules of the stage (`StageTrainer.profile_components`) or one of its
optimizers. Per component and step:
  forward ms   wall time inside its modules' calls (forward hooks)
  backward ms  from the first gradient reaching its outputs to the last gradient it produces (for
               its inputs or its trainable parameters); components whose backward passes
               interleave (e.g. the GAN head inside the fake score's) overlap
  saved MB     tensors its forward keeps for the backward pass (autograd saved-tensor hooks,
               each storage counted once): the activation memory it costs
  kept MB      (CUDA) memory still allocated after its forward, minus before
  step ms      an optimizer's `step()` (optimizer hooks)
On a GPU every event is CUDA-synchronised (which itself costs a little time). `clock` may be
time.process_time on a shared CPU (with one thread: the CPU time of the step, whatever the load).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch import nn


class StepProfiler:
    def __init__(self, components: dict[str, list[nn.Module]], optimizers: dict[str, torch.optim.Optimizer], device: torch.device,
                 clock=time.perf_counter):
        self.components, self.optimizers, self.device, self.clock = components, optimizers, device, clock
        self.forward = defaultdict(float)  # seconds, summed over the profiled steps
        self.backward = defaultdict(float)
        self.saved = defaultdict(int)  # bytes
        self.kept = defaultdict(int)
        self.calls = defaultdict(int)
        self.optimizer_time = defaultdict(float)
        self._intervals: dict[str, list[float]] = {}  # this backward pass: component -> [first start, last end]
        self._active: str | None = None  # the component whose forward runs
        self._storages: set = set()
        self._handles: list = []

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.clock()

    def _allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0

    # ---------------------------------------------------------------- hooks
    def _mark(self, name: str, start: bool) -> None:
        t = self._now()
        interval = self._intervals.setdefault(name, [t, t])
        interval[0 if start else 1] = min(interval[0], t) if start else max(interval[1], t)

    def _hook_grads(self, tensors, name: str, start: bool):
        """Identity views of `tensors` that mark `name`'s backward when their gradient arrives."""
        out = []
        for x in tensors:
            if isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
                x = x.view_as(x)
                x.register_hook(lambda g, name=name, start=start: self._mark(name, start))
            out.append(x)
        return out

    def _attach(self, name: str, module: nn.Module) -> None:
        state = {}

        def before(mod, args, kwargs):
            state["t"], state["mem"] = self._now(), self._allocated()
            self._active = name
            args = tuple(self._hook_grads(args, name, start=False))
            kwargs = dict(zip(kwargs, self._hook_grads(kwargs.values(), name, start=False)))
            return args, kwargs

        def after(mod, args, kwargs, output):
            self._active = None
            self.forward[name] += self._now() - state["t"]
            self.kept[name] += self._allocated() - state["mem"]
            self.calls[name] += 1
            if isinstance(output, torch.Tensor):
                return self._hook_grads([output], name, start=True)[0]
            for key, value in getattr(output, "items", lambda: [])():  # diffusers' output dataclasses
                if isinstance(value, torch.Tensor):
                    output[key] = self._hook_grads([value], name, start=True)[0]
            return output

        self._handles += [module.register_forward_pre_hook(before, with_kwargs=True),
                          module.register_forward_hook(after, with_kwargs=True)]
        for p in module.parameters():
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(lambda p, name=name: self._mark(name, start=False)))

    def _pack(self, x: torch.Tensor):
        if self._active is not None and not isinstance(x, nn.Parameter):  # weights are not activations
            key = (x.untyped_storage().data_ptr(), x.device)
            if key not in self._storages:
                self._storages.add(key)
                self.saved[self._active] += x.untyped_storage().nbytes()
        return x

    @contextmanager
    def attached(self):
        """Hooks in place for the steps run inside."""
        for name, modules in self.components.items():
            for module in modules:
                self._attach(name, module)
        for name, optimizer in self.optimizers.items():
            state = {}
            self._handles += [optimizer.register_step_pre_hook(lambda *a, state=state: state.update(t=self._now())),
                              optimizer.register_step_post_hook(lambda *a, name=name, state=state: self.optimizer_time.__setitem__(
                                  name, self.optimizer_time[name] + self._now() - state["t"]))]
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda x: x):
                yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []

    def end_step(self) -> None:
        """Close the step's backward intervals (call after each profiled step)."""
        for name, (start, end) in self._intervals.items():
            self.backward[name] += max(0.0, end - start)
        self._intervals, self._storages = {}, set()

    # ---------------------------------------------------------------- report
    def table(self, steps: int, step_seconds: float) -> str:
        """A Markdown table, per step: forward / backward / optimizer ms, saved and kept MB."""
        mb, cuda = 2**20, self.device.type == "cuda"
        rows = ["| component | module calls | forward ms | backward ms | saved for backward MB |" + (" kept after forward MB |" if cuda else ""),
                "|---|---|---|---|---|" + ("---|" if cuda else "")]
        accounted = 0.0
        for name in self.components:
            f, b = 1000 * self.forward[name] / steps, 1000 * self.backward[name] / steps
            accounted += f + b
            row = f"| {name} | {self.calls[name] / steps:g} | {f:.1f} | {b:.1f} | {self.saved[name] / steps / mb:.1f} |"
            rows.append(row + (f" {self.kept[name] / steps / mb:.1f} |" if cuda else ""))
        for name in self.optimizers:
            ms = 1000 * self.optimizer_time[name] / steps
            accounted += ms
            rows.append(f"| optimizer step: {name} | 1 | {ms:.1f} | | |" + (" |" if cuda else ""))
        step_ms = 1000 * step_seconds / steps
        rows.append(f"| rest (loss terms, clipping, glue; minus overlaps) | | {step_ms - accounted:.1f} | | |" + (" |" if cuda else ""))
        rows.append(f"| **whole step** | | **{step_ms:.1f}** | | **{sum(self.saved.values()) / steps / mb:.1f}** |" + (" |" if cuda else ""))
        return "\n".join(rows)
