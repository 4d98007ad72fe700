"""Figures as matplotlib ``Figure`` objects: pure builders from data (saved with
:func:`qalign_lib.core.files.save_figure`).

No backend is chosen here: in a notebook the figures show inline, headless matplotlib falls back to Agg by itself.
"""
from __future__ import annotations

from qalign_lib.core.languages import AVG


def table_heatmap(frame, title: str):
    """A system x language accuracy table (values 0-100) as an annotated heatmap."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * len(frame.columns), 0.9 + 0.42 * len(frame)))
    sns.heatmap(frame.astype(float), annot=True, fmt=".1f", cmap="Blues", vmin=0, vmax=100, cbar=False, ax=ax,
                linewidths=0.5, annot_kws={"fontsize": 8})
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.tick_params(labelsize=8)
    return fig


def bars(long, title: str, x: str = "lang", hue: str = "system", y: str = "acc", ylabel: str = "accuracy (%)"):
    """Grouped bars of ``y`` per ``x`` and ``hue``, with 95% CI whiskers where ``lo``/``hi`` columns are present."""
    import matplotlib.pyplot as plt
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
    return fig


def consistency_grid(frame, title: str):
    """Figure 3: bars of each consistency measure (rows) per benchmark (columns), language on x, one hue per
    system. ``frame`` has columns benchmark, system, lang, jaccard, agreement."""
    import seaborn as sns

    melted = frame.melt(id_vars=["benchmark", "system", "lang"], value_vars=["jaccard", "agreement"], var_name="measure")
    grid = sns.catplot(data=melted, x="lang", y="value", hue="system", row="measure", col="benchmark", kind="bar",
                       height=2.6, aspect=1.8, sharey=False, sharex=False)
    grid.set_axis_labels("", "%")
    why = {"jaccard": "no data: no question answered correctly\nin English or in the other language",
           "agreement": "no data"}
    for (measure, benchmark), ax in grid.axes_dict.items():  # an empty panel says why instead of showing empty axes
        cell = melted[(melted["measure"] == measure) & (melted["benchmark"] == benchmark)]["value"]
        if not cell.notna().any():
            ax.cla()
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_title(f"measure = {measure} | benchmark = {benchmark}", fontsize=9)
            ax.text(0.5, 0.5, why.get(measure, "no data"), ha="center", va="center", fontsize=9, color="0.35",
                    transform=ax.transAxes)
    grid.figure.suptitle(title, fontsize=10, y=1.02)
    return grid.figure


# ----------------------------------------------------------------------------------------------------------------
# What stage 1 did (qalign_lib/analysis/)

MEASURE_LABELS = {"cosine": "cosine with English", "centred_cosine": "mean-centred cosine",
                  "retrieval_top1": "retrieval top-1", "retrieval_top1_centred": "retrieval top-1 (centred)",
                  "chrf": "chrF", "bleu": "BLEU"}


def translation_bars(table, title: str, metric: str = "chrf"):
    """Stage-1 translation quality per language (and the average), one bar per system, 95% CI whiskers. ``table``
    has columns system, lang, metric, score, lo, hi (analysis.translation_table)."""
    long = table.reset_index() if "system" not in table.columns else table
    long = long[long["metric"] == metric].rename(columns={"score": "acc"})
    return bars(long, title, ylabel=f"{MEASURE_LABELS[metric]} against the English question")


def representation_lines(table, title: str, measures=("cosine", "centred_cosine", "retrieval_top1"), lang: str = AVG):
    """One panel per measure against layer (0 = embeddings), one line per system with its 95% CI band; the
    retrieval panels show chance (1 / n) as a dotted line. ``table``: analysis.representation_table rows (the
    ``lang`` rows are drawn, the average over languages by default)."""
    import matplotlib.pyplot as plt

    frame = table.reset_index() if "system" not in table.columns else table
    frame = frame[frame["lang"] == lang] if (frame["lang"] == lang).any() else frame
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.3), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        for system, g in frame.groupby("system", sort=False):
            g = g.sort_values("layer")
            line, = ax.plot(g["layer"], g[measure], lw=1.4, label=system)
            ax.fill_between(g["layer"], g[f"{measure}_lo"], g[f"{measure}_hi"], color=line.get_color(), alpha=0.2, lw=0)
        if measure.startswith("retrieval") and len(frame):
            ax.axhline(float(frame["chance"].iloc[0]), color="0.4", ls=":", lw=1, label="chance")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_title(MEASURE_LABELS.get(measure, measure), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig


def representation_grid(table, title: str, measures=("centred_cosine", "retrieval_top1")):
    """Per language (columns) and measure (rows) against layer, one line per system with its 95% CI band."""
    import matplotlib.pyplot as plt

    frame = table.reset_index() if "system" not in table.columns else table
    langs = [x for x in dict.fromkeys(frame["lang"]) if x != AVG]
    fig, axes = plt.subplots(len(measures), len(langs), figsize=(2.3 * len(langs) + 1.5, 2.2 * len(measures)),
                             squeeze=False, sharex=True, sharey="row")
    for r, measure in enumerate(measures):
        for c, lang in enumerate(langs):
            ax = axes[r][c]
            for system, g in frame[frame["lang"] == lang].groupby("system", sort=False):
                g = g.sort_values("layer")
                line, = ax.plot(g["layer"], g[measure], lw=1.1, label=system)
                ax.fill_between(g["layer"], g[f"{measure}_lo"], g[f"{measure}_hi"], color=line.get_color(), alpha=0.2, lw=0)
            if measure.startswith("retrieval") and len(frame):
                ax.axhline(float(frame["chance"].iloc[0]), color="0.4", ls=":", lw=0.8)
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(lang, fontsize=9)
            if c == 0:
                ax.set_ylabel(MEASURE_LABELS.get(measure, measure), fontsize=8)
            if r == len(measures) - 1:
                ax.set_xlabel("layer", fontsize=8)
    axes[0][-1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig


def effects_forest(table, title: str):
    """The paired differences b - a of each pair of systems (rows) on each measure (panels), averaged over
    languages, with their 95% paired-bootstrap CIs; the dashed line is no effect. ``table``: analysis.effects rows
    (those with lang ``Avg``, languages.AVG, are drawn)."""
    import matplotlib.pyplot as plt

    frame = table.reset_index() if "measure" not in table.columns else table
    frame = frame[frame["lang"] == AVG] if (frame["lang"] == AVG).any() else frame
    measures = list(dict.fromkeys(frame["measure"]))
    pairs = list(dict.fromkeys(zip(frame["a"], frame["b"])))
    cols = min(3, len(measures))
    rows = -(-len(measures) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols + 2.5, rows * (0.5 * len(pairs) + 1.4)), squeeze=False,
                             sharey=True)
    for ax in axes.flat[len(measures):]:
        ax.set_visible(False)
    for ax, measure in zip(axes.flat, measures):
        for k, (a, b) in enumerate(pairs):
            row = frame[(frame["measure"] == measure) & (frame["a"] == a) & (frame["b"] == b)]
            if not len(row):
                continue
            r = row.iloc[0]
            color = "tab:green" if r["lo"] > 0 else "tab:red" if r["hi"] < 0 else "0.4"
            ax.errorbar([r["diff"]], [k], xerr=[[r["diff"] - r["lo"]], [r["hi"] - r["diff"]]], fmt="o", color=color,
                        capsize=3, ms=4)
        ax.axvline(0, color="k", ls="--", lw=0.8)
        ax.set_title(MEASURE_LABELS.get(measure, measure), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for row in axes:
        row[0].set_yticks(range(len(pairs)), [f"{b}\n  - {a}" for a, b in pairs], fontsize=7)
    axes[0][0].invert_yaxis()
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig
