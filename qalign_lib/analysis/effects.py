"""The study-level comparison, the code that tests the paper's mechanism claim: :func:`collect` reads every
analysed system of a study (each of its runs: one per training seed), the tables put systems side by side,
:func:`effects` gives the paired difference between two systems on the same question ids, :func:`layer_effects` the
same per layer, and :func:`summary` the sentence the report opens with.

Statistics (:mod:`qalign_lib.analysis.inference`), per effect row: the difference b - a; a 95% percentile-bootstrap CI
over question ids (the same resampled ids in every language: mGSM is parallel, the question is the unit), B = n_boot;
a two-sided paired permutation (sign-flip) test over question ids (``p``: swapping a and b for a question swaps them
in every language at once; exact when 2^n <= n_resamples, else 10,000 random swaps from a fixed seed); ``p_adj``,
Holm over the row's declared family; ``mde``, the minimum detectable effect at 80% power, two-sided, at level
0.05 / m (the first Holm step of a family of m), from the SD of the per-question differences (jackknife pseudo-values;
paired t as the approximation); ``verdict`` from ``p_adj`` at 0.05.

Declared families (design before data, fixed here and not by any result):

* **primary** (one family per study and benchmark): every declared effect pair x the primary measures, translation
  ``chrf`` and ``bleu`` and :data:`PRIMARY` of the representations (``representations.PRIMARY``), on the average over
  languages (``Avg``). Holm over the whole family; m = pairs x (2 + len(PRIMARY)).
* **exploratory** (one family per pair and measure): the per-language rows of every measure, and for the descriptive
  representation measures (``representations.MEASURES`` outside ``PRIMARY``) also their ``Avg`` row; Holm within each
  family. They describe; they do not carry the claim.
* **layers** (:func:`layer_effects`, one family per pair and primary representation measure): the per-layer
  differences on ``Avg``; Holm across the layers.

Representation effects average each measure over ``representations.summary_layers(L)`` (layers 1..L, declared a
priori): layer 0 is the embeddings, which LoRA / stage 1 never changes, so it would only dilute the average.

Seeds: a system may be several runs (``study.analyses[system]`` a list of run refs). The point estimate is then the
mean over its seeds; the CI resamples seeds within each system (with replacement) and question ids jointly; the
permutation test runs on the seed-averaged per-question statistics, so its p is conditional on these seeds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from qalign_lib.analysis import inference
from qalign_lib.analysis import representations as _representations
from qalign_lib.analysis.inputs import REF, _key, parallel_questions
from qalign_lib.analysis.mt_metrics import METRICS, SCORES
from qalign_lib.analysis.pipeline import _langs, target
from qalign_lib.analysis.representations import (
    MEASURES,
    read_per_question,
    similarity_table,
)
from qalign_lib.analysis.translation import (
    DESCRIPTIVES,
    descriptive_table,
    translation_metrics,
    translation_rows,
    translation_stats,
)
from qalign_lib.core import benchmarks as registry
from qalign_lib.core import layout
from qalign_lib.core.errors import RunError
from qalign_lib.core.languages import AVG

ALPHA = 0.05  # the level of every verdict (after Holm)
POWER = 0.8  # the power the MDE is computed at
# The primary representation measures: representations.PRIMARY (helper "reps"); until that exists, the two
# mean-centred measures (declared before any result: centring removes each language's mean offset).
PRIMARY: tuple[str, ...] = tuple(getattr(_representations, "PRIMARY", ("centred_cosine", "retrieval_top1_centred")))
PRIMARY_FAMILY = "primary"
SIGNIFICANT, NOT_SIGNIFICANT = "significant (Holm)", "not significant (Holm)"
COLUMNS = ["a", "b", "measure", "lang", "n", "value a", "value b", "diff", "lo", "hi", "p", "p_adj", "family", "mde",
           "verdict"]
LAYER_COLUMNS = ["a", "b", "measure", "layer", "n", "value a", "value b", "diff", "lo", "hi", "p", "p_adj", "family",
                 "mde", "verdict"]


def summary_layers(n_layers: int) -> list[int]:
    """The layers a representation effect is averaged over (representations.summary_layers: 1..L)."""
    own = getattr(_representations, "summary_layers", None)
    return list(own(n_layers)) if own is not None else list(range(1, int(n_layers) + 1))


def measure_info(measure: str) -> dict:
    """dict(label, digits) of a measure: representations.MEASURE_INFO where it has it."""
    info = dict(getattr(_representations, "MEASURE_INFO", {}).get(measure) or {})
    fallback = {"chrf": ("chrF", 1), "bleu": ("BLEU", 1), "cosine": ("cosine", 4),
                "centred_cosine": ("centred cosine", 4), "retrieval_top1": ("retrieval top-1", 3),
                "retrieval_top1_centred": ("centred retrieval top-1", 3)}
    label, digits = fallback.get(measure, (measure, 4))
    return {"label": info.get("label", label), "digits": int(info.get("digits", digits))}


def primary_measures() -> tuple[str, ...]:
    """The measures of the primary family: chrF, BLEU and the primary representation measures."""
    return (*METRICS, *PRIMARY)


# ----------------------------------------------------------------------------------------------------------------
# A study's analyses, for the report


def _refs(ref) -> list[str]:
    """A system's run refs: one (a str) or one per seed (a list)."""
    refs = [ref] if isinstance(ref, str) else list(ref)
    if not refs or not all(isinstance(r, str) for r in refs):
        raise ValueError(f"a system's analyses must be a run ref or a non-empty list of run refs, got {ref!r}")
    return refs


