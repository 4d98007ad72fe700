"""The study-level comparison, the code that tests the paper's mechanism claim: :func:`collect` reads every
analysed system of a study, the tables put systems side by side, and :func:`effects` gives the paired difference
between two systems on the same question ids (bootstrap over ids, jointly across languages), with
:func:`summary` as the sentence the report opens with.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from qalign_lib.analysis import inference
from qalign_lib.analysis.inputs import REF, _key, parallel_questions
from qalign_lib.analysis.mt_metrics import METRICS, SCORES
from qalign_lib.analysis.pipeline import _langs, target
from qalign_lib.analysis.representations import (
    MEASURES,
    read_per_question,
    similarity_table,
)
from qalign_lib.analysis.translation import (
    translation_metrics,
    translation_rows,
    translation_stats,
)
from qalign_lib.core import benchmarks as registry
from qalign_lib.core import layout
from qalign_lib.core.errors import RunError
from qalign_lib.core.languages import AVG

# ----------------------------------------------------------------------------------------------------------------
# A study's analyses, for the report


def collect(study) -> tuple[dict, dict]:
    """({system: {benchmark: {"translation": {lang: rows}, "representations": per-question frame}}}, absent) for
    the systems of the study's ``analyses``. A system is absent (with the reason) when its run is not finished or
    it has not been analysed; any other problem raises."""
    cfg = study.cfg
    found: dict = {}
    absent: dict = {}
    for system, refs in study.analyses.items():
        refs = [refs] if isinstance(refs, str) else list(refs)  # a list of run refs, one per seed (studies.py)
        if len(refs) != 1:  # bridging until the seeds are pooled here (helper "stats")
            absent[system] = f"{len(refs)} seeds ({', '.join(refs)}): pooling over seeds is not implemented here yet"
            continue
        ref = refs[0]
        try:
            root = target(cfg, **layout.target_of(ref))
        except RunError as e:
            absent[system] = str(e).split(";")[0]
            continue
        per_bench = {}
        for benchmark in registry.parse(cfg.analysis_benchmarks):
            part = {}
            tdir, rdir = root.translation(benchmark), root.representations(benchmark)
            if tdir.metrics.is_file():
                ids, questions = parallel_questions(benchmark, _langs(cfg, benchmark), cfg.translation_limit)
                rows = {lang: translation_rows(tdir, lang, ids) for lang in questions if lang != REF}
                part["translation"] = {lang: r for lang, r in rows.items() if r}
            if rdir.per_question.is_file():
                part["representations"] = read_per_question(rdir)
            if part:
                per_bench[benchmark] = part
        if per_bench:
            found[system] = per_bench
        else:
            absent[system] = f"not analysed ({root.path})"
    return found, absent


def translation_table(found: dict, systems: list[str], benchmark: str, n_boot: int = 1000) -> pd.DataFrame:
    """Columns system, lang, metric, score, lo, hi, n: every system's chrF and BLEU per language and averaged."""
    rows = []
    for system in systems:
        per_lang = (found.get(system, {}).get(benchmark) or {}).get("translation")
        if not per_lang:
            continue
        m = translation_metrics(per_lang, n_boot)
        for metric in METRICS:
            for lang, score in m[metric].items():
                lo, hi = m["ci"][metric][lang]
                n = len(per_lang[lang]) if lang != AVG else min(len(r) for r in per_lang.values())
                rows.append({"system": system, "lang": lang, "metric": metric, "score": score, "lo": lo, "hi": hi, "n": n})
    return pd.DataFrame(rows, columns=["system", "lang", "metric", "score", "lo", "hi", "n"])


def representation_table(found: dict, systems: list[str], benchmark: str, n_boot: int = 1000) -> pd.DataFrame:
    """Every system's similarity table (per language, ``Avg`` and layer) with a system column."""
    frames = []
    for system in systems:
        pq = (found.get(system, {}).get(benchmark) or {}).get("representations")
        if pq is not None and len(pq):
            frames.append(similarity_table(pq, n_boot).assign(system=system))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[["system", *[c for c in table.columns if c != "system"]]]


def _translation_groups(per_lang: dict[str, list[dict]], ids: list, metric: str) -> dict[str, np.ndarray]:
    out = {}
    for lang, rows in per_lang.items():
        by_id = {r["id"]: r for r in rows}
        out[lang] = translation_stats([by_id[i] for i in ids], metric)
    return out


