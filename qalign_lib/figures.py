"""Figures as matplotlib ``Figure`` objects: pure builders from data, plus one atomic ``save``.

No backend is chosen here: in a notebook the figures show inline, headless matplotlib falls back to Agg by itself.
"""
from __future__ import annotations

from pathlib import Path

from .io import atomic_write


def save(fig, path: Path, dpi: int = 130) -> Path:
    """Write ``fig`` to ``path`` atomically (no half-written image; the rules of :func:`qalign_lib.io.atomic_write`:
    symlinks written through, only regular files replaced, modes kept), then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def loss_curve(log: list[dict], title: str = ""):
    """Training loss per optimizer step (the rows of a run's train_log.jsonl)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    if log:
        ax.plot([r["step"] for r in log], [r["loss"] for r in log], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


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
    grid.figure.suptitle(title, fontsize=10, y=1.02)
    return grid.figure