def _read_replicate(cfg, ref: str) -> tuple[dict, str | None]:
    """({benchmark: {"translation": {lang: rows}, "representations": per-question frame}}, why absent or None)."""
    try:
        root = target(cfg, **layout.target_of(ref))
    except RunError as e:
        return {}, str(e).split(";")[0]
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
    return per_bench, None if per_bench else f"not analysed ({root.path})"


def collect(study) -> tuple[dict, dict]:
    """({system: {benchmark: {"translation": {lang: rows}, "representations": per-question frame, "replicates":
    [one such dict per run]}}}, absent) for the systems of the study's ``analyses``. ``study.analyses[system]`` is
    one run ref or a list of them (one per training seed); every replicate is kept under ``replicates`` (in the
    order declared) and the first one's ``translation`` / ``representations`` stand at the top for the descriptive
    tables. A system is absent (with the reason) when none of its runs is finished and analysed; a missing
    replicate of a system that has others is listed as absent as ``<system> (run k of m)``. Any other problem
    raises."""
    cfg = study.cfg
    found: dict = {}
    absent: dict = {}
    for system, ref in study.analyses.items():
        refs = _refs(ref)
        reps, why = [], {}
        for k, r in enumerate(refs):
            part, reason = _read_replicate(cfg, r)
            if reason is None:
                reps.append(part)
            else:
                why[k] = reason
        if not reps:
            absent[system] = why[0]
            continue
        for k, reason in why.items():
            absent[f"{system} (run {k + 1} of {len(refs)})"] = reason
        benches = [b for b in reps[0] if all(b in p for p in reps)]
        found[system] = {b: {**reps[0][b], "replicates": [p[b] for p in reps]} for b in benches}
    return found, absent


def replicates(part: dict | None) -> list[dict]:
    """The replicates (seeds) of one system's analysis of a benchmark; a part without ``replicates`` is one."""
    if not part:
        return []
    return list(part.get("replicates") or [part])


def translation_table(found: dict, systems: list[str], benchmark: str, n_boot: int = 1000,
                      length_cap: float | None = None) -> pd.DataFrame:
    """Columns system, lang, metric, score, lo, hi, n and the descriptives (translation.DESCRIPTIVES: floor, raw,
    length_ratio, english_share): every system's chrF and BLEU per language and averaged, scored with ``length_cap``."""
    frames = []
    for system in systems:
        per_lang = (found.get(system, {}).get(benchmark) or {}).get("translation")
        if not per_lang:
            continue
        m = translation_metrics(per_lang, n_boot, length_cap=length_cap)
        rows = []
        for metric in METRICS:
            for lang, score in m[metric].items():
                lo, hi = m["ci"][metric][lang]
                n = len(per_lang[lang]) if lang != AVG else min(len(r) for r in per_lang.values())
                rows.append({"system": system, "lang": lang, "metric": metric, "score": score, "lo": lo, "hi": hi, "n": n})
        frame = pd.DataFrame(rows).merge(descriptive_table(per_lang, length_cap), on=["lang", "metric"], how="left")
        frames.append(frame)
    columns = ["system", "lang", "metric", "score", "lo", "hi", "n", *DESCRIPTIVES]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


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


