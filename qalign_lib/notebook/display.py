"""What the notebooks show a researcher: the resolved parameters, a training example with its loss mask, the loss
curve, the metrics, and a few generations with the numbers each scorer extracts. Display only: nothing is written.
Outside a notebook (plain Python) the objects are printed instead.
"""
from __future__ import annotations

import html
from pathlib import Path

from qalign_lib.core import benchmarks as registry
from qalign_lib.core import config, files, layout
from qalign_lib.core.config import Config
from qalign_lib.core.languages import AVG, AVG_NON_EN
from qalign_lib.data import corpora
from qalign_lib.evaluation import scoring


def _display(obj) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is None:
            raise ImportError
        display(obj)
    except ImportError:
        print(obj)


def _figure(fig) -> None:
    import matplotlib.pyplot as plt

    _display(fig)
    plt.close(fig)  # shown once, not again by the inline backend at the end of the cell


def config_frame(cfg: Config, groups=("model", "train", "data", "eval", "launch", "run")):
    """The resolved parameters of ``groups`` with what each affects and whether the size changed it."""
    import pandas as pd

    schema = config.schema()
    names = config.params(group=tuple(groups))
    return pd.DataFrame({"value": [repr(getattr(cfg, k)) for k in names],
                         "default": ["" if getattr(cfg, k) == schema[k].default else repr(schema[k].default) for k in names],
                         "affects": [schema[k].affects for k in names],
                         "meaning": [schema[k].help for k in names]}, index=names).rename_axis(f"size {cfg.size}")


def show_config(cfg: Config, groups=("model", "train", "data", "launch")) -> None:
    _display(config_frame(cfg, groups))


def example_tokens(run: Path, index: int = 0) -> list[tuple[str, bool]]:
    """(token text, trained on?) for one training example of a prepared run, exactly as training tokenizes it."""
    from qalign_lib.core.files import read_jsonl
    from qalign_lib.models import modeling
    from qalign_lib.train import training

    r = layout.RunDir(Path(run))
    meta = r.meta()
    examples = read_jsonl(r.train_jsonl, ("prompt", "completion"))
    tokenizer = modeling.load_tokenizer(meta["init_model"])
    if tokenizer.eos_token_id is None:
        return []
    rows, _ = training.tokenize([examples[index]], tokenizer, meta["config"]["max_length"])
    if not rows:
        return []
    return [(tokenizer.decode([t]), bool(m)) for t, m in zip(rows[0]["input_ids"], rows[0]["completion_mask"])]


def show_example(run: Path, index: int = 0) -> None:
    """One training example: grey tokens are masked out of the loss (the prompt), green ones are trained on (the
    completion and its EOS)."""
    tokens = example_tokens(run, index)
    if not tokens:
        _display("(the example's prompt fills max_length: no completion token is trained on)")
        return
    spans = "".join(
        f'<span style="background:{"#c8e6c9" if m else "#eeeeee"};border-right:1px solid #fff">{html.escape(t)}</span>'
        for t, m in tokens)
    n = sum(m for _, m in tokens)
    try:
        from IPython.display import HTML

        _display(HTML(f"<p>{len(tokens)} tokens: {len(tokens) - n} prompt (grey, masked), {n} completion (green, "
                      f"trained on, EOS last)</p><pre style='white-space:pre-wrap'>{spans}</pre>"))
    except ImportError:
        print("".join(t if m else t.upper() for t, m in tokens))


def show_run(run: Path) -> None:
    """A finished run's summary (examples, steps, first and last loss) and its loss curve."""
    import pandas as pd

    from qalign_lib.train import training

    r = layout.RunDir(Path(run))
    meta = r.meta()
    rows = training.read_log(r.path)
    _display(pd.DataFrame({"value": [meta["name"], meta["init"], "+".join(meta["tasks"]), " ".join(meta["langs"]),
                                     meta["n_examples"], len(rows), rows[0]["loss"] if rows else None,
                                     rows[-1]["loss"] if rows else None, str(r.model)]},
                          index=["run", "init", "data", "languages", "examples", "steps", "first loss", "last loss", "model"]))
    if r.lengths.is_file():  # examples per language kept whole, cut at max_length, dropped
        lengths = files.read_json(r.lengths)
        print(f"examples per language against max_length {lengths['max_length']} (tokens, EOS included):")
        _display(pd.DataFrame(lengths["per_lang"]).T)
    _figure(training.loss_curve(rows, title=f"{meta['name']}: training loss"))


