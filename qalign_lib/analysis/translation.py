"""Translation quality, the stage-1 task itself: each non-English question translated into English with the
stage-1 prompt (byte-identical to training), greedy, rows appended per language as they come (a rerun resumes;
changed settings move old translations aside), then chrF and BLEU against the English question of the same id,
per language and averaged, with bootstrap CIs over questions.

What is scored is not the raw output (kept in the rows) but :func:`scored_hypothesis`: its first line, cut at
``translation_length_cap`` times the reference's length in characters, so that a model which loops in English after a
translation, or instead of one, is not scored on the loop. :func:`translation_descriptives` gives what a score alone
hides: the ``floor`` (the same outputs scored against the reference of another question: what "any English question"
earns), the ``length_ratio``, the ``english_share`` (py3langid) and the ``raw`` scores before post-processing.
"""
from __future__ import annotations

import functools
import math
import time

import numpy as np
import pandas as pd

from qalign_lib.analysis import inference, outdir
from qalign_lib.analysis.inputs import REF, _key, parallel_questions
from qalign_lib.analysis.mt_metrics import METRICS, SCORES, sentence_stats, signature
from qalign_lib.core import benchmarks as registry
from qalign_lib.core import config, files, layout, log
from qalign_lib.core.errors import ConfigError, DataError, ResultsError
from qalign_lib.core.files import append_jsonl, read_results, write_json
from qalign_lib.core.languages import AVG
from qalign_lib.data import prompts

logger = log.get(__name__)

DESCRIPTIVES = ("floor", "raw", "length_ratio", "english_share")  # the columns of descriptive_table besides lang, metric


# ----------------------------------------------------------------------------------------------------------------
# Translation


def translation_prompt(question: str, lang: str) -> str:
    """The stage-1 prompt X -> English, byte for byte as training builds it."""
    return prompts.alpaca(prompts.translate(question, lang, REF))


def translation_settings(max_new_tokens: int, model_ref: str, engine: dict | None = None,
                         benchmark: str | None = None) -> dict:
    """What determines the translations (a change moves old ones aside): the model as
    :func:`qalign_lib.evaluation.evaluator.model_identity` records it (relative to the runs root, with its
    fingerprint), the prompt, decoding and engine, and, given ``benchmark``, a hash of each of its languages'
    questions (:func:`translation_inputs`; :func:`translate` adds it when absent)."""
    from qalign_lib.evaluation.evaluator import model_identity

    out = {**model_identity(model_ref), "template": prompts.ALPACA_TEMPLATE,
           "instruction": prompts.TRANSLATE_INSTRUCTION, "target": REF, "decoding": "greedy",
           "max_new_tokens": int(max_new_tokens), **(engine or {})}
    if benchmark is not None:
        out["questions"] = translation_inputs(benchmark)
    return out


def translation_inputs(benchmark: str) -> dict[str, str]:
    """{lang: hash of its (id, question) rows} for every language of ``benchmark`` (the sources and references)."""
    from qalign_lib.evaluation.evaluator import question_hashes

    return question_hashes(benchmark)


def rows_hash(rows_by_lang: dict[str, list[dict]]) -> str:
    """Content hash of the translation rows a metrics.json was computed from (recorded under ``inputs``)."""
    return files.content_hash({lang: [[r["id"], r["hypothesis"], r["reference"]] for r in rows]
                               for lang, rows in rows_by_lang.items()})


def translation_rows(out: layout.TranslationDir, lang: str, ids=None) -> list[dict]:
    """Rows of one language's translations, those of ``ids`` when given (an id twice: the first row counts). A row
    whose id is not an integer or string, or whose hypothesis or reference is not a string, is a ResultsError
    naming the file and row."""
    path = out.hypotheses(lang)
    fix = "delete the file to translate again"
    rows = read_results(path, ("id", "hypothesis", "reference"), fix)
    wanted = None if ids is None else set(ids)
    seen, kept = set(), []
    for k, row in enumerate(rows, 1):
        if not files.valid_id(row["id"]):
            raise ResultsError(f"{path}: row {k}: id {row['id']!r} must be an integer or a string; {fix}")
        for field in ("hypothesis", "reference"):
            if not isinstance(row[field], str):
                raise ResultsError(f"{path}: row {k}: field {field!r} must be a string, got "
                                   f"{type(row[field]).__name__}; {fix}")
        if row["id"] in seen or (wanted is not None and row["id"] not in wanted):
            continue
        seen.add(row["id"])
        kept.append(row)
    return kept


