"""Tables and figures: per-language accuracy tables (CSV, Markdown), bar charts, loss curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

from . import config

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss(log: list[dict], path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(5, 3))
    if log:
        ax.plot([r["step"] for r in log], [r["loss"] for r in log], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_fig(fig, Path(path), dpi=120)


# ----------------------------------------------------------------------------------------------------------------
# Notebook summaries


def _display(obj) -> None:
    try:
        from IPython.display import display

        display(obj)
    except ImportError:  # plain Python
        print(obj)


def show_config(cfg: dict, stage: int | None = None) -> None:
    import pandas as pd

    keys = ["model", "dtype", "lr", "epochs", "batch_size", "scheduler", "warmup_ratio", "max_length", "seed",
            "launch", "num_processes", "num_machines", "padding_free", "group_by_length"] + ([f"stage{stage}_limit"] if stage else [])
    keys += ["stage1_langs"] if stage == 1 else ["stage2_data"] if stage == 2 else []
    _display(pd.DataFrame({"value": [str(cfg.get(k)) for k in keys]}, index=keys).rename_axis(f"size {cfg['size']}"))


def show_run(run: Path) -> None:
    """A finished run's summary: examples, steps, first/last loss, and its loss curve."""
    import json

    import pandas as pd

    from .training import read_log

    run = Path(run)
    meta = json.loads((run / "run.json").read_text())
    log = read_log(run)
    _display(pd.DataFrame({"value": [meta["name"], meta["init"], "+".join(meta["tasks"]), " ".join(meta["langs"]),
                                     meta["n_examples"], len(log), log[0]["loss"] if log else None,
                                     log[-1]["loss"] if log else None, str(run / "model")]},
                          index=["run", "init", "data", "languages", "examples", "steps", "first loss", "last loss", "model"]))
    if (run / "loss.png").is_file():
        try:
            from IPython.display import Image

            _display(Image(filename=str(run / "loss.png")))
        except ImportError:
            pass


def accuracy_frame(metrics: dict, scorer: str = "reference"):
    """benchmark x language accuracy table of one metrics.json, with the averages."""
    import pandas as pd

    rows = {}
    for benchmark in ("mgsm", "msvamp"):
        if benchmark in metrics:
            r = metrics[benchmark][scorer]
            rows[benchmark] = {**r["accuracy"], "avg": r["average"], "avg non-en": r["average_non_en"]}
    return pd.DataFrame(rows).T


def show_metrics(metrics: dict) -> None:
    for scorer in ("reference", "strict"):
        frame = accuracy_frame(metrics, scorer)
        print(f"accuracy (%), {scorer} scorer, {metrics['model']}, {metrics.get('limit') or 'all'} questions per language")
        _display(frame.round(1))


# ----------------------------------------------------------------------------------------------------------------
# Study report: results of every system, tables with bootstrap CIs, paired tests, consistency, paper vs us

BENCH_NAMES = {"mgsm": "mGSM", "msvamp": "mSVAMP"}


def collect(s, scorer: str = "reference", extra_models: list[str] = ()) -> tuple[dict, dict]:
    """Rescore every evaluated system of a study from its generations.

    Returns ({system: {benchmark: score_rows result with per_question}}, {system: reason it is absent})."""
    from . import data, evaluation, scoring
    from .languages import BENCHMARK_LANGS

    results, absent = {}, {}
    systems = dict(s.systems)
    systems.update({f"model: {m}": f"model:{m}" for m in extra_models})
    for system, run in systems.items():
        ref = {"model": run.split(":", 1)[1]} if run.startswith("model:") else {"run": run}
        try:
            _, root = evaluation.target(s.cfg, **ref)
        except Exception as e:  # not trained (skipped for missing data, or not run yet)
            absent[system] = str(e).split(";")[0]
            continue
        if not (root / "metrics.json").is_file():
            absent[system] = f"not evaluated ({root})"
            continue
        results[system] = {}
        for b in s.benchmarks:
            langs = [lang for lang in s.cfg["eval_langs"] if lang in BENCHMARK_LANGS[b]]
            gens = evaluation.load_generations(root, b, langs, s.cfg.get("eval_limit"))
            rows = [r for lang in langs for r in gens.get(lang, [])]
            if rows:
                gold = {lang: data.gold_answers(b, lang) for lang in gens}
                results[system][b] = scoring.score_rows(rows, gold, b, scorer)
    return results, absent


def _correct(result: dict) -> dict:
    return {lang: {i: q["correct"] for i, q in qs.items()} for lang, qs in result["per_question"].items()}