def _representation_groups(pq: pd.DataFrame, measure: str, ids: list, langs: list[str]) -> dict[str, np.ndarray]:
    """{lang: mean_stats of ``measure`` averaged over layers, per id (in ``ids`` order)}."""
    out = {}
    for lang in langs:
        means = pq[pq["lang"] == lang].groupby("id")[measure].mean()
        out[lang] = inference.mean_stats(means.reindex(ids).to_numpy())
    return out


def effects(found: dict, pairs, benchmark: str, n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """The difference b - a of each pair (a, b) of systems on the same questions, per language and averaged over
    languages (lang ``Avg``, languages.AVG): chrF and BLEU (corpus scores), and each representation measure averaged over every
    layer (embeddings included), with 95% paired-bootstrap CIs and p-values over question ids. Only the languages
    and ids both systems have take part. Columns: a, b, measure, lang, n, value a, value b, diff, lo, hi, p,
    excludes zero."""
    rows = []
    for a, b in pairs:
        fa, fb = found.get(a, {}).get(benchmark) or {}, found.get(b, {}).get(benchmark) or {}
        ta, tb = fa.get("translation"), fb.get("translation")
        if ta and tb:
            langs = [lang for lang in ta if lang in tb]
            ids = sorted(set.intersection(*({r["id"] for r in ta[lang]} & {r["id"] for r in tb[lang]} for lang in langs)),
                         key=_key) if langs else []
            if ids:
                for metric in METRICS:
                    ga, gb = _translation_groups({x: ta[x] for x in langs}, ids, metric), \
                        _translation_groups({x: tb[x] for x in langs}, ids, metric)
                    rows += _effect_rows(a, b, metric, ga, gb, SCORES[metric], n_boot, seed)
        pa, pb = fa.get("representations"), fb.get("representations")
        if pa is not None and pb is not None:
            langs = [lang for lang in pa["lang"].unique() if lang in set(pb["lang"])]
            ids = sorted(set(pa["id"]) & set(pb["id"]), key=_key)
            if langs and len(ids) >= 2:
                for measure in MEASURES:
                    rows += _effect_rows(a, b, measure, _representation_groups(pa, measure, ids, langs),
                                         _representation_groups(pb, measure, ids, langs), inference.mean_score, n_boot, seed)
    columns = ["a", "b", "measure", "lang", "n", "value a", "value b", "diff", "lo", "hi", "p", "excludes zero"]
    return pd.DataFrame(rows, columns=columns)


def _effect_rows(a, b, measure, ga, gb, score, n_boot, seed) -> list[dict]:
    rows = []
    for lang in [*ga, AVG] if len(ga) > 1 else list(ga):
        pick = (lambda g: g) if lang == AVG else (lambda g: {lang: g[lang]})
        d = inference.paired_score_diff(pick(ga), pick(gb), score, n_boot, seed=seed)
        rows.append({"a": a, "b": b, "measure": measure, "lang": lang, "n": d["n"], "value a": d["a"], "value b": d["b"],
                     "diff": d["diff"], "lo": d["lo"], "hi": d["hi"], "p": d["p_value"],
                     "excludes zero": bool(d["lo"] > 0 or d["hi"] < 0)})
    return rows


def summary(effect_rows: pd.DataFrame, a: str, b: str) -> str:
    """One sentence per measure of a pair's averaged effects, e.g. 'chrF +12.3 [9.1, 15.2] (CI excludes zero)'."""
    labels = {"chrf": "chrF", "bleu": "BLEU", "cosine": "cosine", "centred_cosine": "centred cosine",
              "retrieval_top1": "retrieval top-1", "retrieval_top1_centred": "centred retrieval top-1"}
    rows = effect_rows[(effect_rows["a"] == a) & (effect_rows["b"] == b) & (effect_rows["lang"] == AVG)]
    parts = []
    for _, r in rows.iterrows():
        digits = 1 if r["measure"] in METRICS else 4
        verdict = "CI excludes zero" if r["excludes zero"] else "CI includes zero"
        parts.append(f"{labels.get(r['measure'], r['measure'])} {r['diff']:+.{digits}f} "
                     f"[{r['lo']:+.{digits}f}, {r['hi']:+.{digits}f}] ({verdict})")
    return "; ".join(parts)
