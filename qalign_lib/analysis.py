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

import time

import numpy as np
import pandas as pd

from . import benchmarks as registry
from . import config, data, layout, log, prompts, statistics
from .config import Config
from .errors import ConfigError, DataError, ResultsError, RunError
from .io import append_jsonl, atomic_write, read_results, write_json
from .languages import parse_langs

logger = log.get(__name__)

REF = "en"
METRICS = ("chrf", "bleu")  # sacrebleu's CHRF() and BLEU() with their defaults
MEASURES = ("cosine", "centred_cosine", "retrieval_top1", "retrieval_top1_centred")
PER_QUESTION = ("lang", "layer", "id", *MEASURES)
AVG = "avg"  # the language label of averages over languages


# ----------------------------------------------------------------------------------------------------------------
# Parallel questions


def analysis_langs(benchmark: str, langs) -> list[str]:
    """The non-English languages of ``langs`` that ``benchmark`` has parallel questions in; an error names any
    language without them (English is the reference, never analysed against itself)."""
    b = registry.get(benchmark)
    asked = parse_langs(langs, allowed=registry.all_langs(), what="langs")
    if REF in asked:
        raise ConfigError(f"langs: {REF} is the reference every language is compared with; leave it out")
    bad = [lang for lang in asked if lang not in b.langs]
    if bad:
        raise ConfigError(f"langs: {b.display} has no parallel questions in {', '.join(bad)}; it has "
                          f"{' '.join(x for x in b.langs if x != REF)}")
    return asked


def parallel_questions(benchmark: str, langs, limit: int | None = None, root=None) -> tuple[list, dict[str, dict]]:
    """(ids, {lang: {id: question}}) of the first ``limit`` English questions (file order) and the questions of
    the same ids in ``langs`` (aligned by id, never by line); English included under ``en``."""
    langs = analysis_langs(benchmark, langs)
    english = data.load_benchmark(benchmark, REF, root=root, limit=limit)
    ids = list(english["id"])
    out = {REF: dict(zip(english["id"], english["question"]))}
    for lang in langs:
        rows = data.load_benchmark(benchmark, lang, root=root)
        by_id = dict(zip(rows["id"], rows["question"]))
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DataError(f"{data.path_of(benchmark, lang, root=root)}: no question with id {missing[:5]} "
                            f"({len(missing)} of {len(ids)} ids of the English file); the benchmark must be parallel")
        out[lang] = {i: by_id[i] for i in ids}
    return ids, out


# ----------------------------------------------------------------------------------------------------------------
# chrF and BLEU from sacrebleu's sufficient statistics (vectorised over bootstrap resamples)


def _sacrebleu(metric: str):
    from sacrebleu.metrics import BLEU, CHRF

    if metric not in METRICS:
        raise ConfigError(f"unknown translation metric {metric!r}; choose from {', '.join(METRICS)}")
    return CHRF() if metric == "chrf" else BLEU()


def sentence_stats(metric: str, hypotheses: list[str], references: list[str]) -> np.ndarray:
    """(n, k) per-sentence sufficient statistics of sacrebleu's default ``metric``; their sum scores the corpus."""
    m = _sacrebleu(metric)
    return np.asarray(m._extract_corpus_statistics(list(hypotheses), [list(references)]), dtype=float)


def chrf_from_stats(summed: np.ndarray) -> np.ndarray:
    """sacrebleu's CHRF._compute_f_score (defaults: 6 character orders, no word order, beta 2, effective-order
    averaging) for each row of summed statistics (m, 3 x orders) -> (m,) scores in [0, 100]."""
    m = _sacrebleu("chrf")
    s = np.asarray(summed, dtype=float).reshape(len(summed), m.order, 3)
    hyp, ref, match = s[..., 0], s[..., 1], s[..., 2]
    valid = (hyp > 0) & (ref > 0)
    prec = np.where(valid, match / np.where(hyp > 0, hyp, 1), 0.0)
    rec = np.where(valid, match / np.where(ref > 0, ref, 1), 0.0)
    eff = valid.sum(1)
    avg_p = np.where(eff > 0, prec.sum(1) / np.maximum(eff, 1), 0.0)
    avg_r = np.where(eff > 0, rec.sum(1) / np.maximum(eff, 1), 0.0)
    factor = m.beta ** 2
    denom = factor * avg_p + avg_r
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(avg_p + avg_r > 0, (1 + factor) * avg_p * avg_r / np.where(denom > 0, denom, 1), 0.0)
    return 100 * f


