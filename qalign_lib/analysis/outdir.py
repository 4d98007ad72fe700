"""``qalign analyze ... --out DIR``: the folders the command line writes into are the project's own.

DIR is used only when it does not exist yet (it is created), is empty (but for qalign's lock file), or holds the marker
(:data:`~qalign_lib.core.layout.OUT_MARKER`, naming the analysis that wrote it), which :func:`claim` writes into
every folder it takes. Any other folder (another tool's files, a copy of someone's results, the current directory)
is a one-line :class:`~qalign_lib.core.errors.OutputError`: nothing in it is renamed or overwritten. When the
settings of a marked folder change, :func:`move_own_aside` renames only the files qalign writes there, never the
folder (its lock and marker stay where they are). Run folders under ``runs/`` are not ``--out`` folders: they carry
no marker and keep their own handling (the whole folder moved aside).
"""
from __future__ import annotations

import json
from pathlib import Path

from qalign_lib.core import files, layout
from qalign_lib.core.errors import OutputError

WHAT = ("translation", "representations")


def _writer(what: str) -> str:
    if what not in WHAT:
        raise ValueError(f"what={what!r}: one of {', '.join(WHAT)}")
    return f"qalign analyze {what}"


def _shown(out: Path, given) -> str:
    text = f"--out {given}"
    return text if str(given) == str(out.absolute()) else f"{text} ({out.absolute()})"


def check(given, what: str) -> Path:
    """The folder ``--out given`` names, when ``qalign analyze what`` may write into it (new, empty, or marked by
    the same analysis); else a one-line OutputError naming it and the fix. Writes nothing."""
    writer = _writer(what)
    if given is None or not str(given).strip():
        raise OutputError(f"--out {str(given or '')!r}: give a folder to write the analysis into (a new or empty one)")
    out = Path(given)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a directory; give a folder to write the analysis into")
    if not out.exists():
        return out
    marker = out / layout.OUT_MARKER
    if marker.is_file():
        try:
            owner = json.loads(marker.read_text(encoding="utf-8")).get("written_by")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            owner = None
        if owner == writer:
            return out
        raise OutputError(f"{_shown(out, given)}: holds the output of {owner or 'another tool'} ({marker}), not of "
                          f"{writer}; choose a new or empty folder")
    try:
        own_lock = layout.TranslationDir(out).lock_file.name  # the lock another `qalign analyze` may hold there
        entries = sorted(p.name for p in out.iterdir() if p.name != own_lock)
    except OSError as e:
        raise OutputError(f"{_shown(out, given)}: cannot be listed ({e.strerror or e}); choose a new or empty folder") from None
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise OutputError(f"{_shown(out, given)}: is not empty and was not written by qalign (it holds {shown}); "
                          f"choose a new or empty folder (nothing in it was changed)")
    return out


def claim(given, what: str) -> Path:
    """:func:`check`, then create the folder (when new) and write the marker (when missing); returns the folder."""
    out = check(given, what)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / layout.OUT_MARKER
    if not marker.is_file():
        files.write_json(marker, {"written_by": _writer(what)})
    return out


def is_marked(path: Path) -> bool:
    """True when ``path`` is an ``--out`` folder qalign took (:func:`claim`)."""
    return (Path(path) / layout.OUT_MARKER).is_file()


def move_own_aside(paths, why: str) -> list[Path]:
    """Rename each existing file of ``paths`` (files qalign writes into an ``--out`` folder) to
    ``<name>.replaced-<time>`` beside it; the folder, its marker, its lock and anything else stay."""
    return [files.move_aside(Path(p), why) for p in paths if Path(p).is_file()]
