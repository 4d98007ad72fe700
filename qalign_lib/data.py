"""Datasets: where each one lives under the data directory, loaders with validation, and the training examples.

Every dataset is a JSONL file (FLORES: plain text, one sentence per line) in the normalized layout described by
``shared/data/MANIFEST.md`` and written by ``qalign data download``. Loaders return ``datasets.Dataset`` objects.
Parallel data is aligned by ``id``, never by line number. Anything absent is an error naming the file and the fix;
nothing is ever replaced by another dataset or language.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from . import benchmarks, prompts
from .errors import DataError
from .io import check_input, read_jsonl, read_lines, write_jsonl
from .languages import LANGS, NON_EN, parse_langs

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


def _check_numeric(rows: list[dict], path: Path, field: str) -> None:
    for i, row in enumerate(rows, 1):
        try:
            float(str(row[field]).replace(",", ""))
        except ValueError:
            raise DataError(f"{path}: row {i} (id {row.get('id')!r}): field {field!r} = {row[field]!r} is not a number") from None


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


# ----------------------------------------------------------------------------------------------------------------
# Training examples: rows {"prompt", "completion", "lang", "id"}


def _example(instruction: str, completion: str, lang: str, ident: str) -> dict:
    return {"prompt": prompts.alpaca(instruction), "completion": completion, "lang": lang, "id": ident}


def _aligned(a: list[dict], b: list[dict], what: str) -> list[tuple[dict, dict]]:
    """Pairs of rows with the same id (in the order of ``a``); errors if they share none."""
    by_id = {r["id"]: r for r in b}
    pairs = [(r, by_id[r["id"]]) for r in a if r["id"] in by_id]
    if not pairs:
        raise DataError(f"{what}: the two files share no id; parallel data is aligned by id")
    return pairs


def _question_pairs(lang, root):
    return [(r["question"], r["question_en"], r["id"]) for r in read_rows("gsm8kinstruct_question", lang, root=root)]


def _response_pairs(lang, root):
    pairs = _aligned(read_rows("gsm8kinstruct", lang, root=root), read_rows("gsm8kinstruct", "en", root=root),
                     f"gsm8kinstruct {lang} vs en")
    return [(x["answer"], en["answer"], x["id"]) for x, en in pairs]


def _flores_pairs(lang, root, split="devtest"):
    x, en = read_rows("flores", lang, split, root), read_rows("flores", "en", split, root)
    if len(x) != len(en):
        raise DataError(f"flores/{split}: {lang} has {len(x)} sentences but en has {len(en)}; the files must be line-aligned")
    return [(a["text"], b["text"], a["id"]) for a, b in zip(x, en)]


def _translation(pairs_fn, direction: str):
    def build(lang: str, root=None) -> list[dict]:
        src, tgt = (lang, "en") if direction == "x2en" else ("en", lang)
        out = []
        for x_text, en_text, ident in pairs_fn(lang, root):
            x_text, en_text = x_text.strip(), en_text.strip()  # as the reference (gsmtrans.py:129-137): both sides
            if not x_text or not en_text:                       # stripped, a pair with an empty side skipped
                continue
            source_text, target_text = (x_text, en_text) if direction == "x2en" else (en_text, x_text)
            out.append(_example(prompts.translate(source_text, src, tgt), target_text, lang, f"{lang}-{ident}"))
        return out
    return build


# Stage-1 tasks (question alignment and its ablations), each built per non-English language.
STAGE1_TASKS = {
    "x2en_question": _translation(_question_pairs, "x2en"),  # QAlign
    "en2x_question": _translation(_question_pairs, "en2x"),
    "x2en_response": _translation(_response_pairs, "x2en"),
    "en2x_response": _translation(_response_pairs, "en2x"),
    "flores_x2en": _translation(_flores_pairs, "x2en"),
}


def _gsm8k(lang, root=None):
    return [_example(r["question"], r["answer"], "en", f"gsm8k-{r['id']}") for r in read_rows("gsm8k", "en", "train", root)]


def _metamathqa(lang, root=None):
    return [_example(r["query"], r["response"], "en", f"metamathqa-{r['id']}") for r in read_rows("metamathqa", "en", root=root)]


def _gsm8kinstruct(lang, root=None):
    return [_example(r["question"], r["answer"], lang, f"gsm8kinstruct-{lang}-{r['id']}") for r in read_rows("gsm8kinstruct", lang, root=root)]


# Stage-2 data (response alignment): English-only sets take lang "en"; gsm8kinstruct is built per language.
STAGE2_DATA = {"metamathqa": _metamathqa, "gsm8k": _gsm8k, "gsm8kinstruct": _gsm8kinstruct}
MONOLINGUAL = ("metamathqa", "gsm8k")
TASKS = {**STAGE1_TASKS, **STAGE2_DATA}

# What each task reads, for data checks: task -> (dataset[:split], languages it needs given the requested ones)
NEEDS = {
    "x2en_question": lambda langs: {"gsm8kinstruct_question": langs},
    "en2x_question": lambda langs: {"gsm8kinstruct_question": langs},
    "x2en_response": lambda langs: {"gsm8kinstruct": [*langs, "en"]},
    "en2x_response": lambda langs: {"gsm8kinstruct": [*langs, "en"]},
    "flores_x2en": lambda langs: {"flores": [*langs, "en"]},
    "metamathqa": lambda langs: {"metamathqa": ["en"]},
    "gsm8k": lambda langs: {"gsm8k:train": ["en"]},
    "gsm8kinstruct": lambda langs: {"gsm8kinstruct": langs},
}


def task_langs(task: str, langs) -> list[str]:
    """Validate the languages requested for a task ('all' = every language the task is defined for)."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; stage-1 tasks: {', '.join(STAGE1_TASKS)}; stage-2 data: {', '.join(STAGE2_DATA)}")
    if task in MONOLINGUAL:
        if langs not in (None, "all", "en", ["en"], ("en",)):
            raise DataError(f"langs={langs!r} for {task}: it is English-only data; leave langs unset (or 'en')")
        return ["en"]
    allowed = LANGS if task == "gsm8kinstruct" else NON_EN
    return parse_langs(langs if langs is not None else "all", allowed=allowed, what=f"langs for {task}")


def build(task: str, langs=None, limit: int | None = None, seed: int = 1234, root=None) -> list[dict]:
    """Training examples of one task; ``limit`` keeps the first N examples per language (file order)."""
    rows = []
    for lang in task_langs(task, langs):
        examples = TASKS[task](lang, root)
        rows += examples[:limit] if limit else examples
    return rows


def build_mixture(tasks: list[str], langs=None, limit: int | None = None, seed: int = 1234, root=None) -> list[dict]:
    """Several tasks concatenated and shuffled with ``seed`` (the mixed setting of one training run)."""
    only_english = all(task in MONOLINGUAL for task in tasks)  # else langs are those of the multilingual tasks
    rows = [row for task in tasks
            for row in build(task, langs if only_english or task not in MONOLINGUAL else None, limit, seed, root)]
    random.Random(seed).shuffle(rows)
    return rows


def write_examples(rows: list[dict], out: str | os.PathLike) -> int:
    return write_jsonl(out, rows)
