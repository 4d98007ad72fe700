"""Small file helpers: JSON/JSONL reading with precise errors, atomic writes (temp file, then rename), moving a
replaced result aside (never deleting it), saving a figure."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from qalign_lib.core.errors import DataError, OutputError, ResultsError


def valid_id(ident) -> bool:
    """A question id in a results file: an integer or a string (not a bool, which JSON would also accept as 0/1)."""
    return isinstance(ident, (int, str)) and not isinstance(ident, bool)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(folder: str | os.PathLike) -> None:
    """Give every regular file under ``folder`` the mode a new file gets here (0666 less the umask), as
    :func:`atomic_write` does: libraries that write files their own way (safetensors writes model.safetensors
    0600) leave them readable by their owner only, so colleagues could not load a model from a shared runs folder.
    Symbolic links are not followed."""
    file_mode = 0o666 & ~_umask()
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.chmod(path, file_mode)


def output_target(path: str | os.PathLike) -> tuple[Path, int]:
    """Where an atomic write of ``path`` goes, and with which mode: a symlink is written through (its target is
    replaced, the link stays), an existing file keeps its mode, a new one gets 0666 less the umask. Anything that
    exists and is not a regular file (a directory, a FIFO, a device) is refused: it is not ours to replace."""
    if not str(path).strip():
        raise OutputError("output path is empty: give a file name, e.g. --out examples.jsonl")
    path = Path(path)
    try:
        target = path.resolve(strict=False)
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise OutputError(f"{path}: cannot be resolved ({e}); give a plain file path") from None
    if target.exists() or target.is_symlink():
        try:
            st = target.stat()
        except OSError as e:
            raise OutputError(f"{path}: cannot be written ({e.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, a FIFO or a socket)"
            raise OutputError(f"{path} is {kind}; refusing to replace it: give the path of a file to write")
        return target, stat.S_IMODE(st.st_mode)
    return target, 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    Writes through symlinks, refuses targets that are not regular files, keeps an existing file's mode (a new one
    follows the umask), and turns a failure to write (read-only, no space left) into an OutputError naming the file.
    """
    target, file_mode = output_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise OutputError(f"{path}: cannot write in {target.parent} ({e.strerror})") from None
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode)
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            why = "no space left on the device" if is_disk_full(e) else e.strerror or str(e)
            raise OutputError(f"{path}: could not be written ({why}); the previous file, if any, is unchanged") from None
        raise


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as JSONL atomically; returns the number of rows."""
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = (), hint: str = "") -> list[dict]:
    """Read a JSONL file. Errors name the file, the 1-based line and the missing field.

    ``hint`` is appended to the missing-file message (e.g. the command that fetches the file).
    """
    path = Path(path)
    check_input(path, hint)
    required = tuple(required)
    rows = []
    for lineno, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        except RecursionError:
            raise DataError(f"{path}:{lineno}: JSON nested too deeply to read; each line must be one flat JSON object") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for field in required:
            if field not in row or row[field] is None:
                raise DataError(f"{path}:{lineno}: missing field {field!r} (required fields: {', '.join(required)})")
        rows.append(row)
    return rows


def read_results(path: str | os.PathLike, required: Iterable[str], fix: str) -> list[dict]:
    """The rows of a results file that the project itself appends to (generations, translations): [] while it does not
    exist yet (a dangling link still counts as there, and errors); any other fault is a ResultsError ending in ``fix``."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return []
    try:
        return read_jsonl(path, required)
    except DataError as e:
        raise ResultsError(f"{e}; {fix}") from None


def check_input(path: Path, hint: str = "") -> None:
    """An input file must be a readable regular file; the error says which of those it is not."""
    if path.is_file():
        return
    if path.is_dir():
        raise DataError(f"{path} is a directory, expected a file")
    if path.is_symlink():
        raise DataError(f"{path} is a broken symbolic link (or a loop of links): it points to {os.readlink(path)}")
    if path.exists():
        raise DataError(f"{path} is not a regular file")
    raise DataError(f"missing file {path}" + (f": {hint}" if hint else ""))


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, split at \\n only (the last one is empty when the file ends with \\n);
    unreadable or non-UTF-8 files are DataErrors naming the file."""
    try:
        return Path(path).read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); the file is corrupt or not ours") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows and flush to disk, so that a crash loses at most the row being written (a torn last line is
    repaired by the reader, see generation.done_ids). A failure to write names the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        why = "no space left on the device" if is_disk_full(e) else e.strerror or str(e)
        raise OutputError(f"{path}: could not append ({why}); the rows already there are kept, rerun to resume") from None


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` is an OSError for want of space: ENOSPC, or a library's OSError that only says so in its text."""
    return isinstance(e, OSError) and (e.errno == errno.ENOSPC or "No space left" in str(e))


def move_aside(path: Path, why: str) -> Path:
    """Rename ``path`` to ``<name>.replaced-<time>`` beside it (never deleted); returns the new path."""
    from qalign_lib.core import log

    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.replaced-{stamp}")
    k = 1
    while aside.exists():
        k += 1
        aside = path.with_name(f"{path.name}.replaced-{stamp}-{k}")
    log.get(__name__).info("%s: %s; moving the old one to %s", path.name, why, aside)
    os.replace(path, aside)
    return aside


def read_json(path: Path) -> dict:
    """A JSON results file; errors name it and say how to repair it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot be read ({e})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); delete it and rerun to rebuild it") from None
    if not isinstance(obj, dict):
        raise ResultsError(f"{path}: expected a JSON object; delete it and rerun to rebuild it")
    return obj


def save_figure(fig, path: Path, dpi: int = 130) -> Path:
    """Write ``fig`` to ``path`` atomically (no half-written image; the rules of :func:`atomic_write`:
    symlinks written through, only regular files replaced, modes kept), then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def content_hash(obj) -> str:
    """SHA-256 (hex) of ``obj`` as canonical JSON (keys sorted, no whitespace, UTF-8): the same data gives the same
    hash on every machine and path, so results can record what they were computed from."""
    import hashlib

    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
