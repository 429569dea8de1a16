"""Atomic writes: a file or a folder appears complete under its final name, or not at all.

A write that fails (a full disk, a quota, permissions, or the writer's own error) removes its
temporary file or folder, leaves the previous version intact and raises `WriteError` naming the
path, the cause and the free space on that filesystem. Interrupts (KeyboardInterrupt,
SystemExit) and onedc's own errors pass through unchanged, after the same clean-up. A writer
killed outright (SIGKILL, a lost node) leaves its hidden temporary behind; a job that resumes
writing into a folder removes them first with `remove_interrupted_writes`."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OneDCError, WriteError

# the names tempfile gives the unfinished new versions of atomic_file (".NAME.XXXXXXXX") and of
# temporary_folder (".NAME.tmp-XXXXXXXX": atomic_directory, training checkpoints); replace_directory's
# ".NAME.old-XXXXXXXX" is not one: it may hold the only complete version, and is never swept
INTERRUPTED_WRITE = re.compile(r"\..+\.(tmp-)?[a-z0-9_]{8}")


def default_mode(folder: bool = False) -> int:
    """The permissions a plain open()/mkdir() would give under the current umask (tempfile's
    0600/0700 would hide results and checkpoints from the other users of a shared cluster)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(e, path) from e
    try:
        yield Path(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OneDCError) or not isinstance(e, Exception):
            raise
        raise write_error(e, path) from e


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success its files are flushed to disk
    and it replaces `path` (an existing folder is moved aside first, then deleted)."""
    path = Path(path)
    try:
        tmp = temporary_folder(path)
    except OSError as e:
        raise write_error(e, path) from e
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
        replace_directory(tmp, path)
    except BaseException as e:
        written = folder_bytes(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OneDCError) or not isinstance(e, Exception):
            raise
        raise write_error(e, path, needed=max(written, folder_bytes(path))) from e


def temporary_folder(path: Path) -> Path:
    """A new empty folder ".NAME.tmp-XXXXXXXX" beside `path` (usual permissions), to be renamed
    onto it when complete; `remove_interrupted_writes` knows it by that name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, default_mode(folder=True))
    return tmp


def replace_directory(new: Path, path: Path) -> None:
    """Rename folder `new` to `path`; an existing `path` is moved aside first and deleted after,
    or moved back if the rename fails."""
    if not path.exists():
        os.replace(new, path)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.replace(path, aside / path.name)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(aside / path.name, path)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def remove_interrupted_writes(folder: str | Path) -> int:
    """Delete the unfinished new versions that killed atomic writes left below `folder`
    (recursively); returns how many. Call it only while nothing writes into `folder`."""
    leftovers = [p for p in Path(folder).rglob(".*") if INTERRUPTED_WRITE.fullmatch(p.name)] if Path(folder).is_dir() else []
    for leftover in leftovers:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return len(leftovers)


def folder_bytes(path: Path) -> int:
    """Bytes in the files below `path` (0 if it does not exist)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() else 0


def free_space_note(folder: Path, needed: int | None = None) -> str:
    """"N MB free on the filesystem of FOLDER" and, when `needed` bytes exceed that, how much
    to free there."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return f"the free space on the filesystem of {folder} is unknown"
    note = f"{_mb(free)} free on the filesystem of {folder}"
    if needed and needed > free:
        note += f"; about {_mb(needed)} are needed: free at least {_mb(needed - free)} there"
    return note


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def write_error(error: Exception, path: Path, needed: int | None = None) -> WriteError:
    """The WriteError for a failed write of `path`: the cause and the free space there."""
    return WriteError(f"cannot write {path}: {type(error).__name__}: {error}; {free_space_note(path.parent, needed)}; "
                      "the previous version, if any, is unchanged")
