"""Translation quality, the stage-1 task itself: each non-English question translated into English with the
stage-1 prompt (byte-identical to training), greedy, rows appended per language as they come (a rerun resumes;
changed settings move old translations aside), then chrF and BLEU against the English question of the same id,
per language and averaged, with bootstrap CIs over questions.
"""
from __future__ import annotations

import time

import numpy as np

from qalign_lib.analysis import inference
from qalign_lib.analysis.inputs import REF, _key, parallel_questions
from qalign_lib.analysis.mt_metrics import METRICS, SCORES, sentence_stats, signature
from qalign_lib.core import files, layout, log
from qalign_lib.core.files import append_jsonl, read_results, write_json
from qalign_lib.core.languages import AVG
from qalign_lib.data import prompts

logger = log.get(__name__)



# ----------------------------------------------------------------------------------------------------------------
# Translation


def translation_prompt(question: str, lang: str) -> str:
    """The stage-1 prompt X -> English, byte for byte as training builds it."""
    return prompts.alpaca(prompts.translate(question, lang, REF))


def translation_settings(max_new_tokens: int, model_ref: str, engine: dict | None = None) -> dict:
    """What determines the translations (a change moves old ones aside)."""
    return {"model": model_ref, "template": prompts.ALPACA_TEMPLATE, "instruction": prompts.TRANSLATE_INSTRUCTION,
            "target": REF, "decoding": "greedy", "max_new_tokens": int(max_new_tokens), **(engine or {})}


def translation_rows(out: layout.TranslationDir, lang: str, ids=None) -> list[dict]:
    """Rows of one language's translations, those of ``ids`` when given (an id twice: the first row counts)."""
    rows = read_results(out.hypotheses(lang), ("id", "hypothesis", "reference"), "delete the file to translate again")
    wanted = None if ids is None else set(ids)
    seen, kept = set(), []
    for row in rows:
        if row["id"] in seen or (wanted is not None and row["id"] not in wanted):
            continue
        seen.add(row["id"])
        kept.append(row)
    return kept


def translate(engine, out: layout.TranslationDir, benchmark: str, langs, limit: int | None, max_new_tokens: int,
              batch_size: int, token_budget: int | None = None, settings: dict | None = None, root=None,
              n_boot: int = 1000) -> dict:
    """Translate what is missing into ``out`` with ``engine`` (:mod:`qalign_lib.models.engines`: ``generate(prompts, ...)``
    yielding ``[(index, text, new tokens)]`` per batch), then score everything; writes and returns metrics.json."""
    from qalign_lib.models.generation import done_ids

    ids, questions = parallel_questions(benchmark, langs, limit, root)
    langs = [lang for lang in questions if lang != REF]
    want = settings or translation_settings(max_new_tokens, "unknown")
    old = files.read_json(out.settings) if out.settings.is_file() else None
    if old is not None and old != want:
        files.move_aside(out.path, "translation settings changed")
    write_json(out.settings, want)
    todo = []
    for lang in langs:
        have = done_ids(out.hypotheses(lang))
        todo += [(lang, i) for i in ids if i not in have]
    if todo:
        logger.info("%s: translating %d questions (%s) into English", benchmark, len(todo), ",".join(langs))
        texts = [translation_prompt(questions[lang][i], lang) for lang, i in todo]
        for batch in engine.generate(texts, max_new_tokens, batch_size, token_budget, desc=f"translate {benchmark}"):
            by_lang: dict[str, list[dict]] = {}
            for k, text, n in sorted(batch):
                lang, i = todo[k]
                by_lang.setdefault(lang, []).append({"id": i, "lang": lang, "source": questions[lang][i],
                                                     "hypothesis": text.strip(), "reference": questions[REF][i],
                                                     "new_tokens": n})
            for lang, rows in by_lang.items():
                append_jsonl(out.hypotheses(lang), rows)
    rows = {lang: translation_rows(out, lang, ids) for lang in langs}
    metrics = {"benchmark": benchmark, "model": want.get("model"), "n": {lang: len(r) for lang, r in rows.items()},
               **translation_metrics(rows, n_boot), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(out.metrics, metrics)
    return metrics


def translation_stats(rows: list[dict], metric: str) -> np.ndarray:
    return sentence_stats(metric, [r["hypothesis"] for r in rows], [r["reference"] for r in rows])


def translation_metrics(rows_by_lang: dict[str, list[dict]], n_boot: int = 1000, seed: int = 0) -> dict:
    """``{"chrf": {lang: score, "Avg": mean}, "bleu": {...}, "ci": {metric: {lang: [lo, hi]}}, "signature": ...}``:
    corpus scores per language (and their plain mean over languages) with percentile-bootstrap 95% CIs; the
    average resamples the same ids in every language (only ids translated in every language take part)."""
    rows_by_lang = {lang: rows for lang, rows in rows_by_lang.items() if rows}
    out: dict = {m: {} for m in METRICS}
    out["ci"] = {m: {} for m in METRICS}
    out["signature"] = {m: signature(m) for m in METRICS}
    if not rows_by_lang:
        return out
    common = set.intersection(*({r["id"] for r in rows} for rows in rows_by_lang.values()))
    for metric in METRICS:
        groups = {}
        for lang, rows in rows_by_lang.items():
            ci = inference.score_ci(translation_stats(rows, metric), SCORES[metric], n_boot, seed=seed)
            out[metric][lang], out["ci"][metric][lang] = ci["value"], [ci["lo"], ci["hi"]]
            groups[lang] = translation_stats(sorted((r for r in rows if r["id"] in common), key=lambda r: _key(r["id"])),
                                             metric)
        if common and len(groups) > 1:
            ci = inference.score_ci(groups, SCORES[metric], n_boot, seed=seed)
            out[metric][AVG], out["ci"][metric][AVG] = ci["value"], [ci["lo"], ci["hi"]]
    return out
