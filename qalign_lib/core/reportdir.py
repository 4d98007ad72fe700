"""A report folder written whole or marked incomplete (``figures/<size>/``, ``figures/<size>/<study>/``).

A report writes many files one by one (each atomically). :func:`writing` brackets them: it takes the folder's lock
(``<folder>/.lock``: a second report of the same folder fails naming the holder), writes the marker
:data:`MARKER` saying the folder is being written, removes the previous index ``README.md`` (written last, so an
index exists only beside a whole report), and removes the marker only when the block ends without an error. A
report killed with -9, or stopped by an error, leaves the marker: its files may mix two versions. :func:`incomplete`
says so to readers (``qalign study`` plans the report again, with that reason); :func:`manifest` and
:func:`changed` let a reader check that the files a report wrote are still all there and unchanged.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from pathlib import Path

from qalign_lib.core import locks
from qalign_lib.core.files import atomic_write, file_hash

MARKER = "INCOMPLETE.md"
INDEX = "README.md"
LOCK = ".lock"


def lock_file(out: Path) -> Path:
    return Path(out) / LOCK


@contextlib.contextmanager
def writing(out: Path, rerun: str):
    """Write a report into ``out`` whole or marked incomplete (module docstring); ``rerun``: the command that writes
    it again, for the marker."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with locks.lock(lock_file(out), f"the report in {out}"):
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        with atomic_write(out / MARKER) as f:
            f.write(f"# Incomplete report\n\nThis report is being written, or was interrupted, since {since} by PID "
                    f"{os.getpid()} on {socket.gethostname()}: its files may mix two versions of the report, and its "
                    f"index {INDEX} is written last. Rerun {rerun} to write it whole.\n")
        with contextlib.suppress(FileNotFoundError):
            (out / INDEX).unlink()  # the previous index describes the previous files
        yield out
        (out / MARKER).unlink()


def incomplete(out: Path) -> str | None:
    """Why the report folder ``out`` is not whole (its marker, or no index), or None."""
    out = Path(out)
    if (out / MARKER).exists():
        try:
            found = re.search(r" since (.+?) by PID (\S+ on \S+?):", (out / MARKER).read_text(errors="replace"))
        except OSError:
            found = None
        by = f"since {found[1]} by PID {found[2]}" if found else "by an unknown process"
        return (f"the report in {out} is being written or was interrupted ({out / MARKER}: {by}); its files may "
                "mix two versions")
    if not (out / INDEX).is_file():
        return f"the report in {out} has no index {INDEX}"
    return None


def manifest(out: Path) -> dict[str, str]:
    """file name -> sha256 of every file of the report folder ``out`` (not its subfolders: other studies' reports;
    not its hidden files: the lock, temporary files)."""
    out = Path(out)
    return {p.name: file_hash(p) for p in sorted(out.iterdir())
            if p.is_file() and not p.name.startswith(".")} if out.is_dir() else {}


def changed(out: Path, files: dict[str, str]) -> str | None:
    """The first file of a report's :func:`manifest` ``files`` that is missing or changed in ``out``, in words; or
    None."""
    out = Path(out)
    for name, digest in files.items():
        path = out / name
        if not path.is_file():
            return f"{path} is missing"
        if file_hash(path) != digest:
            return f"{path} changed since the report was written"
    return None
