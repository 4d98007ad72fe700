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


def _label(measure: str) -> str:
    """A measure's label: :data:`MEASURE_LABELS`, else representations.MEASURE_INFO's (analysis.effects.measure_info)."""
    from qalign_lib.analysis.effects import measure_info

    return MEASURE_LABELS.get(measure) or measure_info(measure)["label"]


def translation_bars(table, title: str, metric: str = "chrf"):
    """Stage-1 translation quality per language (and the average), one bar per system, 95% CI whiskers. ``table``
    has columns system, lang, metric, score, lo, hi (analysis.translation_table)."""
    long = table.reset_index() if "system" not in table.columns else table
    long = long[long["metric"] == metric].rename(columns={"score": "acc"})
    return bars(long, title, ylabel=f"{MEASURE_LABELS[metric]} against the English question")


def representation_lines(table, title: str, measures=("csls_mrr", "margin", "centred_cosine", "retrieval_top1_centred"),
                         lang: str = AVG):
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
        chance = f"{measure}_chance" if f"{measure}_chance" in frame.columns else "chance"
        if (measure.startswith(("retrieval", "csls")) or chance != "chance") and len(frame):
            ax.axhline(float(frame[chance].iloc[0]), color="0.4", ls=":", lw=1, label="chance")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_title(_label(measure), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig


def representation_grid(table, title: str, measures=("csls_mrr", "margin")):
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
                ax.set_ylabel(_label(measure), fontsize=8)
            if r == len(measures) - 1:
                ax.set_xlabel("layer", fontsize=8)
    axes[0][-1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig


SIGNIFICANT_COLOR, EXPLORATORY_COLOR, NOT_SIGNIFICANT_COLOR = "tab:blue", "#9ecae1", "0.55"


def _verdict_legend(ax):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=SIGNIFICANT_COLOR, label="Holm-adjusted p < 0.05 (primary family)"),
               Line2D([], [], marker="o", ls="", color=EXPLORATORY_COLOR,
                      label="Holm-adjusted p < 0.05 within an\nexploratory family (not a claim)"),
               Line2D([], [], marker="o", ls="", mfc="white", color=NOT_SIGNIFICANT_COLOR, label="not significant (Holm)")]
    ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _significant(r) -> bool:
    return bool(r["p_adj"] < 0.05)


def _color(r) -> str:
    if not _significant(r):
        return NOT_SIGNIFICANT_COLOR
    return SIGNIFICANT_COLOR if r.get("family", "primary") == "primary" else EXPLORATORY_COLOR


def effects_forest(table, title: str, translation=("chrf", "bleu")):
    """The paired differences b - a of each pair of systems, averaged over languages (rows with lang ``Avg``), with
    their 95% CIs; the dashed line is no effect. Panels share a scale where the quantities are comparable: chrF and
    BLEU (points, 0-100) on one axis, each representation measure on its own axis shared by every pair. A point is
    filled when its Holm-adjusted p (``p_adj``, over its declared family) is below 0.05 (dark blue in the primary
    family, light blue in an exploratory one), hollow and grey otherwise; the primary measures' panels come first, a
    panel of a measure outside the primary family says "exploratory". ``table``: analysis.effects rows."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    frame = table.reset_index() if "measure" not in table.columns else table
    frame = frame[frame["lang"] == AVG] if (frame["lang"] == AVG).any() else frame
    pairs = list(dict.fromkeys(zip(frame["a"], frame["b"])))
    primary = set(frame.loc[frame["family"] == "primary", "measure"])
    present = sorted(dict.fromkeys(frame["measure"]), key=lambda m: m not in primary)  # stable: primary first
    panels = ([("translation into English: " + ", ".join(_label(m) for m in translation if m in present),
                [m for m in translation if m in present])] if any(m in present for m in translation) else [])
    panels += [(_label(m), [m]) for m in present if m not in translation]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols + 3.0, rows * (0.55 * len(pairs) + 1.5)), squeeze=False,
                             sharey=True)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    markers = ("o", "s", "D", "^")
    for ax, (label, measures) in zip(axes.flat, panels):
        exploratory = False
        for j, measure in enumerate(measures):
            offset = (j - (len(measures) - 1) / 2) * 0.22
            for k, (a, b) in enumerate(pairs):
                row = frame[(frame["measure"] == measure) & (frame["a"] == a) & (frame["b"] == b)]
                if not len(row):
                    continue
                r = row.iloc[0]
                exploratory |= "family" in r and r["family"] != "primary"
                color = _color(r)
                ax.errorbar([r["diff"]], [k + offset], xerr=[[r["diff"] - r["lo"]], [r["hi"] - r["diff"]]],
                            fmt=markers[j % len(markers)], color=color, mfc=color if _significant(r) else "white",
                            capsize=3, ms=4.5)
            if len(measures) > 1:
                ax.plot([], [], markers[j % len(markers)], color="k", mfc="white", label=_label(measure))
        if len(measures) > 1:
            ax.legend(fontsize=7, frameon=False, loc="lower right")
        ax.axvline(0, color="k", ls="--", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.set_title(label + (" (exploratory)" if exploratory else ""), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for row in axes:
        row[0].set_yticks(range(len(pairs)), [f"{b}\n  - {a}" for a, b in pairs], fontsize=7)
    axes[0][0].invert_yaxis()
    _verdict_legend(axes[0][min(cols, len(panels)) - 1])
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig


def layer_effects_lines(table, title: str):
    """Per-layer differences b - a (``analysis.layer_effects`` rows): one panel per measure, one line per pair with
    its 95% CI band; layers whose Holm-adjusted p (across the layers of that pair and measure) is below 0.05 are
    filled markers, the others hollow; the dashed line is no effect."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    frame = table.reset_index() if "measure" not in table.columns else table
    measures = list(dict.fromkeys(frame["measure"]))
    fig, axes = plt.subplots(1, len(measures), figsize=(4.4 * len(measures) + 1.5, 3.3), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        for (a, b), g in frame[frame["measure"] == measure].groupby(["a", "b"], sort=False):
            g = g.sort_values("layer")
            line, = ax.plot(g["layer"], g["diff"], lw=1.3, label=f"{b} - {a}")
            ax.fill_between(g["layer"], g["lo"], g["hi"], color=line.get_color(), alpha=0.18, lw=0)
            sig = g["p_adj"] < 0.05
            ax.plot(g["layer"][sig], g["diff"][sig], "o", color=line.get_color(), ms=4.5)
            ax.plot(g["layer"][~sig], g["diff"][~sig], "o", color=line.get_color(), mfc="white", ms=3.5)
        ax.axhline(0, color="k", ls="--", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_title(f"{_label(measure)}: b - a", fontsize=9)
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles, _ = axes[0][-1].get_legend_handles_labels()
    handles += [Line2D([], [], marker="o", ls="", color="0.3", label="Holm-adjusted p < 0.05 (across layers)"),
                Line2D([], [], marker="o", ls="", color="0.3", mfc="white", label="not significant (Holm)")]
    axes[0][-1].legend(handles=handles, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig
