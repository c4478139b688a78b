"""Outputs written whole or not at all: a folder is written under a locked staging name next to its
destination and renamed into place, so a reader (or a crash) never sees a half-written output, and
an existing output is never replaced; a file goes through a temporary name and `os.replace`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path


class OutputExists(FileExistsError):
    pass


_HELD: dict[str, int] = {}  # staging folder -> the open descriptor holding its lock (this process's live stagings)


def staging_dir(parent: Path, name: str) -> Path:
    """A fresh directory on the destination's file system (so the final rename is atomic), locked
    (flock on the folder) for as long as this process works in it: that lock, not a PID that another
    PID namespace (a container sharing the folder) cannot see, tells a live staging from a stale one."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".staging-{name}-{os.getpid()}-", dir=parent))
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new and ours: nobody else can hold it
    except OSError:  # a file system without flock on directories: no lock, and no run can take one to remove it
        pass
    _HELD[str(folder)] = fd
    return folder


def _release(folder: Path) -> None:
    fd = _HELD.pop(str(folder), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the lock


def remove_stale_staging(parent: Path) -> list[Path]:
    """Staging folders left by a killed run (no process holds their lock): never outputs, only
    clutter. A folder is removed only while this process holds its lock: a live run keeps its own."""
    removed = []
    for folder in parent.glob(".staging-*") if parent.is_dir() else ():
        if str(folder) in _HELD or not folder.is_dir() or folder.is_symlink():
            continue
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live run works in it (or no lock can be had here: kept, to be safe)
            os.close(fd)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(folder)
    return removed


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM (what CI runners and `timeout` send) raises KeyboardInterrupt, as SIGINT does, so the
    code that removes a staging folder on an interrupt runs for it too. Main thread only; an
    application's own SIGTERM handler is left alone."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def write_json(path: Path, data) -> None:
    """Written whole or not at all (`write_text`)."""
    write_text(path, json.dumps(strict_json(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Written whole or not at all: a failure (ENOSPC, a directory in the way) leaves no temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def strict_json(value):
    """NaN and Infinity are not JSON: a non-finite figure becomes null, and the mapping holding it
    says under "non_finite" what it was."""
    if isinstance(value, dict):
        non_finite = {k: repr(v) for k, v in value.items() if isinstance(v, float) and not math.isfinite(v)}
        out = {k: None if k in non_finite else strict_json(v) for k, v in value.items()}
        return out | ({"non_finite": non_finite} if non_finite else {})
    if isinstance(value, (list, tuple)):
        return [None if isinstance(v, float) and not math.isfinite(v) else strict_json(v) for v in value]
    return value


def publish(staging: Path, final: Path) -> Path:
    """Rename a complete staging folder into place; never replace an existing output."""
    if final.exists():
        raise OutputExists(f"{final} exists and is not overwritten: remove it or choose another --save directory")
    _share_like_umask(staging)
    os.rename(staging, final)  # atomic on one file system; fails rather than replacing a non-empty dir
    _release(staging)
    return final


def _share_like_umask(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only modes; outputs get the user's usual ones."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    _release(staging)
