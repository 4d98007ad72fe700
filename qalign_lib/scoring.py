"""Answer extraction and accuracy: the one scorer of the project.

``reference`` is the rule of the QAlign / MathOctopus evaluation scripts, kept bug-for-bug so that numbers compare
with the paper: commas between digits are removed with ``re.sub(r"(\\d),(\\d)", ...)`` (one pass, as there), the last
match of ``\\d+(\\.\\d+)?`` is the prediction (so a minus sign is ignored), and a response without a number predicts
0.0. ``strict`` removes every comma between digits, reads a leading minus sign, and counts "no number" as wrong.
A prediction is correct when |pred - gold| < 1e-3.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from .io import DataError, read_jsonl
from .languages import BENCHMARK_LANGS, LANGS

TOLERANCE = 1e-3
SCORERS = ("reference", "strict")

_REF_COMMA = re.compile(r"(\d),(\d)")
_REF_NUMBER = re.compile(r"(\d+(\.\d+)?)")
_STRICT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_STRICT_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_reference(text: str) -> float:
    text = _REF_COMMA.sub(r"\g<1>\g<2>", text)
    found = _REF_NUMBER.findall(text)
    return float(found[-1][0]) if found else 0.0


def extract_strict(text: str) -> float | None:
    found = _STRICT_NUMBER.findall(_STRICT_COMMA.sub("", text))
    return float(found[-1]) if found else None


EXTRACT = {"reference": extract_reference, "strict": extract_strict}


def extract(text: str, scorer: str = "reference") -> float | None:
    if scorer not in EXTRACT:
        raise ValueError(f"unknown scorer {scorer!r}; choose one of: {', '.join(SCORERS)}")
    return EXTRACT[scorer](text)


def is_correct(pred: float | None, gold: float) -> bool:
    return pred is not None and abs(pred - float(gold)) < TOLERANCE


def score_rows(rows: list[dict], gold: dict[str, dict], benchmark: str, scorer: str = "reference", source: str = "generations") -> dict:
    """Score rows {"lang","id","response"} against ``gold[lang][id]``.

    Returns {"benchmark","scorer","n","accuracy","average","average_non_en","average_langs","per_question"} where
    ``per_question[lang][id] = {"pred", "correct"}``; accuracies are percentages. The average is the plain mean over
    the paper's ten languages present (English included, Telugu excluded).
    """
    allowed = BENCHMARK_LANGS.get(benchmark)
    if allowed is None:
        raise DataError(f"unknown benchmark {benchmark!r}; choose one of: {', '.join(BENCHMARK_LANGS)}")
    per_question: dict[str, dict] = defaultdict(dict)
    for i, row in enumerate(rows, 1):
        lang, ident = row["lang"], row["id"]
        if lang not in allowed:
            raise DataError(f"{source}: row {i}: language {lang!r} is not part of {benchmark} ({' '.join(allowed)})")
        if lang not in gold:
            raise DataError(f"{source}: row {i}: no gold answers loaded for {benchmark} {lang}")
        if ident not in gold[lang]:
            raise DataError(f"{source}: row {i}: id {ident!r} is not a {benchmark} {lang} question")
        if ident in per_question[lang]:
            raise DataError(f"{source}: row {i}: id {ident!r} ({lang}) appears twice")
        pred = extract(row["response"], scorer)
        per_question[lang][ident] = {"pred": pred, "correct": is_correct(pred, gold[lang][ident])}
    order = [lang for lang in allowed if lang in per_question]
    n = {lang: len(per_question[lang]) for lang in order}
    acc = {lang: 100.0 * sum(q["correct"] for q in per_question[lang].values()) / n[lang] for lang in order}
    in_avg = [lang for lang in LANGS if lang in acc]
    non_en = [lang for lang in in_avg if lang != "en"]
    mean = lambda langs: round(sum(acc[lang] for lang in langs) / len(langs), 4) if langs else None  # noqa: E731
    return {
        "benchmark": benchmark,
        "scorer": scorer,
        "n": n,
        "accuracy": {lang: round(a, 4) for lang, a in acc.items()},
        "average": mean(in_avg),
        "average_non_en": mean(non_en),
        "average_langs": in_avg,
        "per_question": {lang: per_question[lang] for lang in order},
    }


def score_file(path: str | Path, benchmark: str, scorer: str = "reference", root=None) -> dict:
    """Score a generations JSONL file; gold answers are looked up in the data directory."""
    from .data import gold_answers

    rows = read_jsonl(path, ("lang", "id", "response"))
    if not rows:
        raise DataError(f"{path}: no generations to score")
    langs = sorted({r["lang"] for r in rows if r["lang"] in BENCHMARK_LANGS.get(benchmark, ())})
    gold = {lang: gold_answers(benchmark, lang, root) for lang in langs}
    return score_rows(rows, gold, benchmark, scorer, source=str(path))


def summary(result: dict) -> str:
    """The public part of a score (no per-question detail) as one JSON line."""
    return json.dumps({k: v for k, v in result.items() if k != "per_question"}, ensure_ascii=False)
