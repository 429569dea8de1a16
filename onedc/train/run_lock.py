"""One training job per run folder: `<run>/run.lock` names the job that trains there.

The lock file is created with O_CREAT | O_EXCL (atomic on local and NFS v3+ filesystems) and
holds the owner's host, pid, SLURM job id and start time; its modification time is a heartbeat,
renewed by a background thread while the run lives. A second job on the folder is refused with
RunInUseError naming the owner, unless the lock is stale: its process is gone (same host, dead
pid), it belongs to this very SLURM job (a requeued job), or its heartbeat is older than
`expiry_s` (a killed job on another host).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from ..errors import RunInUseError

LOCK_FILE = "run.lock"


def this_job() -> dict:
    """Who we are: host, pid, SLURM job id (None outside SLURM), start time (Unix seconds)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "started": time.time()}


def describe(owner: dict) -> str:
    job = f", SLURM job {owner['slurm_job_id']}" if owner.get("slurm_job_id") else ""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"pid {owner.get('pid')} on {owner.get('host')}{job}, started {started}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class RunLock:
    def __init__(self, folder: Path, expiry_s: float):
        self.path = Path(folder) / LOCK_FILE
        self.expiry_s = expiry_s
        self.owner = this_job()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def stale_reason(self, owner: dict, heartbeat: float) -> str | None:
        """Why a lock held by `owner` (heartbeat = its file's mtime) no longer counts, or None."""
        me = self.owner
        if owner.get("host") == me["host"] and not _process_alive(int(owner.get("pid", -1))):
            return "its process is gone"
        if owner.get("slurm_job_id") and owner.get("slurm_job_id") == me["slurm_job_id"]:
            return "it is this SLURM job's, before a requeue"
        if time.time() - heartbeat > self.expiry_s:
            return f"no heartbeat for {time.time() - heartbeat:.0f} s"
        return None

    def acquire(self) -> str | None:
        """Take the lock (RunInUseError if a live job holds it); returns why a stale lock was
        replaced, if one was."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replaced = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner, heartbeat = self._read()
                reason = self.stale_reason(owner, heartbeat)
                if reason is None:
                    raise RunInUseError(f"{self.path.parent} is in use by another training job ({describe(owner)}); "
                                        f"wait for it to end, or train into another folder (hydra.run.dir=...). "
                                        f"If that job is dead, delete {self.path}") from None
                self._set_aside(owner)
                replaced = f"replaced the stale lock of {describe(owner)}: {reason}"
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            self._heartbeat = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
            self._heartbeat.start()
            return replaced
        raise RunInUseError(f"{self.path.parent}: another job took the run folder's lock at the same time")

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        try:
            if self._read()[0] == self.owner:
                self.path.unlink()
        except (OSError, RunInUseError):
            pass

    def _read(self) -> tuple[dict, float]:
        try:
            return json.loads(self.path.read_text()), self.path.stat().st_mtime
        except FileNotFoundError:
            return {}, 0.0  # released meanwhile: stale by every measure
        except (OSError, json.JSONDecodeError) as e:
            raise RunInUseError(f"cannot read the run folder's lock {self.path}: {e}; delete it if no job trains there") from e

    def _set_aside(self, owner: dict) -> None:
        """Move a stale lock out of the way; if another job replaced it meanwhile, put it back."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        if json.loads(aside.read_text() or "{}") != owner:
            os.replace(aside, self.path)  # not the lock we judged: a live job's
        else:
            aside.unlink()

    def _beat(self) -> None:
        while not self._stop.wait(self.expiry_s / 10):
            try:
                os.utime(self.path)
            except OSError:
                pass  # the filesystem hiccupped: the next beat retries
