"""The run folder's lock: a second job is refused naming the first; stale locks do not block."""

import json
import os
import socket
import subprocess
import time

import pytest

from onedc.errors import RunInUseError
from onedc.train.config import compose
from onedc.train.run_lock import LOCK_FILE, RunLock
from onedc.train.stage1 import train


def held_by(folder, host: str, pid: int, slurm_job_id: str | None, heartbeat_age_s: float = 0.0):
    """A lock file as another job would have left it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    path.write_text(json.dumps({"host": host, "pid": pid, "slurm_job_id": slurm_job_id, "started": time.time() - 60}))
    beat = time.time() - heartbeat_age_s
    os.utime(path, (beat, beat))
    return path


@pytest.fixture
def live_pid():
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


def test_a_second_job_is_refused_naming_the_first(tmp_path, live_pid, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    held_by(tmp_path, socket.gethostname(), live_pid, "4242")
    with pytest.raises(RunInUseError, match=f"pid {live_pid} on {socket.gethostname()}, SLURM job 4242"):
        train(compose(["experiment=quickstart", "train.logger=none"]), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]  # nothing built, nothing written


def test_stale_locks_are_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    dead = subprocess.Popen(["true"])
    dead.wait()
    cases = {
        "its process is gone": ("this host", dead.pid, None, 0),
        "this SLURM job's": ("node17", 1, "77", 0),  # the job was requeued (same id), possibly elsewhere
        "no heartbeat for": ("node17", 1, "76", 3600),
    }
    for reason, (host, pid, job, age) in cases.items():
        folder = tmp_path / reason.replace(" ", "_")
        held_by(folder, socket.gethostname() if host == "this host" else host, pid, job, age)
        lock = RunLock(folder, expiry_s=600)
        assert reason in lock.acquire()
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
        lock.release()
        assert sorted(p.name for p in folder.iterdir()) == []  # released, and no set-aside copy left


def test_a_live_lock_on_another_host_blocks_until_its_heartbeat_expires(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    path = held_by(tmp_path, "node17", 12345, "76", heartbeat_age_s=30)
    with pytest.raises(RunInUseError, match="pid 12345 on node17, SLURM job 76"):
        RunLock(tmp_path, expiry_s=600).acquire()
    assert json.loads(path.read_text())["host"] == "node17"  # untouched


def test_the_heartbeat_renews_the_lock(tmp_path):
    lock = RunLock(tmp_path, expiry_s=1.0)  # beats every 0.1 s
    lock.acquire()
    path = tmp_path / LOCK_FILE
    os.utime(path, (0, 0))
    time.sleep(0.5)
    assert time.time() - path.stat().st_mtime < 1.0
    lock.release()
    assert not path.exists()
