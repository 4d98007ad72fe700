"""One model's analysis end to end: what it needs (languages, settings), whether a stored analysis is complete,
and :func:`analyze`, which translates and represents the questions of every benchmark the size's analysis
parameters name, for a run, the base model or any model (``notebooks/analyze.ipynb``, ``qalign study``).
The measures themselves live in :mod:`.translation` and :mod:`.representations`; the package docstring says what
they mean.
"""
from __future__ import annotations

from qalign_lib.analysis.inputs import REF, analysis_langs, parallel_questions
from qalign_lib.analysis.representations import (
    represent,
    representation_complete,
    representation_problem,
    representation_settings,
)
from qalign_lib.analysis.translation import (
    rows_hash,
    scoring_settings,
    translate,
    translation_rows,
    translation_settings,
)
from qalign_lib.core import benchmarks as registry
from qalign_lib.core import files, layout, locks, log
from qalign_lib.core.config import Config
from qalign_lib.core.errors import ConfigError, RunError

logger = log.get(__name__)


# ----------------------------------------------------------------------------------------------------------------
# One system's analyses (the analyze notebook, `qalign study`)


def target(cfg: Config, run: str | None = None, model: str | None = None) -> layout.AnalysisRoot:
    if model is not None and not str(model).strip():
        raise ConfigError("model='': give a Hub id or a local path, or leave model unset (None) to analyse `run`")
    return layout.analysis_root(cfg.size, cfg.model, run, model)


def _langs(cfg: Config, benchmark: str) -> list[str]:
    return [lang for lang in cfg.analysis_langs if lang in registry.get(benchmark).langs]


def _engine_settings(cfg: Config) -> dict:
    from qalign_lib.models import engines

    return engines.describe(cfg.engine)


def settings(cfg: Config, benchmark: str, model_ref: str) -> dict[str, dict]:
    """The settings each part of a benchmark's analysis is written with, from the parameters of group analysis."""
    ids, questions = parallel_questions(benchmark, _langs(cfg, benchmark), cfg.representation_limit)
    return {"translation": translation_settings(cfg.translation_max_new_tokens, model_ref, _engine_settings(cfg),
                                                benchmark),
            "representations": representation_settings(cfg.representation_pooling, model_ref,
                                                        [lang for lang in questions if lang != REF], ids, questions)}


def incomplete(cfg: Config, run: str | None = None, model: str | None = None) -> str | None:
    """Why the stored analyses cannot be trusted as they are (one line), or None when every analysis of the config
    is written with the current settings, model and questions, whole (hashes of the representation tables), and
    its translation metrics were computed from the rows now stored for every question."""
    try:
        root = target(cfg, run, model)
    except RunError as e:
        return str(e).split(";")[0]
    for benchmark in registry.parse(cfg.analysis_benchmarks):
        want = settings(cfg, benchmark, root.model)
        problem = representation_problem(root.representations(benchmark), want["representations"])
        if problem:
            return problem
        out = root.translation(benchmark)
        for path in (out.settings, out.metrics):
            if not path.is_file():
                return f"{path}: missing"
        if files.read_json(out.settings) != want["translation"]:
            return f"{out.settings}: settings changed since"
        ids, questions = parallel_questions(benchmark, _langs(cfg, benchmark), cfg.translation_limit)
        rows = {lang: translation_rows(out, lang, ids) for lang in questions if lang != REF}
        short = [lang for lang, r in rows.items() if len(r) < len(ids)]
        if short:
            return f"{out.path}: translations missing in {', '.join(short)}"
        metrics = files.read_json(out.metrics)
        if metrics.get("n") != {lang: len(ids) for lang in rows}:
            return f"{out.metrics}: does not cover every question"
        if metrics.get("scoring") != scoring_settings(cfg.translation_length_cap):  # rescored, not regenerated
            return f"{out.metrics}: scored with other settings"
        if metrics.get("inputs") != {"settings": files.content_hash(want["translation"]), "rows": rows_hash(rows)}:
            return f"{out.metrics}: not computed from the translations now stored"
    return None


def is_complete(cfg: Config, run: str | None = None, model: str | None = None) -> bool:
    """True when every analysis of the config is written with the current settings and covers every question
    (:func:`incomplete` says why not)."""
    return incomplete(cfg, run, model) is None


def analyze(cfg: Config, run: str | None = None, model: str | None = None) -> dict:
    """Representations, then translations, of one system for every benchmark of ``analysis_benchmarks``; returns
    {benchmark: {"representations": similarity table, "translation": metrics}}. Holds the analysis root's lock,
    and its run's lock shared (the run cannot be retrained meanwhile)."""
    from qalign_lib.models import engines, modeling

    modeling.preflight(cfg)
    root = target(cfg, run, model)
    names = registry.parse(cfg.analysis_benchmarks)
    for name in names:
        analysis_langs(name, _langs(cfg, name))  # bad languages stop here, before a model is loaded
    out: dict = {}
    with locks.holding(root.run_lock), \
            locks.lock(root.lock_file, f"the analysis of {root.model} ({root.path})"):
        if root.run_lock is not None:  # still finished now that it is held (not retrained since it was found)
            layout.RunDir(root.path.parent).require_done()
        hf = None  # Transformers: the hidden states, and the translations when the engine is hf
        for name in names:
            rdir, want = root.representations(name), settings(cfg, name, root.model)["representations"]
            if not representation_complete(rdir, want):
                hf = hf or engines.HF.load(root.model, engines.dtype(cfg.dtype))
            out[name] = {"representations": represent(hf and hf.model, hf and hf.tokenizer, rdir, name, _langs(cfg, name),
                                                      cfg.representation_limit, cfg.analysis_batch_size,
                                                      cfg.representation_pooling, root.model)}
        engine = None
        for name in names:
            tdir, want = root.translation(name), settings(cfg, name, root.model)["translation"]
            if engine is None and not _translations_complete(cfg, tdir, name, want):
                if engines.resolve(cfg.engine) == "hf":
                    engine = hf or engines.HF.load(root.model, engines.dtype(cfg.dtype))
                else:  # vLLM wants 0.92 of the card free: the Transformers copy goes first, cache and all
                    engines.release(hf)
                    hf = None
                    engine = engines.for_config(cfg, root.model)  # tensor parallel etc. as evaluation
            out[name]["translation"] = translate(engine, tdir, name, _langs(cfg, name), cfg.translation_limit,
                                                 cfg.translation_max_new_tokens, cfg.analysis_batch_size,
                                                 cfg.eval_token_budget, want, length_cap=cfg.translation_length_cap)
    return out


def _translations_complete(cfg: Config, out: layout.TranslationDir, benchmark: str, want: dict) -> bool:
    if not out.settings.is_file() or files.read_json(out.settings) != want:
        return False
    ids, questions = parallel_questions(benchmark, _langs(cfg, benchmark), cfg.translation_limit)
    return all(len(translation_rows(out, lang, ids)) == len(ids) for lang in questions if lang != REF)