def _preds(result: dict) -> dict:
    return {lang: {i: q["pred"] for i, q in qs.items()} for lang, qs in result["per_question"].items()}


def accuracy_table(results: dict, systems: list[str], benchmark: str, n_boot: int = 10_000):
    """(wide table: system x language + averages, long table with 95% CIs) for one benchmark."""
    import pandas as pd

    from . import statistics
    from .languages import LANGS

    wide, long = {}, []
    for system in systems:
        r = results.get(system, {}).get(benchmark)
        if r is None:
            continue
        correct = _correct(r)
        row = {}
        for lang, c in correct.items():
            ci = statistics.accuracy_ci(c, n_boot=n_boot)
            row[lang] = ci["acc"]
            long.append({"system": system, "lang": lang, **ci})
        in_avg = [lang for lang in LANGS if lang in correct]
        for label, langs in (("Avg", in_avg), ("Avg non-En", [lang for lang in in_avg if lang != "en"])):
            if langs:
                ci = statistics.average_ci({lang: correct[lang] for lang in langs}, n_boot=n_boot, paired=True)
                row[label] = ci["acc"]
                long.append({"system": system, "lang": label, "acc": ci["acc"], "lo": ci["lo"], "hi": ci["hi"],
                             "n": sum(len(correct[lang]) for lang in langs)})
        wide[system] = row
    return pd.DataFrame(wide).T, pd.DataFrame(long)


def paired_tests(results: dict, a: str, b: str, benchmark: str, n_boot: int = 10_000):
    """Per-language b vs a: difference with 95% CI, paired-bootstrap p, exact/chi2 McNemar p, Holm-adjusted."""
    import pandas as pd

    from . import statistics

    ra, rb = results.get(a, {}).get(benchmark), results.get(b, {}).get(benchmark)
    if ra is None or rb is None:
        return pd.DataFrame()
    ca, cb = _correct(ra), _correct(rb)
    rows = []
    for lang in [lang for lang in ca if lang in cb]:
        pb = statistics.paired_bootstrap(ca[lang], cb[lang], n_boot=n_boot)
        mc = statistics.mcnemar(ca[lang], cb[lang])
        rows.append({"lang": lang, "n": pb["n"], f"acc {a}": ra["accuracy"][lang], f"acc {b}": rb["accuracy"][lang],
                     "diff": pb["diff"], "lo": pb["lo"], "hi": pb["hi"], "p bootstrap": pb["p_value"],
                     "n01 (b only right)": mc["n01"], "n10 (a only right)": mc["n10"], "p McNemar": mc["p_value"]})
    frame = pd.DataFrame(rows)
    if len(frame):
        holm = statistics.holm(dict(zip(frame["lang"], frame["p McNemar"])))
        frame["p McNemar (Holm)"] = [holm[lang] for lang in frame["lang"]]
    return frame


def consistency(results: dict, systems: list[str], benchmark: str):
    """Cross-lingual prediction consistency with English, two labelled measures, for each system."""
    import pandas as pd

    from . import statistics

    frames = []
    for system in systems:
        r = results.get(system, {}).get(benchmark)
        if r is None or "en" not in r["per_question"]:
            continue
        correct, preds = _correct(r), _preds(r)
        langs = [lang for lang in correct if lang != "en"]
        t = statistics.consistency_table(correct, preds, langs, ref="en")
        t.insert(0, "system", system)
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def paper_vs_us(results: dict, size: str, long_tables: dict) -> "object":
    """Our 10-language averages (with CIs) beside the paper's reported ones, with the source of each number."""
    import pandas as pd

    paper = config.read_yaml(config.params_dir() / "paper.yaml")
    reported = paper["averages"].get(size, {})
    rows = []
    for system in sorted(set(reported) | set(paper["systems"]) & set(results), key=list(paper["systems"]).index):
        row = {"system": system, "paper name": paper["systems"].get(system, system)}
        for b in ("mgsm", "msvamp"):
            row[f"paper {BENCH_NAMES[b]}"] = reported.get(system, {}).get(b)
            long = long_tables.get(b)
            ours = long[(long["system"] == system) & (long["lang"] == "Avg")] if long is not None and len(long) else []
            row[f"ours {BENCH_NAMES[b]}"] = f"{ours['acc'].iloc[0]:.1f} [{ours['lo'].iloc[0]:.1f}, {ours['hi'].iloc[0]:.1f}]" if len(ours) else None
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["source"] = paper["source"] if reported else f"the paper reports no numbers for size {size}"
    return frame