def metrics_frame(metrics: dict, scorer: str = scoring.DEFAULT):
    """benchmark x language accuracy table of one metrics.json, with the averages."""
    import pandas as pd

    rows = {}
    for name in registry.NAMES:
        if name in metrics:
            r = metrics[name][scorer]
            rows[registry.get(name).display] = {**r["accuracy"], AVG: r["average"], AVG_NON_EN: r["average_non_en"]}
    return pd.DataFrame(rows).T


def show_metrics(metrics: dict) -> None:
    for scorer in scoring.SCORERS:
        print(f"accuracy (%), {scorer} scorer, {metrics['model']}, {metrics.get('limit') or 'all'} questions per language")
        _display(metrics_frame(metrics, scorer).round(1))


def generations_frame(root: layout.EvalRoot, benchmark: str, langs, per_lang: int = 2, width: int = 160):
    """A few generations per language with the gold answer and the number every scorer extracts."""
    import pandas as pd

    from qalign_lib.evaluation.evaluator import generations

    out = []
    for lang in langs:
        if lang not in registry.get(benchmark).langs:
            continue
        gold = corpora.gold_answers(benchmark, lang)
        questions = {q["id"]: q["question"] for q in corpora.load_benchmark(benchmark, lang)}
        for row in generations(root, benchmark, lang)[:per_lang]:
            item = {"lang": lang, "id": row["id"], "question": questions[row["id"]][:width],
                    "response": row["response"][:width] + ("…" if len(row["response"]) > width else ""),
                    "gold": gold[row["id"]]}
            for name in scoring.SCORERS:
                pred = scoring.extract(row["response"], name)
                item[f"{name} pred"] = pred
                item[f"{name} ok"] = scoring.is_correct(pred, gold[row["id"]])
            out.append(item)
    return pd.DataFrame(out)


def show_generations(root: layout.EvalRoot, benchmark: str, langs, per_lang: int = 2) -> None:
    frame = generations_frame(root, benchmark, langs, per_lang)
    print(f"{registry.get(benchmark).display}: {per_lang} generations per language, {root.path}")
    _display(frame)


def translations_frame(out: layout.TranslationDir, langs, per_lang: int = 2, width: int = 160):
    """A few stage-1 translations per language: the source question, the model's English, the reference."""
    import pandas as pd

    from qalign_lib.analysis.translation import translation_rows

    cut = lambda text: text[:width] + ("…" if len(text) > width else "")  # noqa: E731
    rows = [{"lang": lang, "id": r["id"], "source": cut(r["source"]), "hypothesis": cut(r["hypothesis"]),
             "reference": cut(r["reference"]), "new tokens": r.get("new_tokens")}
            for lang in langs for r in translation_rows(out, lang)[:per_lang]]
    return pd.DataFrame(rows)


def show_analysis(result: dict, root: layout.AnalysisRoot, per_lang: int = 2) -> None:
    """One system's analyses (analysis.analyze's result): chrF and BLEU per language with their CIs, a few
    translations, and the representation alignment against layer."""
    import pandas as pd

    from qalign_lib.report import figures

    for benchmark, parts in result.items():
        m = parts["translation"]
        frame = pd.DataFrame({metric: {lang: f"{v:.1f} [{m['ci'][metric][lang][0]:.1f}, {m['ci'][metric][lang][1]:.1f}]"
                                       for lang, v in m[metric].items()} for metric in ("chrf", "bleu")})
        print(f"{registry.get(benchmark).display}: translation into English (95% bootstrap CIs), {root.path}")
        _display(frame)
        langs = [lang for lang in m["n"]]
        _display(translations_frame(root.translation(benchmark), langs, per_lang))
        table = parts["representations"].assign(system=str(root.model))
        _figure(figures.representation_lines(table, f"{registry.get(benchmark).display}: representation alignment with "
                                                    "English (mean over languages, 95% CI)"))