def bleu_from_stats(summed: np.ndarray) -> np.ndarray:
    """sacrebleu's BLEU.compute_bleu (defaults: 4-gram, 'exp' smoothing, no effective order) for each row of summed
    statistics [sys_len, ref_len, correct_1..4, total_1..4] -> (m,) scores in [0, 100]."""
    m = _sacrebleu("bleu")
    order = m.max_ngram_order
    s = np.asarray(summed, dtype=float).reshape(len(summed), 2 + 2 * order)
    sys_len, ref_len, correct, total = s[:, 0], s[:, 1], s[:, 2:2 + order], s[:, 2 + order:]
    with np.errstate(divide="ignore", invalid="ignore"):
        bp = np.where(sys_len < ref_len, np.where(sys_len > 0, np.exp(1 - ref_len / np.where(sys_len > 0, sys_len, 1)), 0.0), 1.0)
    logs = np.zeros(len(s))
    alive = np.ones(len(s), dtype=bool)  # sacrebleu stops at the first order without any n-gram (precision 0 after)
    smooth = np.ones(len(s))
    for n in range(order):
        alive &= total[:, n] > 0
        zero = correct[:, n] == 0
        smooth = np.where(alive & zero, smooth * 2, smooth)
        with np.errstate(divide="ignore", invalid="ignore"):
            prec = np.where(zero, 100.0 / (smooth * np.where(total[:, n] > 0, total[:, n], 1)),
                            100.0 * correct[:, n] / np.where(total[:, n] > 0, total[:, n], 1))
        logs += np.where(alive, np.log(np.where(alive, prec, 1.0)), -9999999999.0)  # sacrebleu's my_log(0)
    score = bp * np.exp(logs / order)
    return np.where(correct.sum(1) > 0, score, 0.0)


SCORES = {"chrf": chrf_from_stats, "bleu": bleu_from_stats}


def signature(metric: str) -> str:
    """sacrebleu's signature of the metric as computed here (one reference per hypothesis)."""
    m = _sacrebleu(metric)
    m.num_refs = 1
    return m.get_signature().format()


def corpus_score(metric: str, hypotheses: list[str], references: list[str]) -> float:
    """The corpus score, as sacrebleu's ``corpus_score(hypotheses, [references]).score``."""
    return float(SCORES[metric](sentence_stats(metric, hypotheses, references).sum(0, keepdims=True))[0])


# ----------------------------------------------------------------------------------------------------------------
# Translation


def translation_prompt(question: str, lang: str) -> str:
    """The stage-1 prompt X -> English, byte for byte as training builds it."""
    return prompts.alpaca(prompts.translate(question, lang, REF))


def translation_settings(max_new_tokens: int, model_ref: str, engine: dict | None = None) -> dict:
    """What determines the translations (a change moves old ones aside)."""
    return {"model": model_ref, "template": prompts.ALPACA_TEMPLATE, "instruction": prompts.TRANSLATE_INSTRUCTION,
            "target": REF, "decoding": "greedy", "max_new_tokens": int(max_new_tokens), **(engine or {})}


def translation_rows(out: layout.TranslationDir, lang: str, ids=None) -> list[dict]:
    """Rows of one language's translations, those of ``ids`` when given (an id twice: the first row counts)."""
    rows = read_results(out.hypotheses(lang), ("id", "hypothesis", "reference"), "delete the file to translate again")
    wanted = None if ids is None else set(ids)
    seen, kept = set(), []
    for row in rows:
        if row["id"] in seen or (wanted is not None and row["id"] not in wanted):
            continue
        seen.add(row["id"])
        kept.append(row)
    return kept


