"""Datasets: where each one lives under the data directory and loaders with validation (the training examples
built from them: :mod:`.training_data`).

Every dataset is a JSONL file (FLORES: plain text, one sentence per line) in the normalized layout described by
``shared/data/MANIFEST.md`` and written by ``qalign data download``. Loaders return ``datasets.Dataset`` objects.
Parallel data is aligned by ``id``, never by line number. Anything absent is an error naming the file and the fix;
nothing is ever replaced by another dataset or language.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from qalign_lib.core import benchmarks
from qalign_lib.core.errors import DataError
from qalign_lib.core.files import check_input, read_jsonl, read_lines, valid_id
from qalign_lib.core.languages import LANGS, NON_EN

# The longest question a benchmark row may hold. mGSM's longest is 693 characters (de; mSVAMP's 404, GSM8K train's 985),
# so 20,000 (about 29 times mGSM's longest) refuses only a broken or hostile file: a 1,000,000-character question made
# `qalign analyze representations --limit 2` try to allocate 62.5 GB (issue 21 case 11).
MAX_QUESTION_CHARS = 20_000

FETCH = "fetch it with `qalign data download --out DIR` on a machine with internet and set QALIGN_DATA_DIR=DIR"


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data directory: ``path`` if given, else $QALIGN_DATA_DIR, else ``data/``."""
    return Path(path or os.environ.get("QALIGN_DATA_DIR") or "data").expanduser().resolve()


@dataclass(frozen=True)
class Spec:
    path: str  # relative to the data directory; {lang} and {split} are filled in
    langs: tuple[str, ...]
    fields: tuple[str, ...]
    about: str
    splits: tuple[str, ...] = ("",)
    note: str = ""  # extra help when a file is missing
    note_langs: tuple[str, ...] = ()  # the languages the note is about (empty: all)


DATASETS: dict[str, Spec] = {
    **{b.name: Spec(b.path, b.langs, ("id", b.question_field, b.answer_field), b.about) for b in benchmarks.REGISTRY.values()},
    "gsm8k": Spec("gsm8k/{split}.jsonl", ("en",), ("id", "question", "answer"), "GSM8K (English)", ("train", "test")),
    "gsm8kinstruct": Spec(
        "gsm8kinstruct/{lang}.jsonl", LANGS, ("id", "question", "answer"),
        "GSM8KInstruct (MathOctopus), question + chain of thought per language",
        note="multilingual GSM8KInstruct answers are not in the offline snapshot (only en)", note_langs=NON_EN,
    ),
    "gsm8kinstruct_question": Spec(
        "gsm8kinstruct_question/{lang}.jsonl", NON_EN, ("id", "question_en", "question"),
        "QAlign stage-1 question translations X<->En",
        note="the bn and th translations are not in the offline snapshot (only their English sides in en_side_only/)",
        note_langs=("bn", "th"),
    ),
    "flores": Spec("flores/{split}/{lang}.txt", LANGS, (), "FLORES-200 general-domain sentences", ("devtest", "dev")),
    "metamathqa": Spec(
        "metamathqa/metamathqa.jsonl", ("en",), ("query", "response"), "MetaMathQA 395k (English)",
        note="MetaMathQA is not in the offline snapshot",
    ),
}


def spec(dataset: str) -> Spec:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[dataset]


def path_of(dataset: str, lang: str = "en", split: str | None = None, root=None) -> Path:
    """Where ``dataset`` for ``lang`` (and ``split``) lives; errors for a language the dataset does not have."""
    s = spec(dataset)
    if lang not in s.langs:
        raise DataError(f"dataset {dataset!r} has no language {lang!r}; it exists for: {' '.join(s.langs)}")
    split = s.splits[0] if split is None else split
    if split not in s.splits:
        raise DataError(f"dataset {dataset!r} has no split {split!r}; splits: {' '.join(s.splits)}")
    return data_dir(root) / s.path.format(lang=lang, split=split)


def _missing_hint(dataset: str, lang: str | None = None) -> str:
    s = spec(dataset)
    applies = s.note and (not s.note_langs or lang in s.note_langs)
    return (f"{s.note}; " if applies else "") + FETCH


def _check_ids(rows: list[dict], path: Path) -> None:
    seen = set()
    for i, row in enumerate(rows, 1):
        if row["id"] in seen:
            raise DataError(f"{path}: row {i}: duplicate id {row['id']!r}; ids must be unique within a file")
        seen.add(row["id"])


def _check_benchmark_rows(rows: list[dict], path: Path, field: str) -> None:
    """A benchmark's ids are integers or strings, all of one type (results files and tables keep them as they are),
    and its questions are strings."""
    kind = type(rows[0]["id"])
    for i, row in enumerate(rows, 1):
        if not valid_id(row["id"]) or type(row["id"]) is not kind:
            raise DataError(f"{path}: row {i}: id {row['id']!r} must be an integer or a string, all of one type "
                            f"(row 1's is {kind.__name__}); correct the file or restore it ({FETCH})")
        if not isinstance(row[field], str):
            raise DataError(f"{path}: row {i} (id {row['id']!r}): field {field!r} must be a string, got "
                            f"{type(row[field]).__name__}; correct the file or restore it ({FETCH})")
        if len(row[field]) > MAX_QUESTION_CHARS:
            raise DataError(f"{path}: row {i} (id {row['id']!r}): field {field!r} is {len(row[field]):,} characters, over "
                            f"the limit of {MAX_QUESTION_CHARS:,} (a benchmark question is a few hundred); correct the "
                            f"file or restore it ({FETCH})")