def translate(engine, out: layout.TranslationDir, benchmark: str, langs, limit: int | None, max_new_tokens: int,
              batch_size: int, token_budget: int | None = None, settings: dict | None = None, root=None,
              n_boot: int = 1000, length_cap: float | None = None) -> dict:
    """Translate what is missing into ``out`` with ``engine`` (:mod:`qalign_lib.models.engines`: ``generate(prompts, ...)``
    yielding ``[(index, text, new tokens)]`` per batch), then score everything (the stored outputs post-processed
    with ``length_cap``, see :func:`scored_hypothesis`; nothing is regenerated for a changed cap); writes and returns
    metrics.json: the scores, their CIs, how they were scored (``scoring``) and the descriptives."""
    from qalign_lib.models.generation import done_ids

    ids, questions = parallel_questions(benchmark, langs, limit, root)
    langs = [lang for lang in questions if lang != REF]
    want = settings or translation_settings(max_new_tokens, "unknown")
    if "questions" not in want:
        want = {**want, "questions": translation_inputs(benchmark)}
    old = files.read_json(out.settings) if out.settings.is_file() else None
    if old is not None and old != want:
        _move_old(out, "translation settings changed")
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
               **translation_metrics(rows, n_boot, length_cap=length_cap), "scoring": scoring_settings(length_cap),
               "descriptives": translation_descriptives(rows, length_cap), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
               "inputs": {"settings": files.content_hash(want), "rows": rows_hash(rows)}}
    write_json(out.metrics, metrics)
    return metrics


def _move_old(out: layout.TranslationDir, why: str) -> None:
    """Old translations out of the way: in an ``--out`` folder only qalign's own files (the folder is kept, and
    whatever else is in it), else (a run's analysis folder, all of it qalign's) the whole folder."""
    if outdir.is_marked(out.path):
        own = [out.settings, out.metrics, *(out.hypotheses(lang) for lang in registry.all_langs())]
        outdir.move_own_aside(own, why)
    else:
        files.move_aside(out.path, why)


# ----------------------------------------------------------------------------------------------------------------
# Scoring: what is scored of an output


@functools.cache
def _default_cap() -> float:
    return float(config.schema()["translation_length_cap"].default)


def resolve_cap(value: float | None = None) -> float:
    """``value``, or the declared default of ``translation_length_cap`` where None; a cap must be a number > 0."""
    if value is None:
        return _default_cap()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"translation_length_cap={value!r}: must be a number > 0 (the scored translation's most "
                          "characters, in multiples of its reference's); set it in the size file or leave the default")
    return float(value)


def scored_hypothesis(hypothesis: str, reference: str, cap: float | None = None) -> str:
    """What is scored of one raw output: its first line (``str.splitlines``; stripped), then at most
    ``floor(cap x len(reference))`` characters of it (trailing whitespace dropped); ``cap`` None: the declared
    ``translation_length_cap``. The English mGSM questions are one line each, so a translation is one line too."""
    lines = hypothesis.strip().splitlines()
    first = lines[0].strip() if lines else ""
    return first[:math.floor(resolve_cap(cap) * len(reference))].rstrip()


def scoring_settings(cap: float | None = None) -> dict:
    """How the stored translations are scored (recorded in metrics.json beside the scores)."""
    import py3langid

    return {"hypothesis": "first line of the output (stripped), cut at length_cap x the reference's characters",
            "length_cap": resolve_cap(cap), "signature": {m: signature(m) for m in METRICS},
            "floor": "each hypothesis against the reference of the next id in sorted order (cyclic)",
            "english_share": f"share of scored hypotheses py3langid {getattr(py3langid, '__version__', '?')} "
                              "classifies as 'en' (an empty one counts as not English)"}


def translation_stats(rows: list[dict], metric: str, cap: float | None = None) -> np.ndarray:
    """(n, k) sufficient statistics of ``metric`` for the rows' scored hypotheses (:func:`scored_hypothesis`)
    against their references, in the rows' order."""
    refs, cap = [r["reference"] for r in rows], resolve_cap(cap)
    return sentence_stats(metric, [scored_hypothesis(r["hypothesis"], ref, cap) for r, ref in zip(rows, refs)], refs)


def raw_stats(rows: list[dict], metric: str) -> np.ndarray:
    """The same for the raw outputs, before any post-processing (for comparison only)."""
    return sentence_stats(metric, [r["hypothesis"] for r in rows], [r["reference"] for r in rows])


def floor_stats(rows: list[dict], metric: str, cap: float | None = None) -> np.ndarray:
    """The scored hypotheses against mismatched references, a fixed derangement: sorted by id, each row's hypothesis
    (post-processed against its own reference) is scored against the reference of the next row, the last against
    the first. Needs two rows at least."""
    rows = sorted(rows, key=lambda r: _key(r["id"]))
    if len(rows) < 2:
        raise DataError(f"the translation floor needs two questions at least, got {len(rows)} (one cannot be "
                        "mismatched); translate more questions (translation_limit)")
    cap = resolve_cap(cap)
    hyps = [scored_hypothesis(r["hypothesis"], r["reference"], cap) for r in rows]
    return sentence_stats(metric, hyps, [r["reference"] for r in rows[1:] + rows[:1]])


def _corpus(stats: np.ndarray, metric: str) -> float:
    return float(SCORES[metric](stats.sum(0, keepdims=True))[0])


def _is_english(text: str) -> bool:
    import py3langid

    return bool(text.strip()) and str(py3langid.classify(text)[0]) == "en"


