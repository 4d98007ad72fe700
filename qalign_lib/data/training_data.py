"""Training examples: the stage-1 tasks (question alignment and its ablations, built per non-English language
from parallel data aligned by id) and the stage-2 data (MetaMathQA, GSM8K, GSM8KInstruct), each as Alpaca
prompt/completion rows; :func:`build` for one task, :func:`build_mixture` for the mixed setting.
"""
from __future__ import annotations

import os
import random

from qalign_lib.core.errors import DataError
from qalign_lib.core.files import write_jsonl
from qalign_lib.core.languages import LANGS, NON_EN, parse_langs
from qalign_lib.data import prompts
from qalign_lib.data.corpora import read_rows

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


def build(task: str, langs=None, limit: int | None = None, root=None) -> list[dict]:
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
            for row in build(task, langs if only_english or task not in MONOLINGUAL else None, limit, root)]
    random.Random(seed).shuffle(rows)
    return rows


def write_examples(rows: list[dict], out: str | os.PathLike) -> int:
    return write_jsonl(out, rows)
