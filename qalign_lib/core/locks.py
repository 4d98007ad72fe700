"""Locks: use of a run, an eval root, an analysis or a study by one process (:func:`lock`, a non-blocking ``flock``
that names its holder and dies with the process). Readers of a run (its evaluation, its analysis) hold it shared;
training it (which moves the old run aside) needs it exclusive, so it fails naming the reader instead of pulling
the run from under it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import time
from pathlib import Path

from qalign_lib.core.errors import RunError


def _holder_line() -> str:
    return f"{os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _open(path: Path, what: str) -> int:
    """The lock file, created if missing, never through a symbolic link (O_NOFOLLOW) and only if it is a regular
    file: a lock file that points elsewhere would be emptied by its holder."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():
            raise RunError(f"{what}: its lock file {path} is a symbolic link; refusing to follow it (remove the link, "
                           "then rerun)") from None
        raise RunError(f"{what} ({path}): cannot create its lock file ({e.strerror}); is the runs folder writable?") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunError(f"{what}: its lock file {path} is not a regular file (a FIFO, a socket or a device); remove it, "
                       "then rerun")
    return fd


def _readers_dir(path: Path) -> Path:
    """Where the processes that hold ``path`` shared name themselves, one file each (``<pid>@<host>``)."""
    return path.with_name(path.name + ".readers")


def _readers(path: Path) -> list[str]:
    """The holders of a shared lock, as they named themselves; entries of processes of this host that are gone
    (killed with -9) are left out."""
    host, out = socket.gethostname(), []
    with contextlib.suppress(OSError):
        for entry in sorted(_readers_dir(path).iterdir()):
            pid, _, on = entry.name.partition("@")
            if on == host and pid.isdigit() and not _alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                out.append(entry.read_text(errors="replace").strip() or entry.name)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holders(path: Path) -> str:
    """Who holds the lock file ``path``, in words (for messages): the exclusive holder's line, or the shared ones."""
    path = Path(path)
    line = ""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                line = os.pread(fd, 200, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
    if line:
        return f"PID {line}"
    readers = _readers(path)
    return "PID " + "; PID ".join(readers) if readers else "PID unknown"


@contextlib.contextmanager
def lock(path: Path, what: str, shared: bool = False):
    """Use of what the lock file ``path`` guards (a run, an eval root, an analysis, a study) by this process.

    A non-blocking ``flock`` on ``path``: exclusive by default (one writer), ``shared`` for readers of a run (any
    number of them at once, and no writer meanwhile). A process that cannot take it fails at once with a RunError
    naming the holder's PID (an exclusive holder writes it into the lock file, shared ones into
    ``<lock>.readers/``). The lock goes with the process, so a job killed with -9 leaves nothing to clean up.
    The lock file is opened without following symbolic links and must be a regular file. Re-entrant within one
    process (an exclusive hold covers a shared request; a shared hold cannot become exclusive). Lock files live
    outside what they guard when that can be moved aside (runs: ``runs/<size>/.locks/<run>.lock``).
    """
    import fcntl

    path = Path(path)
    key = str(path.parent.resolve() / path.name)
    held = _HELD.get(key)
    if held == "exclusive" or (held == "shared" and shared):  # this process holds it already
        yield
        return
    if held == "shared":
        raise RunError(f"{what}: this process reads it (a shared lock on {path}) and cannot also replace it; finish "
                       "the evaluation or analysis first")
    fd = _open(path, what)
    mine = _readers_dir(path) / f"{os.getpid()}@{socket.gethostname()}"
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{what} is in use by another process ({holders(path)}); wait for it to finish, or stop "
                           f"it, then rerun (lock: {path})") from None
        if shared:
            os.ftruncate(fd, 0)  # no exclusive holder now: a line left by one killed with -9 is stale
            with contextlib.suppress(OSError):
                mine.parent.mkdir(exist_ok=True)
                mine.write_text(_holder_line())
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_line().encode(), 0)
            with contextlib.suppress(OSError):  # readers that held it before are gone (we hold it alone)
                for entry in _readers_dir(path).iterdir():
                    entry.unlink()
        _HELD[key] = "shared" if shared else "exclusive"
        try:
            yield
        finally:
            _HELD.pop(key, None)
            if shared:
                with contextlib.suppress(OSError):
                    mine.unlink()
            else:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the lock


def holding(run_lock: Path | None):
    """A shared :func:`lock` on a run's lock file ``runs/<size>/.locks/<run>.lock`` (the run read by its evaluation
    or analysis); nothing when it is None (the base model, an explicit model: no run to protect)."""
    if run_lock is None:
        return contextlib.nullcontext()
    return lock(run_lock, f"run {Path(run_lock).stem}", shared=True)


_HELD: dict[str, str] = {}
