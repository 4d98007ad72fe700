"""Notebook support: papermill's injected parameters must be parameters the notebook declares, of the declared type.

papermill runs the ``parameters`` cell, then a cell of its own that starts with ``# Parameters`` and assigns every
``-p NAME VALUE``; an unknown name is only a warning there, so a misspelled ``-p eval_limt 1`` would silently run the
default, and papermill checks no type, so ``-p n_boot abc`` would fail only deep inside the work. :func:`check_parameters`,
called first thing after the parameters cell, reads both cells from IPython's input history and stops at once with a
one-line ConfigError, naming each unknown name and the closest declared one, or a value of the wrong type.

Types: a notebook's own parameters (not the config overrides, which ``config.resolve`` checks against their declaration
in qalign_lib/core/config.py) carry their type as an annotation in the parameters cell, where the reader sees it:
``n_boot: "PositiveInt" = 10000  # ...``. The annotation is one of :data:`TYPES` (``Optional[...]`` and ``Union[...]`` of
them), quoted where it is not a builtin, because papermill's ``--help-notebook`` lists only annotations made of names,
brackets and commas (``str | None`` would hide the parameter) and the cell runs without importing anything. Values are
checked strictly (pydantic): ``-p n_boot abc`` or ``-p model 5`` is refused, never converted. The error's example is the
comment's ``e.g. VALUE`` where there is one, else the declared default. Run interactively (no injected cell), nothing
is checked.
"""
from __future__ import annotations

import ast
import difflib
import re
import shlex
from typing import Annotated, Optional, Union

import pydantic
from pydantic import AfterValidator, NonNegativeInt, PositiveInt

from qalign_lib.core.errors import ConfigError

INJECTED_HEADER = "# Parameters\n"  # papermill's PythonTranslator.codify(comment="Parameters")


def _name_list(value: str) -> str:
    if not [v for v in value.split(",") if v.strip()]:
        raise ValueError("an empty list: name at least one")
    return value


NameList = Annotated[str, AfterValidator(_name_list)]

# the annotations a parameters cell may use, with what they mean (said in the error)
TYPES: dict[str, tuple[object, str]] = {
    "str": (str, "a string"),
    "int": (int, "an integer"),
    "float": (float, "a number"),
    "bool": (bool, "True or False"),
    "PositiveInt": (PositiveInt, "an integer >= 1"),
    "NonNegativeInt": (NonNegativeInt, "an integer >= 0"),
    "NameList": (NameList, "a comma-separated list of at least one name"),
}


def _assigned(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]


def injected(history: list[str]) -> tuple[list[str], list[str]] | None:
    """(declared, injected) names of the last papermill injection in an input history, or None if there is none."""
    found = _cells(history)
    return None if found is None else (_assigned(found[0]), _assigned(found[1]))


def _cells(history: list[str]) -> tuple[str, str] | None:
    """(parameters cell, injected cell) sources of the last papermill injection in an input history."""
    for k in range(len(history) - 1, 0, -1):
        if history[k].startswith(INJECTED_HEADER):
            return history[k - 1], history[k]
    return None


# ----------------------------------------------------------------------------------------------------------------
# Declared types


class Declared(pydantic.BaseModel):
    """One annotated parameter of a parameters cell: its name, annotation text, type, default and example."""
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True, frozen=True)
    name: str
    annotation: str
    type: object
    default: object
    example: str

    def check(self, value) -> None:
        """ConfigError (one line) unless ``value`` is of the declared type; no conversion."""
        try:
            pydantic.TypeAdapter(self.type, config=pydantic.ConfigDict(strict=True)).validate_python(value)
        except pydantic.ValidationError as e:
            why = e.errors()[0]["msg"].removeprefix("Value error, ")
            raw = ""  # papermill reads `-p NAME 5` as a number; `-r NAME 5` passes the text
            if isinstance(value, (bool, int, float)) and re.search(r"\b(str|NameList)\b", self.annotation):
                raw = f" (or -r {self.name} {value} for the text {str(value)!r})"
            raise ConfigError(f"parameter {self.name}={value!r}: expected {self.annotation} ({_meaning(self.annotation)}): "
                              f"{why[:1].lower() + why[1:]}; e.g. -p {self.name} {self.example}{raw}") from None


def _meaning(annotation: str) -> str:
    words = [TYPES[w][1] for w in re.findall(r"\w+", annotation) if w in TYPES]
    return " or ".join(words + (["None"] if "Optional" in annotation else []))


def _type(node: ast.expr, text: str, name: str):
    if isinstance(node, ast.Name) and node.id in TYPES:
        return TYPES[node.id][0]
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in ("Optional", "Union"):
        args = tuple(_type(e, text, name) for e in (node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]))
        return Optional[args[0]] if node.value.id == "Optional" and len(args) == 1 else Union[args]  # noqa: UP007
    raise ConfigError(f"notebook parameter {name}: annotation {text!r} is not one of {', '.join(TYPES)} "
                      "(or Optional[...] / Union[...] of them)")


def _example(comment: str, default) -> str:
    """The comment's ``e.g. VALUE`` (as typed after ``-p NAME``), else the default."""
    m = re.search(r"e\.g\.\s+(\"[^\"]*\"|'[^']*'|[^\s;,)]+)", comment)
    if m:
        return shlex.quote(m.group(1).strip("\"'"))
    return shlex.quote(str(default))


def declared(source: str) -> dict[str, Declared]:
    """The annotated parameters of a parameters cell (its unannotated ones are config overrides, checked by config)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    out = {}
    for node in tree.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
            continue
        name = node.target.id
        ann = node.annotation
        text = ann.value if isinstance(ann, ast.Constant) and isinstance(ann.value, str) else ast.unparse(ann)
        try:
            tp = _type(ast.parse(text, mode="eval").body, text, name)
        except SyntaxError:
            raise ConfigError(f"notebook parameter {name}: annotation {text!r} is not a type") from None
        default = ast.literal_eval(node.value)
        comment = lines[node.end_lineno - 1].partition("#")[2] if node.end_lineno else ""
        out[name] = Declared(name=name, annotation=text, type=tp, default=default, example=_example(comment, default))
    return out


def _values(source: str) -> dict[str, object]:
    """The values papermill's injected cell assigns (literals: papermill writes them with repr)."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:  # float('nan') and the like: not a literal, shown as written
                value = _Unparsed(ast.unparse(node.value))
            out.update({t.id: value for t in node.targets if isinstance(t, ast.Name)})
    return out


class _Unparsed:
    """An injected value that is not a literal: of no declared type, shown as papermill wrote it."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def check_parameters(history: list[str] | None = None) -> None:
    """Stop with a ConfigError if papermill injected a name the parameters cell does not declare, or a value of a
    notebook's own parameter that is not of its annotated type."""
    if history is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
        if shell is None:
            return
        history = list(shell.user_ns.get("In") or [])
    found = _cells(history)
    if found is None:
        return
    declared_names, given = _assigned(found[0]), _assigned(found[1])
    unknown = [name for name in given if name not in declared_names]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, declared_names, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for this notebook; "
                          f"it takes: {', '.join(declared_names)}")
    typed = declared(found[0])
    for name, value in _values(found[1]).items():
        if name in typed:
            typed[name].check(value)
