"""parameters.check_parameters on input histories as IPython records them under papermill: the notebook's real
parameters cell, then papermill's own injected cell (PythonTranslator.codify of what `-p NAME VALUE` parses to)."""
from __future__ import annotations

import re

import nbformat
import pytest
from papermill.cli import _resolve_type
from papermill.translators import PythonTranslator

from qalign_lib.core.errors import ConfigError
from qalign_lib.notebook import parameters
from tests.helpers import ROOT

NOTEBOOKS = ("analyze", "benchmark", "evaluate", "report", "stage1", "stage2")


def _cell(name: str) -> str:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    return next(c for c in nb.cells if c.cell_type == "code").source


def _history(name: str, **cli) -> list[str]:
    """IPython's `In` after papermill ran the parameters cell and injected `-p K V` for each K=V (V as typed)."""
    given = {k: _resolve_type(v) for k, v in cli.items()}
    return ["", _cell(name), PythonTranslator.codify(given), "parameters.check_parameters()"]


# case 12: notebook-only parameters, each refused by its type before anything runs (value as typed after -p)
BAD = [  # (notebook, parameter, value typed after -p, the annotation named)
    ("evaluate", "benchmarks", "5", "NameList"),
    ("stage1", "langs", "5", "Optional[NameList]"),
    ("stage2", "langs", "5", "NameList"),
    ("stage2", "stage2_data", "5", "Optional[NameList]"),
    ("report", "extra_models", "5", "str"),
    ("report", "n_boot", "abc", "PositiveInt"),
    ("report", "n_boot", "0", "PositiveInt"),
    ("report", "n_boot", "1e3", "PositiveInt"),
    ("evaluate", "examples_per_lang", "abc", "NonNegativeInt"),
    ("analyze", "examples_per_lang", "-1", "NonNegativeInt"),
    ("evaluate", "model", "5", "Optional[str]"),
    ("analyze", "model", "5", "Optional[str]"),
    ("evaluate", "run", "5", "str"),
    ("analyze", "run", "True", "str"),
    ("stage2", "init", "5", "str"),
    ("stage1", "task", "5", "str"),
    ("report", "study", "5", "str"),
    ("report", "size", "7", "str"),
    ("benchmark", "train_steps", "abc", "Optional[PositiveInt]"),
    ("benchmark", "layers", "0", "Optional[Union[PositiveInt, str]]"),
    # an empty list is an error naming the parameter, never "all"
    ("stage1", "langs", "", "Optional[NameList]"),
    ("stage1", "langs", " , ", "Optional[NameList]"),
    ("stage2", "langs", "", "NameList"),
    ("evaluate", "benchmarks", "", "NameList"),
    ("stage2", "stage2_data", "", "Optional[NameList]"),
]


@pytest.mark.parametrize("notebook,name,typed,annotation", BAD, ids=[f"{b[0]}:{b[1]}={b[2]!r}" for b in BAD])
def test_notebook_only_parameters_are_type_checked(notebook, name, typed, annotation):
    with pytest.raises(ConfigError) as e:
        parameters.check_parameters(_history(notebook, **{name: typed}))
    message = str(e.value)
    value = _resolve_type(typed)
    assert message.startswith(f"parameter {name}={value!r}: expected {annotation} ("), message
    example = parameters.declared(_cell(notebook))[name].example
    raw = f" (or -r {name} {value} for the text {str(value)!r})" if isinstance(value, (int, float)) and \
        re.search(r"\b(str|NameList)\b", annotation) else ""
    assert message.endswith(f"; e.g. -p {name} {example}{raw}"), message
    assert "\n" not in message


def test_the_messages_say_what_is_expected():
    def message(notebook, **cli):
        with pytest.raises(ConfigError) as e:
            parameters.check_parameters(_history(notebook, **cli))
        return str(e.value)

    assert message("report", n_boot="abc") == ("parameter n_boot='abc': expected PositiveInt (an integer >= 1): input "
                                               "should be a valid integer; e.g. -p n_boot 10000")
    assert message("evaluate", model="5") == ("parameter model=5: expected Optional[str] (a string or None): input should "
                                              "be a valid string; e.g. -p model Wenhao97/QAlign-MetaMathQA-7B "
                                              "(or -r model 5 for the text '5')")
    assert message("stage1", langs="") == ("parameter langs='': expected Optional[NameList] (a comma-separated list of at "
                                           "least one name or None): an empty list: name at least one; e.g. -p langs de,zh")


