"""The results of a study: every system rescored from its generations (so a scorer change needs no new generations).

A system without results is reported as *absent*, with the reason, only when that is an expected state of a study
under way: its run is not finished, or it has not been evaluated (no metrics.json). Anything else (a corrupt
generations file, gold answers that do not match, a bug) raises: a report must never quietly leave a system out.
"""
from __future__ import annotations

from qalign_lib.core import layout, log
from qalign_lib.core.errors import RunError
from qalign_lib.data import corpora
from qalign_lib.evaluation import scoring
from qalign_lib.study.studies import Study

logger = log.get(__name__)



def extra_system(model: str) -> str:
    """The display name of a model evaluated outside the study (``evaluate.ipynb -p model ...``)."""
    return f"model: {model}"


def systems(study: Study, extra_models=()) -> dict[str, str]:
    """display name -> run name, ``base`` or ``model:<id>``: the study's systems, then the extra models."""
    out = dict(study.systems)
    out.update({extra_system(m): layout.model_ref(m) for m in extra_models})
    return out


def collect(study: Study, scorer: str = scoring.DEFAULT, extra_models=()) -> tuple[dict, dict]:
    """Rescore every system of ``study`` (and ``extra_models``) from its generations with ``scorer``.

    Returns ``(results, absent)``: results = {system: {benchmark: scoring.score_rows result, with per_question}},
    absent = {system: why it has no results}. Only an unfinished run (the RunError's message) and a missing
    metrics.json (``not evaluated (<eval root>)``) make a system absent; every other error propagates.
    """
    from qalign_lib.evaluation import evaluator

    scoring.get(scorer)  # an unknown scorer is a ConfigError before anything is read
    cfg = study.cfg
    results: dict[str, dict] = {}
    absent: dict[str, str] = {}
    for system, ref in systems(study, extra_models).items():
        try:
            root = evaluator.target(cfg, **layout.target_of(ref))
        except RunError as e:  # not trained yet (or skipped for missing data)
            absent[system] = str(e).split(";")[0]
            continue
        if not root.metrics.is_file():
            absent[system] = f"not evaluated ({root.path})"
            continue
        results[system] = {}
        for b in study.benchmarks:
            langs = evaluator.requested(cfg, b)
            gens = evaluator.load_generations(root, b, langs, cfg.eval_limit)
            rows = [r for lang in langs for r in gens.get(lang, [])]
            if not rows:
                logger.warning("%s: no %s generations in %s", system, b, root.bench_dir(b))
                continue
            missing = [lang for lang in langs if not gens.get(lang)]
            if missing:
                logger.warning("%s: no %s generations for %s in %s", system, b, " ".join(missing), root.bench_dir(b))
            gold = {lang: corpora.gold_answers(b, lang) for lang in gens}
            results[system][b] = scoring.score_rows(rows, gold, b, scorer, source=str(root.bench_dir(b)))
    logger.info("results: %d systems rescored (%s scorer), %d absent", len(results), scorer, len(absent))
    return results, absent
