"""Notebook support: papermill's injected parameters must be parameters the notebook declares.

papermill runs the ``parameters`` cell, then a cell of its own that starts with ``# Parameters`` and assigns every
``-p NAME VALUE``; an unknown name is only a warning there, so a misspelled ``-p eval_limt 1`` would silently run the
default. :func:`check_parameters`, called first thing after the parameters cell, reads both cells from IPython's
input history and stops at once, naming each unknown name and the closest declared one. Run interactively (no
injected cell), it does nothing.
"""
from __future__ import annotations

import ast
import difflib

from qalign_lib.core.errors import ConfigError

INJECTED_HEADER = "# Parameters\n"  # papermill's PythonTranslator.codify(comment="Parameters")


def _assigned(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]


def injected(history: list[str]) -> tuple[list[str], list[str]] | None:
    """(declared, injected) names of the last papermill injection in an input history, or None if there is none."""
    for k in range(len(history) - 1, 0, -1):
        if history[k].startswith(INJECTED_HEADER):
            return _assigned(history[k - 1]), _assigned(history[k])
    return None


def check_parameters(history: list[str] | None = None) -> None:
    """Stop with a ConfigError if papermill injected a name the parameters cell does not declare."""
    if history is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
        if shell is None:
            return
        history = list(shell.user_ns.get("In") or [])
    found = injected(history)
    if found is None:
        return
    declared, given = found
    unknown = [name for name in given if name not in declared]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, declared, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for this notebook; "
                          f"it takes: {', '.join(declared)}")
