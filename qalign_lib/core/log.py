"""Logging for the whole package: ``qalign.*`` loggers, printed once per job.

Entry points (the CLI, the notebooks, the training workers) call :func:`setup` with the ``log_level`` parameter.
Under ``accelerate launch`` every worker runs the same code; records are printed by the main process only (global
rank 0, read from ``RANK`` as torchrun/accelerate set it), so a message appears once, not once per worker. Warnings
and errors of other ranks are printed too, prefixed with their rank.
"""
from __future__ import annotations

import logging
import os
import sys

ROOT = "qalign"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def get(name: str) -> logging.Logger:
    """The logger of a module: ``log.get(__name__)``."""
    name = name.removeprefix("qalign_lib.")
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class _MainProcessOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        r = rank()
        if r == 0:
            return True
        if record.levelno >= logging.WARNING:
            record.msg = f"[rank {r}] {record.msg}"
            return True
        return False


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def setup(level: str | int = "INFO") -> logging.Logger:
    """Send ``qalign.*`` records at ``level`` and above to stdout (idempotent: a second call only changes the level)."""
    if isinstance(level, str):
        if level.upper() not in LEVELS:
            from qalign_lib.core.errors import ConfigError

            raise ConfigError(f"log_level={level!r}: choose one of {', '.join(LEVELS)}")
        level = getattr(logging, level.upper())
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    logger.propagate = False
    if not any(getattr(h, "_qalign", False) for h in logger.handlers):
        logger.addHandler(_handler(_Format("%(message)s")))
    return logger


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time of the record (a notebook kernel or pytest may replace it)."""
    stream = property(lambda self: sys.stdout, lambda self, value: None)


def _handler(formatter: logging.Formatter) -> logging.Handler:
    handler = _Stdout()
    handler._qalign = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter)
    handler.addFilter(_MainProcessOnly())
    return handler


def attach(name: str, level: int = logging.INFO) -> None:
    """Print another library's logger (e.g. papermill's cell output) the same way, once."""
    other = logging.getLogger(name)
    other.setLevel(level)
    if not any(getattr(h, "_qalign", False) for h in other.handlers):
        other.addHandler(_handler(logging.Formatter("%(message)s")))
        other.propagate = False