def _translation_groups(per_lang: dict[str, list[dict]], ids: list, metric: str,
                        length_cap: float | None = None) -> dict[str, np.ndarray]:
    out = {}
    for lang, rows in per_lang.items():
        by_id = {r["id"]: r for r in rows}
        out[lang] = translation_stats([by_id[i] for i in ids], metric, length_cap)
    return out


def _representation_groups(pq: pd.DataFrame, measure: str, ids: list, langs: list[str],
                           layers: list[int]) -> dict[str, np.ndarray]:
    """{lang: mean_stats of ``measure`` averaged over ``layers``, per id (in ``ids`` order)}."""
    out = {}
    at = pq[pq["layer"].isin(layers)]
    for lang in langs:
        means = at[at["lang"] == lang].groupby("id")[measure].mean()
        out[lang] = inference.mean_stats(means.reindex(ids).to_numpy())
    return out


def _translation_setting(ra: list[dict], rb: list[dict]) -> tuple[list, list] | None:
    """(languages, ids) every replicate of both systems translated; None when there are none."""
    parts = [p.get("translation") for p in ra + rb]
    if not all(parts):
        return None
    langs = [lang for lang in parts[0] if all(lang in t for t in parts)]
    if not langs:
        return None
    ids = sorted(set.intersection(*({r["id"] for r in t[lang]} for t in parts for lang in langs)), key=_key)
    return (langs, ids) if ids else None


def _representation_setting(ra: list[dict], rb: list[dict]) -> tuple[list, list, list] | None:
    """(languages, ids, summary layers) every replicate of both systems has; None when too few."""
    frames = [p.get("representations") for p in ra + rb]
    if any(f is None or not len(f) for f in frames):
        return None
    langs = [lang for lang in frames[0]["lang"].unique() if all(lang in set(f["lang"]) for f in frames)]
    ids = sorted(set.intersection(*(set(f["id"]) for f in frames)), key=_key)
    n_layers = min(int(f["layer"].max()) for f in frames)
    layers = [x for x in summary_layers(n_layers) if all((f["layer"] == x).any() for f in frames)]
    return (langs, ids, layers) if langs and len(ids) >= 2 and layers else None


def _parts(found: dict, a: str, b: str, benchmark: str) -> tuple[list[dict], list[dict]]:
    return replicates(found.get(a, {}).get(benchmark)), replicates(found.get(b, {}).get(benchmark))


def effects(found: dict, pairs, benchmark: str, n_boot: int = 10_000, seed: int = 0,
            n_resamples: int = 10_000, length_cap: float | None = None) -> pd.DataFrame:
    """The difference b - a of each pair (a, b) of systems on the same questions, per language and averaged over
    languages (lang ``Avg``, languages.AVG): chrF and BLEU (corpus scores), and each representation measure averaged
    over :func:`summary_layers` (1..L, the embeddings left out). Only the languages and ids every run of both systems
    has take part; with a single language only the ``Avg`` row is written (it is that language's test: once, in the
    primary family; :func:`languages` names the language). Each row: 95% CI, permutation p, Holm ``p_adj`` over its ``family``, ``mde`` and ``verdict`` (see
    the module docstring for the families, the seeds and the tests); translations are scored with ``length_cap``
    (translation.scored_hypothesis; None = the declared default). Columns: :data:`COLUMNS`."""
    rows = []
    for a, b in pairs:
        ra, rb = _parts(found, a, b, benchmark)
        if not ra or not rb:
            continue
        setting = _translation_setting(ra, rb)
        if setting:
            langs, ids = setting
            for metric in METRICS:
                ga = [_translation_groups({x: p["translation"][x] for x in langs}, ids, metric, length_cap) for p in ra]
                gb = [_translation_groups({x: p["translation"][x] for x in langs}, ids, metric, length_cap) for p in rb]
                rows += _effect_rows(a, b, metric, ga, gb, SCORES[metric], n_boot, seed, n_resamples)
        setting = _representation_setting(ra, rb)
        if setting:
            langs, ids, layers = setting
            for measure in MEASURES:
                ga = [_representation_groups(p["representations"], measure, ids, langs, layers) for p in ra]
                gb = [_representation_groups(p["representations"], measure, ids, langs, layers) for p in rb]
                rows += _effect_rows(a, b, measure, ga, gb, inference.mean_score, n_boot, seed, n_resamples)
    frame = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_adj", "family", "mde", "verdict")] + ["sd"])
    frame["family"] = [family(r["a"], r["b"], r["measure"], r["lang"]) for _, r in frame.iterrows()]
    return _adjust(frame)[COLUMNS]


