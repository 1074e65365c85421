"""One run of a job at a time: an OS file lock beside each output, that dies with its process."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from batchroute.errors import JobBusy, OutputError, one_line


def lock_path(output: Path) -> Path:
    """The lock file of an output: hidden, beside it, like the output's temporary file."""
    return output.with_name(f".{output.name}.lock")


@contextlib.contextmanager
def output_lock(output: Path, *, where: str) -> Iterator[None]:
    """Hold the lock of `output` for the block; raise JobBusy, naming the holder's pid, if
    another process holds it. `where` names the job file and key, for messages.

    Two runs of one job would share a run id and a temporary file: every call paid twice and
    an unreadable output. An `flock` is released by the OS when its process ends, even by
    kill -9, so no lock outlives its run. The file stays behind: removing it would let a
    waiting process lock a file that the next one no longer sees.
    """
    path = lock_path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{where}: {output.parent} is a file, not a folder") from None
    except OSError as exc:
        raise OutputError(
            f"{where}: cannot create the folder {output.parent}: {one_line(exc)}"
        ) from None
    try:
        # O_CLOEXEC: a subprocess (the embedded simulator) must not inherit the lock.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise OutputError(f"{where}: cannot write {output} there: {one_line(exc)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            raise JobBusy(
                f"{where}: another run of this job is writing {output} ({holder}); wait for"
                " it to end, or stop it"
            ) from None
        except OSError as exc:  # a file system without locks
            raise OutputError(f"{where}: cannot lock {path}: {one_line(exc)}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """Who holds the lock, from the pid it wrote (it may not have written it yet)."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f"pid {text}" if text.isdigit() else "pid unknown"