def _descriptives(rows: list[dict], cap: float) -> dict:
    scored = [scored_hypothesis(r["hypothesis"], r["reference"], cap) for r in rows]
    return {"floor": {m: _corpus(floor_stats(rows, m, cap), m) if len(rows) > 1 else None for m in METRICS},
            "raw": {m: _corpus(raw_stats(rows, m), m) for m in METRICS},
            "length_ratio": sum(map(len, scored)) / max(sum(len(r["reference"]) for r in rows), 1),
            "english_share": sum(map(_is_english, scored)) / len(rows)}


def translation_descriptives(rows_by_lang: dict[str, list[dict]], cap: float | None = None) -> dict:
    """``{"floor": {metric: {lang: score, "Avg": mean}}, "raw": {metric: {...}}, "length_ratio": {lang: ..., "Avg": ...},
    "english_share": {...}}``: per language on its rows, and ``Avg`` the plain mean over languages of the same
    measures on the ids translated in every language (as the scores' average). ``floor``: corpus chrF / BLEU of the
    scored hypotheses against mismatched references (:func:`floor_stats`; None under two questions); ``raw``: the
    scores of the raw outputs; ``length_ratio``: characters of the scored hypotheses / characters of the references;
    ``english_share``: share of scored hypotheses that py3langid classifies as English."""
    rows_by_lang = {lang: rows for lang, rows in rows_by_lang.items() if rows}
    out: dict = {"floor": {m: {} for m in METRICS}, "raw": {m: {} for m in METRICS}, "length_ratio": {},
                 "english_share": {}}
    if not rows_by_lang:
        return out
    cap = resolve_cap(cap)
    common = set.intersection(*({r["id"] for r in rows} for rows in rows_by_lang.values()))
    parts = {lang: _descriptives(rows, cap) for lang, rows in rows_by_lang.items()}
    if len(rows_by_lang) > 1 and common:
        parts[AVG] = _mean([_descriptives([r for r in rows if r["id"] in common], cap) for rows in rows_by_lang.values()])
    for lang, d in parts.items():
        for key in ("floor", "raw"):
            for m in METRICS:
                out[key][m][lang] = d[key][m]
        out["length_ratio"][lang], out["english_share"][lang] = d["length_ratio"], d["english_share"]
    return out


def _mean(parts: list[dict]) -> dict:
    def avg(values):
        return None if any(v is None for v in values) else float(np.mean(values))

    return {"floor": {m: avg([d["floor"][m] for d in parts]) for m in METRICS},
            "raw": {m: avg([d["raw"][m] for d in parts]) for m in METRICS},
            "length_ratio": avg([d["length_ratio"] for d in parts]),
            "english_share": avg([d["english_share"] for d in parts])}


def descriptive_table(rows_by_lang: dict[str, list[dict]], cap: float | None = None) -> pd.DataFrame:
    """:func:`translation_descriptives` as the translation table's extra columns: one row per (lang, metric) with
    ``floor`` and ``raw`` of that metric and the metric-free ``length_ratio`` and ``english_share`` (repeated), to
    merge on (lang, metric) into ``effects.translation_table``."""
    d = translation_descriptives(rows_by_lang, cap)
    rows = [{"lang": lang, "metric": m, "floor": d["floor"][m][lang], "raw": d["raw"][m][lang],
             "length_ratio": d["length_ratio"][lang], "english_share": d["english_share"][lang]}
            for m in METRICS for lang in d["length_ratio"]]
    return pd.DataFrame(rows, columns=["lang", "metric", *DESCRIPTIVES])


def translation_metrics(rows_by_lang: dict[str, list[dict]], n_boot: int = 1000, seed: int = 0,
                        length_cap: float | None = None) -> dict:
    """``{"chrf": {lang: score, "Avg": mean}, "bleu": {...}, "ci": {metric: {lang: [lo, hi]}}, "signature": ...}``:
    corpus scores of the scored hypotheses (:func:`scored_hypothesis` with ``length_cap``) per language (and their
    plain mean over languages) with percentile-bootstrap 95% CIs; the average resamples the same ids in every
    language (only ids translated in every language take part)."""
    rows_by_lang = {lang: rows for lang, rows in rows_by_lang.items() if rows}
    out: dict = {m: {} for m in METRICS}
    out["ci"] = {m: {} for m in METRICS}
    out["signature"] = {m: signature(m) for m in METRICS}
    if not rows_by_lang:
        return out
    length_cap = resolve_cap(length_cap)
    common = set.intersection(*({r["id"] for r in rows} for rows in rows_by_lang.values()))
    for metric in METRICS:
        groups = {}
        for lang, rows in rows_by_lang.items():
            ci = inference.score_ci(translation_stats(rows, metric, length_cap), SCORES[metric], n_boot, seed=seed)
            out[metric][lang], out["ci"][metric][lang] = ci["value"], [ci["lo"], ci["hi"]]
            groups[lang] = translation_stats(sorted((r for r in rows if r["id"] in common), key=lambda r: _key(r["id"])),
                                             metric, length_cap)
        if common and len(groups) > 1:
            ci = inference.score_ci(groups, SCORES[metric], n_boot, seed=seed)
            out[metric][AVG], out["ci"][metric][AVG] = ci["value"], [ci["lo"], ci["hi"]]
    return out