def _save_table(frame, path: Path, caption: str, digits: int = 1) -> None:
    from .io import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path.with_suffix(".csv")) as f:
        frame.to_csv(f)
    flat = frame.reset_index() if frame.index.nlevels > 1 or frame.index.name else frame
    body = flat.round(digits).to_markdown(index=flat is frame) if len(frame) else "_no results_"
    with atomic_write(path.with_suffix(".md")) as f:
        f.write(f"{caption}\n\n{body}\n")


def _save_fig(fig, path: Path, dpi: int = 130) -> Path:
    """Save and close a figure; written to a temporary file and renamed, so no half-written image is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_table(frame, path: Path, title: str) -> Path:
    """A system x language accuracy table rendered as an annotated heatmap."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * len(frame.columns), 0.9 + 0.42 * len(frame)))
    sns.heatmap(frame.astype(float), annot=True, fmt=".1f", cmap="Blues", vmin=0, vmax=100, cbar=False, ax=ax,
                linewidths=0.5, annot_kws={"fontsize": 8})
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.tick_params(labelsize=8)
    return _save_fig(fig, path)


def plot_bars(long, path: Path, title: str, x: str = "lang", hue: str = "system", y: str = "acc", ylabel: str = "accuracy (%)") -> Path:
    """Grouped bars with 95% CI whiskers (``lo``/``hi`` columns where present)."""
    import numpy as np
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(max(6, 0.75 * long[x].nunique() * max(1, long[hue].nunique()) / 2), 3.6))
    sns.barplot(data=long, x=x, y=y, hue=hue, ax=ax, errorbar=None)
    if {"lo", "hi"} <= set(long.columns):
        for container, (_, group) in zip(ax.containers, long.groupby(hue, sort=False)):
            centers = [bar.get_x() + bar.get_width() / 2 for bar in container]
            group = group.set_index(x).reindex([t.get_text() for t in ax.get_xticklabels()])
            ax.errorbar(centers, group[y], yerr=np.vstack([group[y] - group["lo"], group["hi"] - group[y]]),
                        fmt="none", ecolor="black", elinewidth=0.7, capsize=2)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("")
    ax.set_title(title, fontsize=9, loc="left")
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save_fig(fig, path)


