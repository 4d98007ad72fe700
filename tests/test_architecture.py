"""Structural rules of the library, checked on its syntax trees (ast, not regular expressions), over every module of
every subpackage (``core.layout`` names qalign_lib/core/layout.py):

(a) no import cycle between qalign_lib modules (imports inside functions included), and the subpackages form layers:
    a module imports only from its own subpackage or from one below it (LAYERS, bottom first);
(b) the run layout's file names are spelled only in qalign_lib/core/layout.py;
(c) benchmark facts (display names, the list of benchmarks) are declared only in qalign_lib/core/benchmarks.py;
(d) no module picks a matplotlib backend;
(e) library code logs instead of printing, except the modules whose job is to print;
(f) every module imports, and no module is named like a standard-library module or like a sibling package;
and exception classes are declared only in qalign_lib/core/errors.py, under QAlignError.
"""
from __future__ import annotations

import ast
import importlib
import re
import textwrap
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = "qalign_lib"
LIB = Path(__file__).resolve().parent.parent / PACKAGE

LAYOUT_NAMES = ("run.json", "DONE", "train.jsonl", "train_log.jsonl", "metrics.json", "settings.json", "checkpoints",
                "loss.png", "lengths.json", "similarity.csv", "per_question.csv")
BENCHMARK_DISPLAY_NAMES = ("mGSM", "mSVAMP")
# modules whose job is to print: the command line, the notebook display (outside IPython), the launcher (streams
# the workers' output as it comes)
PRINT_ALLOWED = {"tools.cli", "notebook.display", "train.launch"}
# the subpackages, bottom layer first: the method (core .. report), what runs it (study), what a person touches
# (notebook helpers, developer tools)
LAYERS = ("core", "data", "models", "train", "evaluation", "analysis", "study", "report", "notebook", "tools")


def modules() -> list[str]:
    """Every module of the package as a dotted name below it ("core.layout"), subpackages included."""
    return sorted(".".join(p.relative_to(LIB).with_suffix("").parts) for p in LIB.rglob("*.py")
                  if p.stem != "__init__" and "__pycache__" not in p.parts)


def path_of(module: str) -> Path:
    return LIB.joinpath(*module.split(".")).with_suffix(".py")


