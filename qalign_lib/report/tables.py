"""The report's tables as pandas DataFrames: pure builders from rescored results, no files, no plotting.

``results`` is what :func:`qalign_lib.report.results.collect` returns: ``{system: {benchmark: scoring.score_rows result}}``
(with ``per_question``). Which languages are averaged and how a benchmark is named come from the benchmark
registry (:mod:`qalign_lib.core.benchmarks`). Accuracies are percentages.
"""
from __future__ import annotations

import pandas as pd

from qalign_lib.analysis import inference
from qalign_lib.core import benchmarks as registry
from qalign_lib.core import config
from qalign_lib.core.languages import AVG, AVG_NON_EN


def correct(result: dict) -> dict[str, dict]:
    """lang -> {question id: answered correctly} of one scored benchmark."""
    return {lang: {i: q["correct"] for i, q in qs.items()} for lang, qs in result["per_question"].items()}


def predictions(result: dict) -> dict[str, dict]:
    """lang -> {question id: extracted number (None: no number)} of one scored benchmark."""
    return {lang: {i: q["pred"] for i, q in qs.items()} for lang, qs in result["per_question"].items()}


def accuracy_table(results: dict, systems: list[str], benchmark: str, n_boot: int = 10_000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(wide, long) tables of one benchmark.

    wide: one row per system with results (in ``systems`` order), one column per language (registry order), then
    ``Avg`` (mean over the benchmark's averaged languages that are present) and ``Avg non-En`` (the same without
    English); languages outside the average (the registry's ``extra``) are columns but never averaged.
    long: columns system, lang, acc, lo, hi, n: every cell of ``wide`` with its 95% bootstrap CI (averages resampled
    paired by question id, the benchmarks being parallel across languages).
    """
    b = registry.get(benchmark)
    wide, long = {}, []
    for system in systems:
        r = results.get(system, {}).get(benchmark)
        if r is None:
            continue
        right = correct(r)
        row = {}
        for lang in [lang for lang in b.langs if lang in right]:
            ci = inference.accuracy_ci(right[lang], n_boot=n_boot)
            row[lang] = ci["acc"]
            long.append({"system": system, "lang": lang, **ci})
        in_avg = [lang for lang in b.averaged if lang in right]
        for label, langs in ((AVG, in_avg), (AVG_NON_EN, [lang for lang in in_avg if lang != "en"])):
            if langs:
                ci = inference.average_ci({lang: right[lang] for lang in langs}, n_boot=n_boot, paired=True)
                row[label] = ci["acc"]
                long.append({"system": system, "lang": label, "acc": ci["acc"], "lo": ci["lo"], "hi": ci["hi"],
                             "n": sum(len(right[lang]) for lang in langs)})
        wide[system] = row
    frame = pd.DataFrame.from_dict(wide, orient="index")
    if len(frame):
        frame = frame[[c for c in (*b.langs, AVG, AVG_NON_EN) if c in frame.columns]]
    return frame, pd.DataFrame(long, columns=["system", "lang", "acc", "lo", "hi", "n"])


def averages(long_tables: dict[str, pd.DataFrame], systems: list[str]) -> pd.DataFrame:
    """The averages (``Avg`` rows, with CIs) of ``systems`` on every benchmark of ``long_tables`` (benchmark name ->
    long table of :func:`accuracy_table`): columns system, lang, acc, lo, hi, n, benchmark (its display name),
    benchmarks in the given order and systems in ``systems`` order. Table 4 and Figure 2 are made of these."""
    frames = []
    for name, long in long_tables.items():
        if long is None or not len(long):
            continue
        rows = long[(long["lang"] == AVG) & long["system"].isin(systems)]
        rows = rows.set_index("system").reindex([x for x in systems if x in set(rows["system"])]).reset_index()
        frames.append(rows.assign(benchmark=registry.get(name).display))
    if not frames:
        return pd.DataFrame(columns=["system", "lang", "acc", "lo", "hi", "n", "benchmark"])
    return pd.concat(frames, ignore_index=True)


def average_table(long_tables: dict[str, pd.DataFrame], systems: list[str]) -> pd.DataFrame:
    """One row per system (``systems`` order) with ``<benchmark> acc``, ``<benchmark> lo``, ``<benchmark> hi`` of its
    average on each benchmark (Table 4)."""
    avg = averages(long_tables, systems)
    if not len(avg):
        return pd.DataFrame()
    table = avg.pivot(index="system", columns="benchmark", values=["acc", "lo", "hi"])
    table.columns = [f"{bench} {stat}" for stat, bench in table.columns]
    table.index.name = None
    return table.loc[[x for x in systems if x in table.index]]


def paired_tests(results: dict, a: str, b: str, benchmark: str, n_boot: int = 10_000) -> pd.DataFrame:
    """Per language, system ``b`` against system ``a``: accuracy of each, difference b - a (points) with its 95%
    paired-bootstrap CI and p-value, McNemar's discordant counts and p (exact below 25 discordant pairs), and the
    Holm-adjusted McNemar p over the languages. Empty when either system has no results on the benchmark."""
    ra, rb = results.get(a, {}).get(benchmark), results.get(b, {}).get(benchmark)
    if ra is None or rb is None:
        return pd.DataFrame()
    ca, cb = correct(ra), correct(rb)
    rows = []
    for lang in [lang for lang in registry.get(benchmark).langs if lang in ca and lang in cb]:
        pb = inference.paired_bootstrap(ca[lang], cb[lang], n_boot=n_boot)
        mc = inference.mcnemar(ca[lang], cb[lang])
        rows.append({"lang": lang, "n": pb["n"], f"acc {a}": ra["accuracy"][lang], f"acc {b}": rb["accuracy"][lang],
                     "diff": pb["diff"], "lo": pb["lo"], "hi": pb["hi"], "p bootstrap": pb["p_value"],
                     "n01 (b only right)": mc["n01"], "n10 (a only right)": mc["n10"], "p McNemar": mc["p_value"]})
    frame = pd.DataFrame(rows)
    if len(frame):
        holm = inference.holm(dict(zip(frame["lang"], frame["p McNemar"])))
        frame["p McNemar (Holm)"] = [holm[lang] for lang in frame["lang"]]
    return frame


def consistency(results: dict, systems: list[str], benchmark: str, ref: str = "en") -> pd.DataFrame:
    """Cross-lingual consistency with ``ref`` of each system (Figure 3): columns system, lang, jaccard (of the sets of
    questions answered correctly, %), agreement (share of questions whose predicted numbers agree, %). Only the
    benchmark's averaged languages take part, as in the reference's ten-language evaluation (mGSM's Telugu does not)."""
    averaged = registry.get(benchmark).averaged
    frames = []
    for system in systems:
        r = results.get(system, {}).get(benchmark)
        if r is None or ref not in r["per_question"]:
            continue
        right, preds = correct(r), predictions(r)
        langs = [lang for lang in right if lang != ref and lang in averaged]
        t = inference.consistency_table(right, preds, langs, ref=ref)
        t.insert(0, "system", system)
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["system", "lang", "jaccard", "agreement"])


def paper_vs_us(long_tables: dict[str, pd.DataFrame], size: str, paper: dict | None = None,
                released: dict[str, str] | None = None) -> pd.DataFrame:
    """Our averages (with CIs, from the long tables of :func:`accuracy_table`) beside the paper's reported ones.

    ``paper`` is params/paper.yaml (read when not given): ``source``, ``systems`` (our name -> the paper's),
    ``measures`` (what each paper number measures: a released checkpoint and the recipe that trained it) and
    ``averages[size][system][benchmark]``. ``released`` maps a Hub id to the study's system name evaluating that
    checkpoint. Rows: every system the paper reports for ``size``, and every system it names that we have averages
    for. Columns per benchmark: the paper's number, ours for the same released checkpoint (like for like) and ours
    for our own run of the method (our recipe). ``frame.attrs["source"]`` says where the paper's numbers come from.
    """
    paper = config.read_yaml(config.params_dir() / "paper.yaml") if paper is None else paper
    names = dict(paper.get("systems") or {})
    measures = dict(paper.get("measures") or {})
    released = released or {}
    reported = (paper.get("averages") or {}).get(size) or {}
    ours = {name: long[long["lang"] == AVG].set_index("system") for name, long in long_tables.items()
            if long is not None and len(long)}
    have = {system for frame in ours.values() for system in frame.index}
    order = list(names) + [x for x in reported if x not in names]

    def cell(name: str, system: str | None):
        r = ours[name].loc[system] if system and name in ours and system in ours[name].index else None
        return f"{r['acc']:.1f} [{r['lo']:.1f}, {r['hi']:.1f}]" if r is not None else None

    rows = []
    for system in [x for x in order if x in reported or x in have]:
        m = measures.get(system) or {}
        checkpoint = (m.get("checkpoint") or {}).get(size)
        row = {"system": system, "paper name": names.get(system, system),
               "paper number measures": m.get("what", "unknown") + (f" ({checkpoint})" if checkpoint else "")}
        for name in long_tables:
            display = registry.get(name).display
            row[f"paper {display}"] = (reported.get(system) or {}).get(name)
            row[f"ours {display}, same checkpoint"] = cell(name, released.get(checkpoint)) if checkpoint else None
            row[f"ours {display}, our recipe"] = cell(name, system)
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["source"] = paper.get("source", "params/paper.yaml") if reported else f"the paper reports no numbers for size {size}"
    return frame