def languages(found: dict, pairs, benchmark: str) -> list[str]:
    """The languages the effects of ``pairs`` compare (those every run of both systems of a pair has), in order: with
    a single language the effects hold only its ``Avg`` row, so this names it."""
    out: list[str] = []
    for a, b in pairs:
        ra, rb = _parts(found, a, b, benchmark)
        for setting in (_translation_setting(ra, rb), _representation_setting(ra, rb)) if ra and rb else ():
            out += list(setting[0]) if setting else []
    return list(dict.fromkeys(out))


def family(a: str, b: str, measure: str, lang: str) -> str:
    """The declared family of an effect row (module docstring)."""
    if lang == AVG and measure in primary_measures():
        return PRIMARY_FAMILY
    return f"exploratory: {b} - {a}, {measure}"


def _adjust(frame: pd.DataFrame) -> pd.DataFrame:
    """Holm within each family, the MDE at the family's first Holm step, the verdict from p_adj."""
    frame = frame.copy()
    frame["p_adj"] = np.nan
    frame["mde"] = np.nan
    for _, g in frame.groupby("family", sort=False):
        adj = inference.holm({k: float(p) for k, p in g["p"].items()})
        frame.loc[list(adj), "p_adj"] = list(adj.values())
        m = len(g)
        frame.loc[g.index, "mde"] = [inference.mde(sd, int(n), ALPHA, m, POWER) for sd, n in zip(g["sd"], g["n"])]
    frame["verdict"] = np.where(frame["p_adj"] < ALPHA, SIGNIFICANT, NOT_SIGNIFICANT)
    return frame


def _effect_row(d: dict) -> dict:
    return {"n": d["n"], "value a": d["a"], "value b": d["b"], "diff": d["diff"], "lo": d["lo"], "hi": d["hi"],
            "p": d["p_value"], "sd": d["sd"]}


def _effect_rows(a, b, measure, ga, gb, score, n_boot, seed, n_resamples) -> list[dict]:
    """``ga`` / ``gb``: one dict of language groups per replicate of a / b."""
    rows = []
    langs = list(ga[0])
    # one language: its row is the average over languages (the primary test), once; not also an exploratory copy
    for lang in [*langs, AVG] if len(langs) > 1 else [AVG]:
        pick = (lambda g: g) if lang == AVG else (lambda g: {lang: g[lang]})
        d = inference.paired_effect([pick(g) for g in ga], [pick(g) for g in gb], score, n_boot, seed=seed,
                                    n_resamples=n_resamples)
        rows.append({"a": a, "b": b, "measure": measure, "lang": lang, **_effect_row(d)})
    return rows


