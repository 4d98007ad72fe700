"""Figures as matplotlib ``Figure`` objects: pure builders from data, plus one atomic ``save``.

No backend is chosen here: in a notebook the figures show inline, headless matplotlib falls back to Agg by itself.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def save(fig, path: Path, dpi: int = 130) -> Path:
    """Write ``fig`` to ``path`` through a temporary file and a rename (no half-written image), then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