def write_report(s, out_dir: Path | None = None, extra_models: list[str] = (), n_boot: int = 10_000) -> dict[str, Path]:
    """Every table and figure of a study into ``figures/<size>/`` (or ``out_dir``); returns name -> path."""
    import pandas as pd

    out = Path(out_dir or config.figures_dir() / s.size)
    results, absent = collect(s, extra_models=list(extra_models))
    groups = s.groups or {"main": list(s.systems)}
    main = [x for x in groups.get("main", list(s.systems)) + [f"model: {m}" for m in extra_models] if x in results]
    cap = f"_{s.caption}_" if s.caption else ""

    def note(systems) -> str:
        lines = "".join(f"\n- {k}: {v}" for k, v in absent.items() if k in systems)
        return f"\n\nNot in the table:{lines}" if lines else ""

    written: dict[str, Path] = {}
    wide_all, long_tables = {}, {}
    for b in s.benchmarks:  # CIs once per system and benchmark; each table takes its rows
        wide_all[b], long_tables[b] = accuracy_table(results, list(results), b, n_boot)
    for number, b in (("table2", "mgsm"), ("table3", "msvamp")):
        if b not in s.benchmarks:
            continue
        wide = wide_all[b].loc[[x for x in main if x in wide_all[b].index]] if len(wide_all[b]) else wide_all[b]
        long = long_tables[b][long_tables[b]["system"].isin(main)] if len(long_tables[b]) else long_tables[b]
        caption = (f"**{number.title()[:-1]} {number[-1]}: {BENCH_NAMES[b]} accuracy (%)**, reference scorer, 95% bootstrap CIs "
                   f"in `{number}_{b}_ci.csv`; Avg = mean over the 10 languages (English included), Telugu not averaged. {cap}"
                   + note(groups.get("main", s.systems)))
        _save_table(wide, out / f"{number}_{b}", caption)
        _save_table(long.set_index(["system", "lang"]) if len(long) else long, out / f"{number}_{b}_ci", caption, 2)
        written[f"{number}_{b}"] = out / f"{number}_{b}.md"
        if len(wide):
            written[f"{number}_{b}_png"] = plot_table(wide, out / f"{number}_{b}.png", f"{BENCH_NAMES[b]} accuracy (%) — size {s.size}")
            written[f"bars_{b}"] = plot_bars(long[long["lang"] != "Avg non-En"], out / f"accuracy_{b}.png",
                                             f"{BENCH_NAMES[b]} accuracy per language, 95% CI — size {s.size}")

    def averages(systems: list[str]):
        frames = [long_tables[b][(long_tables[b]["lang"] == "Avg") & long_tables[b]["system"].isin(systems)].assign(benchmark=BENCH_NAMES[b])
                  for b in s.benchmarks if len(long_tables[b])]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    # Table 4: stage-1 ablations, 10-language averages
    if "ablation" in groups:
        avg = averages(groups["ablation"])
        table = avg.pivot(index="system", columns="benchmark", values=["acc", "lo", "hi"]) if len(avg) else avg
        if len(table):
            table.columns = [f"{bench} {stat}" for stat, bench in table.columns]
            table = table.loc[[x for x in groups["ablation"] if x in table.index]]
        _save_table(table, out / "table4_ablation", f"**Table 4: stage-1 data ablations**, each followed by the same stage 2; "
                    f"10-language averages (%) with 95% CIs. {cap}" + note(groups["ablation"]))
        written["table4"] = out / "table4_ablation.md"
    # Figure 2: mixed supervision (grouped bars of averages)
    if "mixed" in groups:
        avg = averages(groups["mixed"])
        if len(avg):
            _save_table(avg.set_index(["benchmark", "system"]), out / "figure2_mixed",
                        f"**Figure 2: mixed supervision**, averages with 95% CIs. {cap}" + note(groups["mixed"]))
            written["figure2"] = plot_bars(avg, out / "figure2_mixed.png", f"Mixed supervision — size {s.size}", x="benchmark")
    # Figure 3: cross-lingual consistency, and the paired tests of QAlign vs MonoReason
    pair = [x for x in groups.get("consistency", []) if x in results]
    frames = []
    for b in s.benchmarks:
        c = consistency(results, pair, b)
        if len(c):
            frames.append(c.assign(benchmark=BENCH_NAMES[b]))
        if len(pair) == 2:
            tests = paired_tests(results, pair[0], pair[1], b, n_boot)
            _save_table(tests.set_index("lang") if len(tests) else tests, out / f"paired_{b}",
                        f"**{pair[1]} vs {pair[0]} on {BENCH_NAMES[b]}**, per language: difference (points) with 95% paired-bootstrap CI, "
                        f"paired-bootstrap p, McNemar p (exact below 25 discordant pairs) and Holm-adjusted McNemar p. {cap}", 3)
            written[f"paired_{b}"] = out / f"paired_{b}.md"
    if frames:
        frame = pd.concat(frames, ignore_index=True)
        _save_table(frame.set_index(["benchmark", "system", "lang"]), out / "figure3_consistency",
                    "**Figure 3: cross-lingual prediction consistency with English.** jaccard = |C_en ∩ C_x| / |C_en ∪ C_x| over the "
                    f"questions answered correctly (%); agreement = share of questions whose predicted numbers agree (%). {cap}")
        melted = frame.melt(id_vars=["benchmark", "system", "lang"], value_vars=["jaccard", "agreement"], var_name="measure")
        import seaborn as sns

        grid = sns.catplot(data=melted, x="lang", y="value", hue="system", row="measure", col="benchmark", kind="bar",
                           height=2.6, aspect=1.8, sharey=False, sharex=False)
        grid.set_axis_labels("", "%")
        grid.figure.suptitle(f"Cross-lingual consistency with English — size {s.size}", fontsize=10, y=1.02)
        written["figure3"] = _save_fig(grid.figure, out / "figure3_consistency.png")
    # Paper vs us
    pvu = paper_vs_us(results, s.size, long_tables)
    _save_table(pvu.set_index("system") if len(pvu) else pvu, out / "paper_vs_us",
                f"**Paper vs us**: 10-language averages (%); ours with 95% bootstrap CIs. Paper numbers: {pvu.attrs['source']} (params/paper.yaml). {cap}")
    written["paper_vs_us"] = out / "paper_vs_us.md"
    index = [f"# Report: study {s.name}, size {s.size}\n", f"{s.caption}\n" if s.caption else "",
             "| output | file |", "|---|---|"] + [f"| {k} | `{Path(p).name}` |" for k, p in written.items()]
    if absent:
        index += ["", "Systems without results:"] + [f"- {k}: {v}" for k, v in absent.items()]
    from .io import atomic_write

    with atomic_write(out / "README.md") as f:
        f.write("\n".join(index) + "\n")
    return written
