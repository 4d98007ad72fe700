"""Tables and figures: per-language accuracy tables (CSV, Markdown), bar charts, loss curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

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
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


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
            "launch", "num_processes"] + ([f"stage{stage}_limit"] if stage else [])
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