def translate(engine, out: layout.TranslationDir, benchmark: str, langs, limit: int | None, max_new_tokens: int,
              batch_size: int, token_budget: int | None = None, settings: dict | None = None, root=None,
              n_boot: int = 1000) -> dict:
    """Translate what is missing into ``out`` with ``engine`` (:mod:`qalign_lib.engines`: ``generate(prompts, ...)``
    yielding ``[(index, text, new tokens)]`` per batch), then score everything; writes and returns metrics.json."""
    from .generation import done_ids

    ids, questions = parallel_questions(benchmark, langs, limit, root)
    langs = [lang for lang in questions if lang != REF]
    want = settings or translation_settings(max_new_tokens, "unknown")
    old = layout.read_json(out.settings) if out.settings.is_file() else None
    if old is not None and old != want:
        layout.move_aside(out.path, "translation settings changed")
    write_json(out.settings, want)
    todo = []
    for lang in langs:
        have = done_ids(out.hypotheses(lang))
        todo += [(lang, i) for i in ids if i not in have]
    if todo:
        logger.info("%s: translating %d questions (%s) into English", benchmark, len(todo), ",".join(langs))
        texts = [translation_prompt(questions[lang][i], lang) for lang, i in todo]
        for batch in engine.generate(texts, max_new_tokens, batch_size, token_budget, desc=f"translate {benchmark}"):
            by_lang: dict[str, list[dict]] = {}
            for k, text, n in sorted(batch):
                lang, i = todo[k]
                by_lang.setdefault(lang, []).append({"id": i, "lang": lang, "source": questions[lang][i],
                                                     "hypothesis": text.strip(), "reference": questions[REF][i],
                                                     "new_tokens": n})
            for lang, rows in by_lang.items():
                append_jsonl(out.hypotheses(lang), rows)
    rows = {lang: translation_rows(out, lang, ids) for lang in langs}
    metrics = {"benchmark": benchmark, "model": want.get("model"), "n": {lang: len(r) for lang, r in rows.items()},
               **translation_metrics(rows, n_boot), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(out.metrics, metrics)
    return metrics


def translation_stats(rows: list[dict], metric: str) -> np.ndarray:
    return sentence_stats(metric, [r["hypothesis"] for r in rows], [r["reference"] for r in rows])


def translation_metrics(rows_by_lang: dict[str, list[dict]], n_boot: int = 1000, seed: int = 0) -> dict:
    """``{"chrf": {lang: score, "avg": mean}, "bleu": {...}, "ci": {metric: {lang: [lo, hi]}}, "signature": ...}``:
    corpus scores per language (and their plain mean over languages) with percentile-bootstrap 95% CIs; the
    average resamples the same ids in every language (only ids translated in every language take part)."""
    rows_by_lang = {lang: rows for lang, rows in rows_by_lang.items() if rows}
    out: dict = {m: {} for m in METRICS}
    out["ci"] = {m: {} for m in METRICS}
    out["signature"] = {m: signature(m) for m in METRICS}
    if not rows_by_lang:
        return out
    common = set.intersection(*({r["id"] for r in rows} for rows in rows_by_lang.values()))
    for metric in METRICS:
        groups = {}
        for lang, rows in rows_by_lang.items():
            ci = statistics.score_ci(translation_stats(rows, metric), SCORES[metric], n_boot, seed=seed)
            out[metric][lang], out["ci"][metric][lang] = ci["value"], [ci["lo"], ci["hi"]]
            groups[lang] = translation_stats(sorted((r for r in rows if r["id"] in common), key=lambda r: _key(r["id"])),
                                             metric)
        if common and len(groups) > 1:
            ci = statistics.score_ci(groups, SCORES[metric], n_boot, seed=seed)
            out[metric][AVG], out["ci"][metric][AVG] = ci["value"], [ci["lo"], ci["hi"]]
    return out


def _key(ident):
    return (type(ident).__name__, ident)


# ----------------------------------------------------------------------------------------------------------------
# Representations


def _question_positions(tokenizer, text: str, pooling: str) -> tuple[list[int], list[int]]:
    """(input ids, positions to pool) of one question: its own tokens, special tokens (BOS) fed but not pooled."""
    if pooling == "question":
        enc = tokenizer(text, add_special_tokens=True, return_special_tokens_mask=True)
        return enc["input_ids"], [k for k, special in enumerate(enc["special_tokens_mask"]) if not special]
    if pooling != "template":
        raise ConfigError(f"representation_pooling={pooling!r}: choose question or template")
    full = prompts.alpaca(text)
    start = prompts.ALPACA_TEMPLATE.index("{instruction}")
    end = start + len(text)
    enc = tokenizer(full, add_special_tokens=True, return_special_tokens_mask=True, return_offsets_mapping=True)
    keep = [k for k, ((a, b), special) in enumerate(zip(enc["offset_mapping"], enc["special_tokens_mask"]))
            if not special and b > a and a < end and b > start]
    return enc["input_ids"], keep


def pooled_states(model, tokenizer, texts: list[str], batch_size: int = 32, pooling: str = "question") -> np.ndarray:
    """(len(texts), layers + 1, hidden) float32: each text's hidden states of every layer (0 = the embeddings),
    averaged over the positions of :func:`_question_positions`. Batches are sorted by length and right-padded (a
    causal model's states of real tokens do not see the padding); the LM head is never run."""
    import torch

    encoded = [_question_positions(tokenizer, t, pooling) for t in texts]
    empty = [k for k, (_, keep) in enumerate(encoded) if not keep]
    if empty:
        raise DataError(f"{len(empty)} question(s) have no token to pool, e.g. {texts[empty[0]]!r}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda k: -len(encoded[k][0]))
    out = None
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            group = order[start:start + batch_size]
            width = max(len(encoded[k][0]) for k in group)
            ids = torch.full((len(group), width), pad, dtype=torch.long)
            attn = torch.zeros((len(group), width), dtype=torch.long)
            pool = torch.zeros((len(group), width), dtype=torch.float32)
            for row, k in enumerate(group):
                tokens, keep = encoded[k]
                ids[row, :len(tokens)] = torch.tensor(tokens)
                attn[row, :len(tokens)] = 1
                pool[row, keep] = 1
            states = backbone(input_ids=ids.to(device), attention_mask=attn.to(device), output_hidden_states=True,
                              use_cache=False).hidden_states
            weights = (pool / pool.sum(1, keepdim=True)).to(device)
            pooled = torch.stack([(h.float() * weights[..., None]).sum(1) for h in states], dim=1).cpu().numpy()
            if out is None:
                out = np.zeros((len(texts), pooled.shape[1], pooled.shape[2]), dtype=np.float32)
            out[group] = pooled
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def similarity(states: dict[str, np.ndarray], ids: list) -> pd.DataFrame:
    """Per-question measures of every non-English language against English, per layer: columns lang, layer, id,
    cosine (with its English counterpart), centred_cosine (after subtracting each language's mean vector at that
    layer), retrieval_top1 (1 if its English counterpart is the nearest English question by cosine, ties going to
    the first), retrieval_top1_centred. ``states`` maps each language (and ``en``) to (n, layers, hidden) arrays
    whose rows are the questions of ``ids``."""
    if REF not in states:
        raise ValueError("similarity needs the English states")
    n = len(ids)
    en = states[REF].astype(np.float64)
    frames = []
    for lang, x in states.items():
        if lang == REF:
            continue
        if x.shape != en.shape:
            raise ValueError(f"{lang}: states of shape {x.shape}, English {en.shape}")
        x = x.astype(np.float64)
        for layer in range(en.shape[1]):
            cols = {}
            for label, a, b in (("", x[:, layer], en[:, layer]),
                                ("centred_", x[:, layer] - x[:, layer].mean(0), en[:, layer] - en[:, layer].mean(0))):
                sims = _unit(a) @ _unit(b).T  # (n, n): question i against English question j
                cols[f"{label}cosine"] = np.diag(sims)
                cols[f"retrieval_top1{'_centred' if label else ''}"] = (sims.argmax(1) == np.arange(n)).astype(float)
            frames.append(pd.DataFrame({"lang": lang, "layer": layer, "id": ids, **cols}))
    if not frames:
        raise ValueError("similarity: no language besides English")
    return pd.concat(frames, ignore_index=True)[list(PER_QUESTION)]


def _stats_by_lang(per_question: pd.DataFrame, measure: str, layer: int) -> dict[str, np.ndarray]:
    """{lang: mean_stats of ``measure`` at ``layer``, rows in id order}."""
    at = per_question[per_question["layer"] == layer]
    return {lang: statistics.mean_stats(g.sort_values("id", key=lambda s: s.map(_key))[measure].to_numpy())
            for lang, g in at.groupby("lang", sort=False)}


def similarity_table(per_question: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per language (and ``avg``, the mean over languages, resampling the same ids in each) and layer: every
    measure with its 95% bootstrap CI (``<measure>_lo``, ``<measure>_hi``), n and the chance level of retrieval."""
    rows = []
    for layer in sorted(per_question["layer"].unique()):
        by_measure = {m: _stats_by_lang(per_question, m, layer) for m in MEASURES}
        langs = list(next(iter(by_measure.values())))
        for lang in [*langs, AVG] if len(langs) > 1 else langs:
            n = len(next(iter(by_measure.values()))[langs[0]])
            row = {"lang": lang, "layer": int(layer), "n": n, "chance": 1.0 / n}
            for m in MEASURES:
                groups = by_measure[m] if lang == AVG else {lang: by_measure[m][lang]}
                ci = statistics.score_ci(groups, statistics.mean_score, n_boot, seed=seed)
                row.update({m: ci["value"], f"{m}_lo": ci["lo"], f"{m}_hi": ci["hi"]})
            rows.append(row)
    return pd.DataFrame(rows)


def representation_settings(pooling: str, model_ref: str, langs: list[str], ids: list) -> dict:
    return {"model": model_ref, "pooling": pooling, "template": prompts.ALPACA_TEMPLATE if pooling == "template" else None,
            "reference": REF, "langs": list(langs), "ids": list(ids), "centring": "per language and layer, over the ids"}


def represent(model, tokenizer, out: layout.RepresentationDir, benchmark: str, langs, limit: int | None,
              batch_size: int = 32, pooling: str = "question", model_ref: str = "unknown", root=None,
              n_boot: int = 1000) -> pd.DataFrame:
    """Pool the states of the parallel questions, compare every language with English and write similarity.csv
    and per_question.csv (the settings last: they mark the analysis complete). Done already with the same
    settings: read and return it."""
    ids, questions = parallel_questions(benchmark, langs, limit, root)
    if len(ids) < 2:
        raise ConfigError(f"representations need at least 2 parallel questions (retrieval picks among them); got {len(ids)}")
    want = representation_settings(pooling, model_ref, [lang for lang in questions if lang != REF], ids)
    if representation_complete(out, want):
        return pd.read_csv(out.similarity)
    logger.info("%s: hidden states of %d questions x %d languages (%s pooling)", benchmark, len(ids), len(questions), pooling)
    states = {lang: pooled_states(model, tokenizer, [q[i] for i in ids], batch_size, pooling) for lang, q in questions.items()}
    per_question = similarity(states, ids)
    table = similarity_table(per_question, n_boot)
    for path, frame in ((out.per_question, per_question), (out.similarity, table)):
        with atomic_write(path) as f:
            frame.to_csv(f, index=False)
    write_json(out.settings, want)
    return table


def representation_complete(out: layout.RepresentationDir, want: dict) -> bool:
    return (out.settings.is_file() and out.similarity.is_file() and out.per_question.is_file()
            and layout.read_json(out.settings) == want)


def read_per_question(out: layout.RepresentationDir) -> pd.DataFrame:
    try:
        frame = pd.read_csv(out.per_question)
    except (OSError, ValueError) as e:
        raise ResultsError(f"{out.per_question}: cannot be read ({e}); delete it to recompute it") from None
    missing = [c for c in PER_QUESTION if c not in frame.columns]
    if missing:
        raise ResultsError(f"{out.per_question}: missing columns {missing}; delete it to recompute it")
    return frame


# ----------------------------------------------------------------------------------------------------------------
# One system's analyses (the analyze notebook, `qalign study`)


def target(cfg: Config, run: str | None = None, model: str | None = None) -> layout.AnalysisRoot:
    if model is not None and not str(model).strip():
        raise ConfigError("model='': give a Hub id or a local path, or leave model unset (None) to analyse `run`")
    return layout.analysis_root(cfg.size, cfg.model, run, model)


def _langs(cfg: Config, benchmark: str) -> list[str]:
    return [lang for lang in cfg.analysis_langs if lang in registry.get(benchmark).langs]


def _engine_settings(cfg: Config) -> dict:
    from . import engines

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
        if not out.settings.is_file() or not out.metrics.is_file() or layout.read_json(out.settings) != want["translation"]:
            return False
        ids, questions = parallel_questions(benchmark, _langs(cfg, benchmark), cfg.translation_limit)
        if any(len(translation_rows(out, lang, ids)) < len(ids) for lang in questions if lang != REF):
            return False
        if layout.read_json(out.metrics).get("n") != {lang: len(ids) for lang in questions if lang != REF}:
            return False
    return True


def analyze(cfg: Config, run: str | None = None, model: str | None = None) -> dict:
    """Representations, then translations, of one system for every benchmark of ``analysis_benchmarks``; returns
    {benchmark: {"representations": similarity table, "translation": metrics}}. Holds the analysis root's lock."""
    from . import engines, modeling

    modeling.preflight(cfg)
    root = target(cfg, run, model)
    names = registry.parse(cfg.analysis_benchmarks)
    for name in names:
        analysis_langs(name, _langs(cfg, name))  # bad languages stop here, before a model is loaded
    out: dict = {}
    with layout.lock(root.lock_file, f"the analysis of {root.model} ({root.path})"):
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
    if not out.settings.is_file() or layout.read_json(out.settings) != want:
        return False
    ids, questions = parallel_questions(benchmark, _langs(cfg, benchmark), cfg.translation_limit)
    return all(len(translation_rows(out, lang, ids)) == len(ids) for lang in questions if lang != REF)


# ----------------------------------------------------------------------------------------------------------------
# A study's analyses, for the report


def collect(study, n_boot: int = 1000) -> tuple[dict, dict]:
    """({system: {benchmark: {"translation": {lang: rows}, "representations": per-question frame}}}, absent) for
    the systems of the study's ``analyses``. A system is absent (with the reason) when its run is not finished or
    it has not been analysed; any other problem raises."""
    cfg = study.cfg
    found: dict = {}
    absent: dict = {}
    for system, ref in study.analyses.items():
        model = ref.split(":", 1)[1] if ref.startswith("model:") else None
        try:
            root = target(cfg, run=None if model else ref, model=model)
        except RunError as e:
            absent[system] = str(e).split(";")[0]
            continue
        per_bench = {}
        for benchmark in registry.parse(cfg.analysis_benchmarks):
            part = {}
            tdir, rdir = root.translation(benchmark), root.representations(benchmark)
            if tdir.metrics.is_file():
                ids, questions = parallel_questions(benchmark, _langs(cfg, benchmark), cfg.translation_limit)
                rows = {lang: translation_rows(tdir, lang, ids) for lang in questions if lang != REF}
                part["translation"] = {lang: r for lang, r in rows.items() if r}
            if rdir.per_question.is_file():
                part["representations"] = read_per_question(rdir)
            if part:
                per_bench[benchmark] = part
        if per_bench:
            found[system] = per_bench
        else:
            absent[system] = f"not analysed ({root.path})"
    return found, absent


def translation_table(found: dict, systems: list[str], benchmark: str, n_boot: int = 1000) -> pd.DataFrame:
    """Columns system, lang, metric, score, lo, hi, n: every system's chrF and BLEU per language and averaged."""
    rows = []
    for system in systems:
        per_lang = (found.get(system, {}).get(benchmark) or {}).get("translation")
        if not per_lang:
            continue
        m = translation_metrics(per_lang, n_boot)
        for metric in METRICS:
            for lang, score in m[metric].items():
                lo, hi = m["ci"][metric][lang]
                n = len(per_lang[lang]) if lang != AVG else min(len(r) for r in per_lang.values())
                rows.append({"system": system, "lang": lang, "metric": metric, "score": score, "lo": lo, "hi": hi, "n": n})
    return pd.DataFrame(rows, columns=["system", "lang", "metric", "score", "lo", "hi", "n"])


def representation_table(found: dict, systems: list[str], benchmark: str, n_boot: int = 1000) -> pd.DataFrame:
    """Every system's similarity table (per language, ``avg`` and layer) with a system column."""
    frames = []
    for system in systems:
        pq = (found.get(system, {}).get(benchmark) or {}).get("representations")
        if pq is not None and len(pq):
            frames.append(similarity_table(pq, n_boot).assign(system=system))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[["system", *[c for c in table.columns if c != "system"]]]


def _translation_groups(per_lang: dict[str, list[dict]], ids: list, metric: str) -> dict[str, np.ndarray]:
    out = {}
    for lang, rows in per_lang.items():
        by_id = {r["id"]: r for r in rows}
        out[lang] = translation_stats([by_id[i] for i in ids], metric)
    return out


def _representation_groups(pq: pd.DataFrame, measure: str, ids: list, langs: list[str]) -> dict[str, np.ndarray]:
    """{lang: mean_stats of ``measure`` averaged over layers, per id (in ``ids`` order)}."""
    out = {}
    for lang in langs:
        means = pq[pq["lang"] == lang].groupby("id")[measure].mean()
        out[lang] = statistics.mean_stats(means.reindex(ids).to_numpy())
    return out


def effects(found: dict, pairs, benchmark: str, n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """The difference b - a of each pair (a, b) of systems on the same questions, per language and averaged over
    languages (lang ``avg``): chrF and BLEU (corpus scores), and each representation measure averaged over every
    layer (embeddings included), with 95% paired-bootstrap CIs and p-values over question ids. Only the languages
    and ids both systems have take part. Columns: a, b, measure, lang, n, value a, value b, diff, lo, hi, p,
    excludes zero."""
    rows = []
    for a, b in pairs:
        fa, fb = found.get(a, {}).get(benchmark) or {}, found.get(b, {}).get(benchmark) or {}
        ta, tb = fa.get("translation"), fb.get("translation")
        if ta and tb:
            langs = [lang for lang in ta if lang in tb]
            ids = sorted(set.intersection(*({r["id"] for r in ta[lang]} & {r["id"] for r in tb[lang]} for lang in langs)),
                         key=_key) if langs else []
            if ids:
                for metric in METRICS:
                    ga, gb = _translation_groups({x: ta[x] for x in langs}, ids, metric), \
                        _translation_groups({x: tb[x] for x in langs}, ids, metric)
                    rows += _effect_rows(a, b, metric, ga, gb, SCORES[metric], n_boot, seed)
        pa, pb = fa.get("representations"), fb.get("representations")
        if pa is not None and pb is not None:
            langs = [lang for lang in pa["lang"].unique() if lang in set(pb["lang"])]
            ids = sorted(set(pa["id"]) & set(pb["id"]), key=_key)
            if langs and len(ids) >= 2:
                for measure in MEASURES:
                    rows += _effect_rows(a, b, measure, _representation_groups(pa, measure, ids, langs),
                                         _representation_groups(pb, measure, ids, langs), statistics.mean_score, n_boot, seed)
    columns = ["a", "b", "measure", "lang", "n", "value a", "value b", "diff", "lo", "hi", "p", "excludes zero"]
    return pd.DataFrame(rows, columns=columns)


def _effect_rows(a, b, measure, ga, gb, score, n_boot, seed) -> list[dict]:
    rows = []
    for lang in [*ga, AVG] if len(ga) > 1 else list(ga):
        pick = (lambda g: g) if lang == AVG else (lambda g: {lang: g[lang]})
        d = statistics.paired_score_diff(pick(ga), pick(gb), score, n_boot, seed=seed)
        rows.append({"a": a, "b": b, "measure": measure, "lang": lang, "n": d["n"], "value a": d["a"], "value b": d["b"],
                     "diff": d["diff"], "lo": d["lo"], "hi": d["hi"], "p": d["p_value"],
                     "excludes zero": bool(d["lo"] > 0 or d["hi"] < 0)})
    return rows


def summary(effect_rows: pd.DataFrame, a: str, b: str) -> str:
    """One sentence per measure of a pair's averaged effects, e.g. 'chrF +12.3 [9.1, 15.2] (CI excludes zero)'."""
    labels = {"chrf": "chrF", "bleu": "BLEU", "cosine": "cosine", "centred_cosine": "centred cosine",
              "retrieval_top1": "retrieval top-1", "retrieval_top1_centred": "centred retrieval top-1"}
    rows = effect_rows[(effect_rows["a"] == a) & (effect_rows["b"] == b) & (effect_rows["lang"] == AVG)]
    parts = []
    for _, r in rows.iterrows():
        digits = 1 if r["measure"] in METRICS else 4
        verdict = "CI excludes zero" if r["excludes zero"] else "CI includes zero"
        parts.append(f"{labels.get(r['measure'], r['measure'])} {r['diff']:+.{digits}f} "
                     f"[{r['lo']:+.{digits}f}, {r['hi']:+.{digits}f}] ({verdict})")
    return "; ".join(parts)
