"""Representation alignment: hidden states of every layer mean-pooled over a question's own tokens, and per
language and layer their cosine with the English counterpart and cross-lingual retrieval top-1, raw and after
mean-centring each language (:func:`per_question_similarity`); summaries with bootstrap CIs
(:func:`similarity_table`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from qalign_lib.analysis import inference
from qalign_lib.analysis.inputs import REF, _key, parallel_questions
from qalign_lib.core import files, layout, log
from qalign_lib.core.errors import ConfigError, DataError, ResultsError
from qalign_lib.core.files import atomic_write, write_json
from qalign_lib.core.languages import AVG
from qalign_lib.data import prompts

logger = log.get(__name__)

MEASURES = ("cosine", "centred_cosine", "retrieval_top1", "retrieval_top1_centred")
PER_QUESTION = ("lang", "layer", "id", *MEASURES)


# ----------------------------------------------------------------------------------------------------------------
# Representations


def _question_positions(tokenizer, text: str, pooling: str) -> tuple[list[int], list[int]]:
    """(input ids, positions to pool) of one question: its own tokens. Special tokens the tokenizer adds (a BOS,
    where it adds one: SmolLM2's does not) are fed but not pooled; with ``template`` pooling the Alpaca template
    around the question is fed and not pooled."""
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


def per_question_similarity(states: dict[str, np.ndarray], ids: list) -> pd.DataFrame:
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
    return {lang: inference.mean_stats(g.sort_values("id", key=lambda s: s.map(_key))[measure].to_numpy())
            for lang, g in at.groupby("lang", sort=False)}


def similarity_table(per_question: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per language (and ``Avg``, languages.AVG, the mean over languages, resampling the same ids in each) and layer: every
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
                ci = inference.score_ci(groups, inference.mean_score, n_boot, seed=seed)
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
    per_question = per_question_similarity(states, ids)
    table = similarity_table(per_question, n_boot)
    for path, frame in ((out.per_question, per_question), (out.similarity, table)):
        with atomic_write(path) as f:
            frame.to_csv(f, index=False)
    write_json(out.settings, want)
    return table


def representation_complete(out: layout.RepresentationDir, want: dict) -> bool:
    return (out.settings.is_file() and out.similarity.is_file() and out.per_question.is_file()
            and files.read_json(out.settings) == want)


def read_per_question(out: layout.RepresentationDir) -> pd.DataFrame:
    try:
        frame = pd.read_csv(out.per_question)
    except (OSError, ValueError) as e:
        raise ResultsError(f"{out.per_question}: cannot be read ({e}); delete it to recompute it") from None
    missing = [c for c in PER_QUESTION if c not in frame.columns]
    if missing:
        raise ResultsError(f"{out.per_question}: missing columns {missing}; delete it to recompute it")
    return frame
