"""Answer extraction as named scorers, and accuracy: the one scorer registry of the project.

``reference`` is the rule of the QAlign / MathOctopus evaluation scripts, kept bug-for-bug so that numbers compare
with the paper: commas between digits are removed with ``re.sub(r"(\\d),(\\d)", ...)`` (one pass, as there), the last
match of ``\\d+(\\.\\d+)?`` is the prediction (so a minus sign is ignored), and a response without a number predicts
0.0 (a number too long for a float, 400 digits, is inf there, as in the scripts: never correct). ``strict`` removes
every comma between digits, reads a leading minus sign, and counts "no number" (or one too long for a float) as wrong.
Both patterns read digits only, so a response's "nan" or "inf" is never a number.
A prediction is correct when |pred - gold| < 1e-3. Register another with ``@scorer("name", "what it does")``.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qalign_lib.core import benchmarks
from qalign_lib.core.errors import ConfigError, DataError, ResultsError
from qalign_lib.core.files import read_jsonl, valid_id

TOLERANCE = 1e-3


@dataclass(frozen=True)
class Scorer:
    name: str
    extract: Callable[[str], float | None]
    about: str


REGISTRY: dict[str, Scorer] = {}


def scorer(name: str, about: str):
    """Register an extraction function ``text -> number or None`` under ``name``."""
    def register(fn):
        REGISTRY[name] = Scorer(name, fn, about)
        return fn
    return register


_REF_COMMA = re.compile(r"(\d),(\d)")
_REF_NUMBER = re.compile(r"(\d+(\.\d+)?)")
_STRICT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_STRICT_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@scorer("reference", "QAlign/MathOctopus extract_last_num, bug for bug: last unsigned number, none -> 0.0")
def extract_reference(text: str) -> float:
    text = _REF_COMMA.sub(r"\g<1>\g<2>", text)
    found = _REF_NUMBER.findall(text)
    return float(found[-1][0]) if found else 0.0


@scorer("strict", "last signed number after removing thousands commas; no number is wrong")
def extract_strict(text: str) -> float | None:
    found = _STRICT_NUMBER.findall(_STRICT_COMMA.sub("", text))
    number = float(found[-1]) if found else None
    return number if number is None or math.isfinite(number) else None  # 400 digits parse as inf: no number


DEFAULT = "reference"


def __getattr__(name: str):
    if name == "SCORERS":  # the registered scorers' names, read at use: a scorer registered later is included
        return tuple(REGISTRY)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(name: str) -> Scorer:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown scorer {name!r}; choose one of: {', '.join(REGISTRY)}") from None


def extract(text: str, scorer: str = DEFAULT) -> float | None:
    return get(scorer).extract(text)


def is_correct(pred: float | None, gold: float) -> bool:
    return pred is not None and abs(pred - float(gold)) < TOLERANCE


def score_rows(rows: list[dict], gold: dict[str, dict], benchmark: str, scorer: str = DEFAULT, source: str = "generations") -> dict:
    """Score rows {"lang","id","response"} against ``gold[lang][id]``.

    Returns {"benchmark","scorer","n","accuracy","average","average_non_en","average_langs","per_question"} where
    ``per_question[lang][id] = {"pred", "correct"}``; accuracies are percentages. The average is the plain mean over
    the benchmark's averaged languages that are present (the paper's ten: English included, Telugu excluded).
    """
    b = benchmarks.get(benchmark)
    extract_fn = get(scorer).extract
    per_question: dict[str, dict] = defaultdict(dict)
    for i, row in enumerate(rows, 1):
        lang, ident, response = row.get("lang"), row.get("id"), row.get("response")
        if not isinstance(lang, str) or lang not in b.langs:
            raise ResultsError(f"{source}: row {i}: language {lang!r} is not part of {b.name} ({' '.join(b.langs)})")
        if lang not in gold:
            raise ResultsError(f"{source}: row {i}: no gold answers loaded for {b.name} {lang}")
        if not valid_id(ident) or ident not in gold[lang]:
            raise ResultsError(f"{source}: row {i}: id {ident!r} is not a {b.name} {lang} question")
        if not isinstance(response, str):
            raise ResultsError(f"{source}: row {i}: field 'response' must be a string, got {type(response).__name__}")
        if ident in per_question[lang]:
            raise ResultsError(f"{source}: row {i}: id {ident!r} ({lang}) appears twice; delete one of the two rows")
        pred = extract_fn(response)
        per_question[lang][ident] = {"pred": pred, "correct": is_correct(pred, gold[lang][ident])}
    order = [lang for lang in b.langs if lang in per_question]
    n = {lang: len(per_question[lang]) for lang in order}
    acc = {lang: 100.0 * sum(q["correct"] for q in per_question[lang].values()) / n[lang] for lang in order}
    in_avg = [lang for lang in b.averaged if lang in acc]
    non_en = [lang for lang in in_avg if lang != "en"]
    mean = lambda langs: round(sum(acc[lang] for lang in langs) / len(langs), 4) if langs else None  # noqa: E731
    return {
        "benchmark": b.name,
        "scorer": scorer,
        "n": n,
        "accuracy": {lang: round(a, 4) for lang, a in acc.items()},
        "average": mean(in_avg),
        "average_non_en": mean(non_en),
        "average_langs": in_avg,
        "per_question": {lang: per_question[lang] for lang in order},
    }


def public(result: dict) -> dict:
    """A score without its per-question detail."""
    return {k: v for k, v in result.items() if k != "per_question"}


def score_file(path: str | Path, benchmark: str, scorer: str = DEFAULT, root=None) -> dict:
    """Score a generations JSONL file; gold answers are looked up in the data directory."""
    from qalign_lib.data.corpora import gold_answers

    b = benchmarks.get(benchmark)
    rows = read_jsonl(path, ("lang", "id", "response"))
    if not rows:
        raise DataError(f"{path}: no generations to score")
    langs = sorted({r["lang"] for r in rows if r["lang"] in b.langs})
    gold = {lang: gold_answers(b.name, lang, root) for lang in langs}
    return score_rows(rows, gold, b.name, scorer, source=str(path))


def summary(result: dict) -> str:
    """The public part of a score (no per-question detail) as one JSON line."""
    return json.dumps(public(result), ensure_ascii=False)
