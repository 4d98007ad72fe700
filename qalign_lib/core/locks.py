"""Locks: exclusive use of a run, an eval root, an analysis or a study by one process (:func:`lock`, a
non-blocking ``flock`` that names its holder and dies with the process).
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from qalign_lib.core.errors import RunError


@contextlib.contextmanager
def lock(path: Path, what: str):
    """Exclusive use of what the lock file ``path`` guards (a run, an eval root, a study) by this process.

    A non-blocking ``flock`` on ``path``, which holds the holder's PID: a second process fails at once with a
    RunError naming that PID instead of writing into the same files. The lock goes with the process, so a job killed
    with -9 leaves nothing to clean up. Re-entrant within one process. Lock files live outside what they guard
    when that can be moved aside (runs: ``runs/<size>/.locks/<run>.lock``).
    """
    import fcntl

    path = Path(path)
    key = str(path.resolve())
    if key in _HELD:  # this process holds it already (e.g. the phases of one stage 2)
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RunError(f"{what} ({path}): cannot create its lock file ({e.strerror}); is the runs folder writable?") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise RunError(f"{what} is in use by another process (PID {holder}); wait for it to finish, or stop it, "
                           f"then rerun (lock: {path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the lock


_HELD: set[str] = set()
