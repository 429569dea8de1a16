"""One progress bar for an evaluation run on any number of processes.

Every process writes one record per finished image (`per_image/<stem>.json`, atomically); the
main process counts them, so the bar shows the work of all processes (on one node or several,
over the shared output folder) without any communication: images done / total, images/s of this
run (images found done at the start are not counted as speed) and the ETA.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def records_in(folder: Path) -> int:
    """Finished records in `folder/per_image` (temporary files of atomic writes start with a dot)."""
    try:
        with os.scandir(folder / "per_image") as entries:
            return sum(1 for e in entries if e.name.endswith(".json") and not e.name.startswith("."))
    except FileNotFoundError:
        return 0


class ProgressBar:
    """A tqdm bar over the records of the watched rate-point folders, refreshed every `every`
    seconds by a background thread until `close()`."""

    def __init__(self, total: int, every: float = 1.0, disable: bool = False):
        from tqdm.auto import tqdm

        self.folders: list[Path] = []
        self.every = every
        self.bar = tqdm(total=total, unit="img", desc="evaluating", disable=disable, dynamic_ncols=True)
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.done: int | None = None  # records counted so far (all processes); None before the first folder
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def watch(self, folder: Path) -> None:
        """Count `folder`'s records from now on; those already there are the run's starting point."""
        with self.lock:
            existing = records_in(folder)
            self.folders.append(folder)
            self.done = (self.done or 0) + existing
            self.bar.n += existing  # done before this run: advances the bar, not the speed
            self.bar.last_print_n = self.bar.n
            self.bar.refresh()

    def refresh(self) -> None:
        with self.lock:
            if self.done is None:
                return
            count = sum(records_in(f) for f in self.folders)
            if count > self.done:
                self.bar.update(count - self.done)
                self.done = count

    def _poll(self) -> None:
        while not self.stopped.wait(self.every):
            self.refresh()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.refresh()
        self.bar.close()
