"""Training examples: the stage-1 tasks (question alignment and its ablations, built per non-English language
from parallel data aligned by id) and the stage-2 data (MetaMathQA, GSM8K, GSM8KInstruct), each as Alpaca
prompt/completion rows; :func:`build` for one task, :func:`build_mixture` for the mixed setting.
"""
from __future__ import annotations

import hashlib
import os
import random
from typing import Callable

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
    # control: the X->En questions with each X question's English target replaced by the English of another
    # question of the same language and the same selection (a seeded derangement, :func:`derange`): the format,
    # domain and English outputs of x2en_question without its alignment signal
    "x2en_question_shuffled": _translation(_question_pairs, "x2en"),
}
DERANGED = ("x2en_question_shuffled",)  # stage-1 tasks whose targets are deranged within the selected examples


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
    "x2en_question_shuffled": lambda langs: {"gsm8kinstruct_question": langs},
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


def _key(seed: int, example: dict) -> str:
    """The seeded sort key of an example: a hash of the seed and its source id (the id without the language), so that
    a seed picks the same source items in every language that has them, and a smaller set is a prefix of a larger."""
    source = example["id"].removeprefix(f"{example['lang']}-")
    return hashlib.sha256(f"{seed}:{source}".encode()).hexdigest()


def ordered(examples: list[dict], seed: int | None) -> list[dict]:
    """One language's examples in selection order: file order (``seed`` None) or the seeded order of :func:`_key`."""
    return list(examples) if seed is None else sorted(examples, key=lambda ex: _key(seed, ex))


def derange(examples: list[dict], seed: int | None, lang: str) -> list[dict]:
    """The examples with their completions permuted so that none keeps its own (nor an identical) completion: a
    uniformly drawn derangement (shuffles redrawn until none has a fixed point), seeded by ``seed`` and the language."""
    targets = [ex["completion"] for ex in examples]
    if len(set(targets)) < 2:
        raise DataError(f"x2en_question_shuffled [{lang}]: {len(examples)} example(s) with {len(set(targets))} distinct "
                        "target(s) cannot be deranged; select at least 2 per language (stage1_limit >= 2)")
    rng = random.Random(f"derange:{seed}:{lang}")
    order = list(range(len(targets)))
    while True:
        rng.shuffle(order)
        if all(targets[j] != targets[i] for i, j in enumerate(order)):
            return [{**ex, "completion": targets[j]} for ex, j in zip(examples, order)]


def target_tokens(examples: list[dict], count_tokens: Callable[[str], int]) -> int:
    """Supervised target tokens of a set: the completions' tokens (the EOS each example adds is not counted)."""
    return sum(count_tokens(ex["completion"]) for ex in examples)


def _match(examples: list[dict], budget: int, count_tokens, what: str) -> list[dict]:
    """The prefix of ``examples`` whose target tokens are closest to ``budget`` (ties: the shorter)."""
    total, best, best_gap = 0, 0, budget
    for k, ex in enumerate(examples, 1):
        total += count_tokens(ex["completion"])
        if abs(total - budget) < best_gap:
            best, best_gap = k, abs(total - budget)
        if total >= budget:
            break
    if total < budget:
        raise DataError(f"{what}: all {len(examples)} examples hold {total} target tokens, fewer than the {budget} to "
                        "match; match a smaller set (stage1_limit) or leave stage1_match_tokens unset")
    return examples[:best]


def build(task: str, langs=None, limit: int | None = None, root=None, subset_seed: int | None = None,
          match: str | None = None, count_tokens: Callable[[str], int] | None = None) -> list[dict]:
    """Training examples of one task; ``limit`` keeps N examples per language: the first N in file order, or with
    ``subset_seed`` a seeded random sample (:func:`ordered`; the same source ids in every language where they exist).
    ``match`` (a stage-1 task) cuts each language's examples, in the same order and with no limit, to the prefix whose
    target tokens (``count_tokens``) are closest to those of ``match`` built with the same languages, limit and seed."""
    if match is not None:
        if match not in STAGE1_TASKS or task not in STAGE1_TASKS:
            raise DataError(f"stage1_match_tokens={match!r} for task {task!r}: both must be stage-1 tasks "
                            f"({', '.join(STAGE1_TASKS)})")
        if count_tokens is None:
            raise DataError("stage1_match_tokens needs a token counter (the model's tokenizer); pass count_tokens")
    rows = []
    for lang in task_langs(task, langs):
        examples = ordered(TASKS[task](lang, root), subset_seed)
        if match is not None:
            budget = target_tokens(build(match, [lang], limit, root, subset_seed), count_tokens)
            examples = _match(examples, budget, count_tokens, f"{task} [{lang}] matched to {match}")
        elif limit:
            examples = examples[:limit]
        rows += derange(examples, subset_seed, lang) if task in DERANGED else examples
    return rows


def build_mixture(tasks: list[str], langs=None, limit: int | None = None, seed: int = 1234, root=None, **select) -> list[dict]:
    """Several tasks concatenated and shuffled with ``seed`` (the mixed setting of one training run); ``select``:
    :func:`build`'s ``subset_seed``, ``match`` and ``count_tokens``."""
    only_english = all(task in MONOLINGUAL for task in tasks)  # else langs are those of the multilingual tasks
    rows = [row for task in tasks
            for row in build(task, langs if only_english or task not in MONOLINGUAL else None, limit, root, **select)]
    random.Random(seed).shuffle(rows)
    return rows


def write_examples(rows: list[dict], out: str | os.PathLike) -> int:
    return write_jsonl(out, rows)
