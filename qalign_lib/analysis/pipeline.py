"""What stage 1 did, measured where a small model can show it: translation quality and representation alignment.

QAlign's claim is that question alignment (stage 1) maps non-English questions onto their English counterparts.
mGSM (250 questions) and mSVAMP (1,000) are parallel: question ``id`` is the same problem in every language, so
each non-English question has its English translation in the same benchmark. For any model (the base, a stage-1
run, a final system) this module measures

* **translation quality** (:func:`translate`): the stage-1 task itself. Each non-English question is translated
  into English with the stage-1 prompt, byte-identical to training (:func:`prompts.translate` inside
  :func:`prompts.alpaca`), greedy, and the hypotheses are scored against the English question of the same id with
  sacrebleu's default chrF and BLEU (13a tokenizer). Rows are appended per language as they are produced (a rerun
  resumes); changed settings move old translations aside.
* **representation alignment** (:func:`represent`): the hidden states of every layer (0 = embeddings; the last is
  after the final norm, as transformers returns it), mean-pooled over the question's own tokens (the raw question
  text: no template, no padding, no special tokens; ``representation_pooling: template`` feeds the Alpaca prompt
  and pools over the question's tokens inside it). Per language and layer: the mean cosine similarity of a
  question with its English counterpart, and cross-lingual retrieval top-1 (the English question nearest to each
  non-English one is its translation; chance = 1 / n). Mean-pooled states are strongly anisotropic (every pair
  looks similar), so both are also given after mean-centring each language's vectors (subtracting that language's
  mean vector at that layer over the questions analysed), the convention of the cross-lingual representation
  literature (e.g. Libovický et al. 2020, "On the language neutrality of pre-trained multilingual
  representations").

Every number comes with a 95% percentile-bootstrap CI over questions; averages over languages resample the same
question ids in every language (the benchmarks are parallel). :func:`effects` compares two models on the same
questions (paired bootstrap): the report's stage-1 effects.

Where files go is :mod:`qalign_lib.layout`'s business (:class:`~qalign_lib.layout.AnalysisRoot`); the study runs
:func:`analyze` for the systems its ``analysis`` section names (``notebooks/analyze.ipynb``).
"""
from __future__ import annotations

from qalign_lib.analysis.inputs import REF, analysis_langs, parallel_questions
from qalign_lib.analysis.representations import (
    represent,
    representation_complete,
    representation_settings,
)
from qalign_lib.analysis.translation import (
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
    return {"translation": translation_settings(cfg.translation_max_new_tokens, model_ref, _engine_settings(cfg)),
            "representations": representation_settings(cfg.representation_pooling, model_ref,
                                                        [lang for lang in questions if lang != REF], ids)}


def is_complete(cfg: Config, run: str | None = None, model: str | None = None) -> bool:
    """True when every analysis of the config is written with the current settings and covers every question."""
    try:
        root = target(cfg, run, model)
    except RunError:
        return False
    for benchmark in registry.parse(cfg.analysis_benchmarks):
        want = settings(cfg, benchmark, root.model)
        if not representation_complete(root.representations(benchmark), want["representations"]):
            return False
        out = root.translation(benchmark)
        if not out.settings.is_file() or not out.metrics.is_file() or files.read_json(out.settings) != want["translation"]:
            return False
        ids, questions = parallel_questions(benchmark, _langs(cfg, benchmark), cfg.translation_limit)
        if any(len(translation_rows(out, lang, ids)) < len(ids) for lang in questions if lang != REF):
            return False
        if files.read_json(out.metrics).get("n") != {lang: len(ids) for lang in questions if lang != REF}:
            return False
    return True


def analyze(cfg: Config, run: str | None = None, model: str | None = None) -> dict:
    """Representations, then translations, of one system for every benchmark of ``analysis_benchmarks``; returns
    {benchmark: {"representations": similarity table, "translation": metrics}}. Holds the analysis root's lock."""
    from qalign_lib.models import engines, modeling

    modeling.preflight(cfg)
    root = target(cfg, run, model)
    names = registry.parse(cfg.analysis_benchmarks)
    for name in names:
        analysis_langs(name, _langs(cfg, name))  # bad languages stop here, before a model is loaded
    out: dict = {}
    with locks.lock(root.lock_file, f"the analysis of {root.model} ({root.path})"):
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
                                                 cfg.eval_token_budget, want)
    return out


def _translations_complete(cfg: Config, out: layout.TranslationDir, benchmark: str, want: dict) -> bool:
    if not out.settings.is_file() or files.read_json(out.settings) != want:
        return False
    ids, questions = parallel_questions(benchmark, _langs(cfg, benchmark), cfg.translation_limit)
    return all(len(translation_rows(out, lang, ids)) == len(ids) for lang in questions if lang != REF)
