"""The project's exceptions: one base class, one subclass per kind of problem a user can fix.

The CLI turns any :class:`QAlignError` into a one-line ``qalign: error: ...`` and exit status 1; in a notebook it
stops the cell with the same message. Every message names the file, field or parameter at fault and the fix.
"""
from __future__ import annotations


class QAlignError(Exception):
    """Base of every error a user can act on (as opposed to a bug, which surfaces as a traceback)."""


class ConfigError(QAlignError, ValueError):
    """A bad parameter or parameter file: names the key, the value, the expected type and the file."""


class DataError(QAlignError, ValueError):
    """Bad or missing input data: names the file, the line or field, and the fix."""


class ModelError(QAlignError):
    """A model that cannot be loaded or used here (unknown reference, no GPU for a GPU size, ...)."""


class OutputError(QAlignError):
    """An output that cannot be written: not a regular file, a directory, read-only, no space left."""


class RunError(QAlignError):
    """A run that is not in the state asked for (not finished, locked, written by something else)."""


class ResultsError(QAlignError, ValueError):
    """A results file (generations, metrics, settings) that cannot be read: names the file and how to repair it."""


class LaunchError(QAlignError):
    """Multi-process training failed: the worker's own error, the exit code and the path of the full log."""


class StudyError(QAlignError):
    """A step of ``qalign study`` failed: names the step, its notebook and the executed copy with the traceback."""