GOOD = [
    ("evaluate", {"model": "Wenhao97/QAlign-MetaMathQA-7B", "run": "qalign-monoreason", "examples_per_lang": "0",
                  "benchmarks": "mgsm", "size": "7b"}),
    ("evaluate", {"model": "None"}),
    ("stage1", {"langs": "de,zh", "task": "en2x_question", "run_name": "s1-x"}),
    ("stage2", {"init": "s1-x2en_question", "stage2_data": "gsm8kinstruct,metamathqa", "langs": "all"}),
    ("report", {"n_boot": "1", "extra_models": "", "study": "paper"}),
    ("benchmark", {"layers": "auto", "train_steps": "10", "warmup_steps": "0", "parts": "generate"}),
    ("benchmark", {"layers": "4"}),
]


@pytest.mark.parametrize("notebook,cli", GOOD, ids=[f"{g[0]}:{','.join(g[1])}" for g in GOOD])
def test_good_values_pass(notebook, cli):
    parameters.check_parameters(_history(notebook, **cli))


def test_a_number_given_as_text_with_r_passes():
    """`-p run_name 5` is the number 5 (refused, the message says -r); `-r run_name 5` passes the text "5"."""
    with pytest.raises(ConfigError, match=r"\(or -r run_name 5 for the text '5'\)$"):
        parameters.check_parameters(_history("stage1", run_name="5"))
    parameters.check_parameters(["", _cell("stage1"), PythonTranslator.codify({"run_name": "5"})])


def test_config_overrides_are_left_to_config():
    """A name the notebook passes to config.resolve carries no annotation: its value is config's to check (with its
    declared range), not checked twice here."""
    parameters.check_parameters(_history("evaluate", eval_limit="abc"))
    parameters.check_parameters(_history("stage1", model="5", epochs="-1"))  # stage1's model is the config's base model
    assert "eval_limit" not in parameters.declared(_cell("evaluate"))


def test_unknown_names_are_still_refused_first():
    with pytest.raises(ConfigError, match=r"unknown parameter 'n_bot' \(did you mean 'n_boot'\?\)"):
        parameters.check_parameters(_history("report", n_bot="abc"))


def test_a_value_papermill_writes_as_code_is_refused():
    history = ["", _cell("report"), PythonTranslator.codify({"n_boot": float("nan")})]
    assert "n_boot = float('nan')" in history[2]
    with pytest.raises(ConfigError, match=r"^parameter n_boot=float\('nan'\): expected PositiveInt"):
        parameters.check_parameters(history)


def test_interactive_runs_check_nothing():
    parameters.check_parameters(["", _cell("report"), "n_boot = 'abc'"])  # no injected cell: the user's own edit
    assert parameters.injected(["", _cell("report"), "x = 1"]) is None


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_default_and_example_is_of_its_declared_type(notebook):
    for name, d in parameters.declared(_cell(notebook)).items():
        d.check(d.default)
        d.check(_resolve_type(d.example))  # what the error tells the user to type passes
        assert d.example != "None", f"{notebook}: {name} needs an 'e.g. VALUE' in its comment"


def test_an_annotation_outside_the_vocabulary_is_a_notebook_bug():
    with pytest.raises(ConfigError, match=r"notebook parameter x: annotation 'list\[str\]' is not one of str, int"):
        parameters.declared('x: "list[str]" = None\n')
    with pytest.raises(ConfigError, match=r"notebook parameter y: annotation 'Dict' is not one of"):
        parameters.declared("y: Dict = None  # e.g. 5\n")
    assert re.fullmatch(r"\d+", parameters.declared("z: int = 3  # three, e.g. 4\n")["z"].example)