def _check_numeric(rows: list[dict], path: Path, field: str) -> None:
    """Gold answers are finite numbers ("1,234" allowed): "nan" or "inf" parse as floats but no response can match them."""
    for i, row in enumerate(rows, 1):
        try:
            number = float(str(row[field]).replace(",", ""))
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise DataError(f"{path}: row {i} (id {row.get('id')!r}): field {field!r} = {row[field]!r} is not a finite "
                            f"number; correct the file or restore it ({FETCH})")


def read_rows(dataset: str, lang: str = "en", split: str | None = None, root=None) -> list[dict]:
    """Validated rows of one dataset file as plain dicts."""
    s = spec(dataset)
    path = path_of(dataset, lang, split, root)
    if path.suffix == ".txt":
        check_input(path, _missing_hint(dataset, lang))
        lines = read_lines(path)
        if lines and lines[-1] == "":
            lines.pop()
        for i, line in enumerate(lines, 1):
            if not line.strip():
                raise DataError(f"{path}:{i}: empty sentence; FLORES files have one sentence per line and no blank lines")
        return [{"id": i, "text": t} for i, t in enumerate(lines)]
    rows = read_jsonl(path, ("id", *s.fields) if dataset != "metamathqa" else s.fields, hint=_missing_hint(dataset, lang))
    if not rows:
        raise DataError(f"{path}: the file has no rows; restore it ({FETCH})")
    if dataset == "metamathqa":
        for i, row in enumerate(rows):
            row.setdefault("id", i)
    if dataset in benchmarks.REGISTRY:
        _check_benchmark_rows(rows, path, benchmarks.get(dataset).question_field)
    _check_ids(rows, path)
    if dataset in benchmarks.REGISTRY:
        _check_numeric(rows, path, benchmarks.get(dataset).answer_field)
    return rows


def load(dataset: str, lang: str = "en", split: str | None = None, root=None, limit: int | None = None) -> Dataset:
    """Load one dataset as a ``datasets.Dataset`` (first ``limit`` rows in file order if given)."""
    rows = read_rows(dataset, lang, split, root)
    return Dataset.from_list(rows[:limit] if limit else rows)


def load_benchmark(benchmark: str, lang: str, root=None, limit: int | None = None) -> Dataset:
    """A test set of the benchmark registry with fields id, question, answer (gold number as a string)."""
    b = benchmarks.get(benchmark)
    rows = read_rows(b.name, lang, root=root)
    rows = [{"id": r["id"], "question": r[b.question_field], "answer": r[b.answer_field]} for r in rows]
    return Dataset.from_list(rows[:limit] if limit else rows)


def gold_answers(benchmark: str, lang: str, root=None) -> dict:
    """id -> gold number (float) for one benchmark language."""
    field = benchmarks.get(benchmark).answer_field
    return {r["id"]: float(str(r[field]).replace(",", "")) for r in read_rows(benchmark, lang, root=root)}


# ----------------------------------------------------------------------------------------------------------------
# Data check


def available(dataset: str, lang: str, split: str | None = None, root=None) -> int | None:
    """Number of rows of a dataset file, or None when it is absent."""
    path = path_of(dataset, lang, split, root)
    if not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None


def check(requirements: dict[str, list[str]] | None = None, root=None) -> tuple[str, list[str]]:
    """A table dataset x language -> rows (``-`` absent, ``·`` not defined) and the list of missing requirements.

    ``requirements`` maps a dataset (optionally ``name:split``) to the languages a study needs.
    """
    requirements = requirements or {}
    cols = list(benchmarks.all_langs())
    header = f"{'dataset':<28}" + "".join(f"{c:>7}" for c in cols)
    lines = [f"data directory: {data_dir(root)}", header, "-" * len(header)]
    for dataset, s in DATASETS.items():
        for split in s.splits:
            label = f"{dataset}:{split}" if split else dataset
            cells = []
            for lang in cols:
                if lang not in s.langs:
                    cells.append("·")
                    continue
                n = available(dataset, lang, split or None, root)
                # "gsm8k:train" names a split; a bare "gsm8k" means its first split
                wanted = requirements.get(label) or (requirements.get(dataset) if split == s.splits[0] else None) or []
                cells.append(("-" if n is None else str(n)) + ("*" if lang in wanted else ""))
            lines.append(f"{label:<28}" + "".join(f"{c:>7}" for c in cells))
    missing = []
    for key, langs in requirements.items():
        dataset, _, split = key.partition(":")
        for lang in langs:
            if available(dataset, lang, split or None, root) is None:
                missing.append(f"{key} [{lang}]: missing {path_of(dataset, lang, split or None, root)} ({_missing_hint(dataset, lang)})")
    lines.append("rows per file; * required by the study, - absent, · not defined for that language")
    return "\n".join(lines), missing