@lru_cache(maxsize=None)
def tree(module: str) -> ast.Module:
    path = path_of(module)
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def docstrings(t: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module and of its classes and functions."""
    out = set()
    for node in ast.walk(t):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def strings(module: str):
    """(line, text) of every string literal of a module, docstrings left out (f-string parts included)."""
    t = tree(module)
    skip = docstrings(t)
    for node in ast.walk(t):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


# ----------------------------------------------------------------------------------------------------------------
# (a) import graph


def resolve_import(module: str, node: ast.ImportFrom) -> list[str]:
    """The dotted names (below qalign_lib) that ``from X import a, b`` in ``module`` may refer to: X itself and
    X.a, X.b (a name may be a submodule); relative imports of any level are resolved against ``module``'s package."""
    if node.level:
        package = module.split(".")[:-1]
        if node.level - 1 > len(package):
            raise AssertionError(f"{module}: import from outside the package (line {node.lineno})")
        base = package[:len(package) - (node.level - 1)] + ((node.module or "").split(".") if node.module else [])
    elif (node.module or "").split(".")[0] == PACKAGE:
        base = node.module.split(".")[1:]
    else:
        return []
    prefix = ".".join(base)
    return [prefix] + [f"{prefix}.{a.name}" if prefix else a.name for a in node.names]


def imported_modules(module: str, t: ast.AST | None = None, known: set[str] | None = None) -> set[str]:
    """The qalign_lib modules that ``module`` imports anywhere (top level or inside functions)."""
    known = set(modules()) if known is None else known
    out = set()
    for node in ast.walk(tree(module) if t is None else t):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE and len(parts) > 1:
                    out.add(".".join(parts[1:]))
        elif isinstance(node, ast.ImportFrom):
            out |= set(resolve_import(module, node))
    return (out & known) - {module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_import_graph_of_the_package_is_found():
    graph = {m: imported_modules(m) for m in modules()}
    assert {"core.config", "data.training_data", "core.layout", "core.log", "models.modeling"} <= graph["train.training"]
    assert "train.training" in graph["train.stages"] and "train.launch" in graph["train.stages"]
    assert "core.benchmarks" in graph["core.config"]  # an import inside a function counts
    assert graph["core.errors"] == set()
    assert len(modules()) > 30 and all(m.split(".")[0] in LAYERS for m in modules())


def test_no_import_cycle():
    graph = {m: imported_modules(m) for m in modules()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return [f"{m} imports {d} ({m.split('.')[0]} is below {d.split('.')[0]})" for m, deps in sorted(graph.items())
            for d in sorted(deps) if rank[d.split(".")[0]] > rank[m.split(".")[0]]]


def test_subpackages_are_layers():
    assert layer_violations({"core.x": {"report.y"}, "report.y": {"core.x"}}) == [
        "core.x imports report.y (core is below report)"]
    offenders = layer_violations({m: imported_modules(m) for m in modules()})
    assert not offenders, "an import against the layers " + " < ".join(LAYERS) + ":\n" + "\n".join(offenders)
    assert {p.name for p in LIB.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS)


def test_no_module_shadows_the_standard_library_or_a_sibling():
    import sys

    names = [m.split(".")[-1] for m in modules()]
    shadowing = sorted(set(names) & set(sys.stdlib_module_names))
    assert not shadowing, f"modules named like standard-library modules: {shadowing}"
    stems = {}
    for n in names:  # benchmark.py beside benchmarks.py: one name told apart by an s
        stems.setdefault(n.rstrip("s"), set()).add(n)
    assert all(len(v) == 1 for v in stems.values()), [sorted(v) for v in stems.values() if len(v) > 1]
    assert len(set(names)) == len(names), "two modules of one name in different subpackages"


# ----------------------------------------------------------------------------------------------------------------
# (b) the run layout is spelled in one place


def path_component_matches(text: str, names) -> list[str]:
    """The names that ``text`` spells as a path or a path component (not inside a sentence)."""
    if any(c.isspace() for c in text):
        return []
    parts = re.split(r"[/\\]", text)
    return [n for n in names if n in parts]


def test_layout_names_only_in_layout():
    assert path_component_matches("eval/metrics.json", LAYOUT_NAMES) == ["metrics.json"]
    assert path_component_matches("has no run.json: train it", LAYOUT_NAMES) == []
    offenders = [f"{m}:{line}: {text!r}" for m in modules() if m != "core.layout"
                 for line, text in strings(m) if path_component_matches(text, LAYOUT_NAMES)]
    assert not offenders, "run layout file names outside qalign_lib/core/layout.py:\n" + "\n".join(offenders)
    spelled = {n for _, text in strings("core.layout") for n in path_component_matches(text, LAYOUT_NAMES)}
    assert spelled == set(LAYOUT_NAMES)


# ----------------------------------------------------------------------------------------------------------------
# (c) benchmark facts are declared in one place


def benchmark_list_literals(module: str) -> list[str]:
    out = []
    for node in ast.walk(tree(module)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
            if {"mgsm", "msvamp"} <= values:
                out.append(f"{module}.py:{node.lineno}: {ast.unparse(node)}")
    return out


def test_benchmark_facts_only_in_the_registry():
    offenders = [f"{m}:{line}: {text!r}" for m in modules() if m != "core.benchmarks"
                 for line, text in strings(m) if text in BENCHMARK_DISPLAY_NAMES]
    offenders += [hit for m in modules() if m != "core.benchmarks" for hit in benchmark_list_literals(m)]
    assert not offenders, "benchmark facts outside qalign_lib/core/benchmarks.py:\n" + "\n".join(offenders)
    assert {text for _, text in strings("core.benchmarks")} >= set(BENCHMARK_DISPLAY_NAMES)  # declared there


# ----------------------------------------------------------------------------------------------------------------
# (d) and (e): calls that library code must not make


def calls(module: str, t: ast.AST | None = None):
    """(line, dotted name) of every call in a module: print, matplotlib.use, plt.switch_backend, ..."""
    t = tree(module) if t is None else t
    aliases = {}  # local name -> module it is bound to (import matplotlib as mpl)
    for node in ast.walk(t):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(t):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.insert(0, f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.insert(0, aliases.get(f.id, f.id))
                yield node.lineno, ".".join(parts)


def test_no_matplotlib_backend_is_chosen():
    offenders = [f"{m}:{line}: {name}" for m in modules() for line, name in calls(m)
                 if name in ("matplotlib.use", "matplotlib.pyplot.switch_backend")]
    assert not offenders, "a library module picks a matplotlib backend (leave it to the notebook):\n" + "\n".join(offenders)


def test_library_code_logs_instead_of_printing():
    printing = {m for m in modules() for _, name in calls(m) if name == "print"}
    assert printing <= PRINT_ALLOWED, f"print() in {sorted(printing - PRINT_ALLOWED)}: use log.get(__name__)"
    assert PRINT_ALLOWED <= set(modules())


def test_checkers_catch_violations():
    """The checkers above, on made-up modules that break each rule."""
    source = textwrap.dedent("""
        import matplotlib as mpl
        from matplotlib import pyplot as plt
        import qalign_lib.data.corpora
        from . import config, not_a_module
        from .layout import run
        from ..train import training as t

        def f():
            from qalign_lib.train.stages import stage1
            mpl.use("Agg")
            plt.switch_backend("Agg")
            print("x")
            path = "checkpoints/checkpoint-1"
            name = "mGSM"
            return [b for b in ("msvamp", "mgsm")]
    """)
    t = ast.parse(source)
    assert imported_modules("core.probe", t) == {"data.corpora", "core.config", "core.layout", "train.training",
                                                 "train.stages"}
    assert [name for _, name in calls("probe", t)] == ["matplotlib.use", "matplotlib.pyplot.switch_backend", "print"]
    literals = {node.value for node in ast.walk(t) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert any(path_component_matches(text, LAYOUT_NAMES) for text in literals)
    assert literals & set(BENCHMARK_DISPLAY_NAMES)
    assert any(isinstance(n, ast.Tuple) and {"mgsm", "msvamp"} <= {e.value for e in n.elts} for n in ast.walk(t))


# ----------------------------------------------------------------------------------------------------------------
# the error hierarchy: declared once, in errors.py


def test_error_classes_only_in_errors():
    offenders = [f"{m}:{node.lineno}: class {node.name}" for m in modules() if m != "core.errors"
                 for node in ast.walk(tree(m)) if isinstance(node, ast.ClassDef) and node.name.endswith("Error")]
    assert not offenders, "exception classes outside qalign_lib/core/errors.py (one hierarchy):\n" + "\n".join(offenders)
    from qalign_lib.core import errors

    declared = [node.name for node in tree("core.errors").body if isinstance(node, ast.ClassDef)]
    assert declared[0] == "QAlignError" and len(declared) > 1
    assert all(issubclass(getattr(errors, name), errors.QAlignError) for name in declared)


# ----------------------------------------------------------------------------------------------------------------
# (f) every module imports


@pytest.mark.parametrize("module", modules())
def test_every_module_imports(module):
    importlib.import_module(f"{PACKAGE}.{module}")


# ----------------------------------------------------------------------------------------------------------------
# a worker entry (`python -m qalign_lib.x.y`) runs the whole module first: its __main__ block must come last, or it
# calls code defined below it (a worker once died saving its loss curve, defined after the block)


def main_block_not_last(t: ast.Module) -> bool:
    blocks = [i for i, node in enumerate(t.body)
              if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test)]
    return any(i != len(t.body) - 1 for i in blocks)


def test_main_blocks_come_last():
    assert main_block_not_last(ast.parse("if __name__ == '__main__':\n    f()\n\ndef f():\n    pass\n"))
    assert not main_block_not_last(ast.parse("def f():\n    pass\n\nif __name__ == '__main__':\n    f()\n"))
    offenders = [m for m in modules() if main_block_not_last(tree(m))]
    assert not offenders, f"an `if __name__ == '__main__'` block that is not the module's last statement: {offenders}"