def layer_effects(found: dict, pairs, benchmark: str, n_boot: int = 10_000, seed: int = 0,
                  n_resamples: int = 10_000, measures=None) -> pd.DataFrame:
    """Per layer (:func:`summary_layers`: 1..L), the difference b - a of each primary representation measure
    (``measures``, default :data:`PRIMARY`) on the average over languages, with the 95% CI, permutation p, Holm
    ``p_adj`` across the layers within each (pair, measure) (family ``layers: <b> - <a>, <measure>``), ``mde`` and
    ``verdict``, as :func:`effects`. Columns: :data:`LAYER_COLUMNS`."""
    measures = PRIMARY if measures is None else tuple(measures)
    rows = []
    for a, b in pairs:
        ra, rb = _parts(found, a, b, benchmark)
        setting = _representation_setting(ra, rb) if ra and rb else None
        if not setting:
            continue
        langs, ids, layers = setting
        for measure in measures:
            for layer in layers:
                ga = [_representation_groups(p["representations"], measure, ids, langs, [layer]) for p in ra]
                gb = [_representation_groups(p["representations"], measure, ids, langs, [layer]) for p in rb]
                d = inference.paired_effect(ga, gb, inference.mean_score, n_boot, seed=seed, n_resamples=n_resamples)
                rows.append({"a": a, "b": b, "measure": measure, "layer": int(layer), **_effect_row(d),
                             "family": f"layers: {b} - {a}, {measure}"})
    frame = pd.DataFrame(rows, columns=[c for c in LAYER_COLUMNS if c not in ("p_adj", "mde", "verdict")] + ["sd"])
    return _adjust(frame)[LAYER_COLUMNS]


def format_p(p: float) -> str:
    """'p = 0.004', 'p < 0.001'."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def summary(effect_rows: pd.DataFrame, a: str, b: str) -> str:
    """One clause per measure of a pair's averaged effects (``Avg`` rows), primary measures first, e.g.
    'chrF +7.1 [+3.2, +11.0], Holm-adjusted p = 0.004 (family of 12), MDE 4.1'; the descriptive measures' clauses
    say their family is exploratory."""
    rows = effect_rows[(effect_rows["a"] == a) & (effect_rows["b"] == b) & (effect_rows["lang"] == AVG)]
    sizes = effect_rows["family"].value_counts()
    rows = pd.concat([rows[rows["family"] == PRIMARY_FAMILY], rows[rows["family"] != PRIMARY_FAMILY]])
    parts = []
    for _, r in rows.iterrows():
        info = measure_info(r["measure"])
        k = info["digits"]
        kind = "" if r["family"] == PRIMARY_FAMILY else "exploratory, "
        parts.append(f"{info['label']} {r['diff']:+.{k}f} [{r['lo']:+.{k}f}, {r['hi']:+.{k}f}], Holm-adjusted "
                     f"{format_p(r['p_adj'])} ({kind}family of {sizes[r['family']]}), MDE {r['mde']:.{k}f}")
    return "; ".join(parts)


def verdict(effect_rows: pd.DataFrame, a: str, b: str) -> str:
    """What the primary family lets one say of the pair b - a, measure by measure: which primary measures changed
    (Holm-adjusted p < ALPHA, with the sign) and which did not, the latter with the MDE below which a change is not
    excluded, e.g. 'chrF and BLEU rose (Holm-adjusted p < 0.05); no change detected in CSLS MRR (a change smaller than
    its MDE, 0.016, is not excluded)'. '' when the pair has no primary rows."""
    rows = effect_rows[(effect_rows["a"] == a) & (effect_rows["b"] == b) & (effect_rows["lang"] == AVG)
                       & (effect_rows["family"] == PRIMARY_FAMILY)]
    if not len(rows):
        return ""

    def names(frame):
        labels = [measure_info(m)["label"] for m in frame["measure"]]
        return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]

    sig, rest = rows[rows["p_adj"] < ALPHA], rows[~(rows["p_adj"] < ALPHA)]
    parts = [f"{names(g)} {'rose' if up else 'fell'}" for up, g in ((True, sig[sig["diff"] > 0]),
                                                                   (False, sig[sig["diff"] < 0])) if len(g)]

    def mdes(frame):
        return ", ".join(f"{measure_info(r['measure'])['label']} {r['mde']:.{measure_info(r['measure'])['digits']}f}"
                         for _, r in frame.iterrows())

    if not parts:
        return (f"no primary measure changed detectably (every Holm-adjusted p >= {ALPHA:g}; changes smaller than "
                f"the MDE, {mdes(rest)}, are not excluded)")
    out = " and ".join(parts) + f" (Holm-adjusted p < {ALPHA:g})"
    if len(rest):
        out += f"; no change detected in {names(rest)} (a change smaller than the MDE, {mdes(rest)}, is not excluded)"
    return out
