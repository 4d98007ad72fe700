"""Representation alignment: hidden states of every layer mean-pooled over a question's own tokens, compared with
the English question of the same id, per language, layer and question (:func:`per_question_similarity`), and
summarised with bootstrap CIs, chance levels and hubness (:func:`similarity_table`).

Pooling (``representation_pooling``, :func:`_question_positions`). The first position of a causal LM is its attention
sink: from the middle layers on its state is huge in one dimension (SmolLM2-135M: norm ~25,500 against a median of
141, dimension 507). SmolLM2's tokenizer adds no BOS, so pooling the raw question (``question``, the old default)
averages the sink into the vector with weight 1/length: the pooled vector then follows token length, not meaning.
The other poolings feed something before the pooled tokens or leave the first token out; the default was chosen by
:func:`pooling_diagnostics` on the base model before any system was compared (docs/analyses.md): ``template``, the
question inside the Alpaca prompt, whose first tokens take the sink (at most 0.31 of the centred energy in one
dimension in any layer, against 0.96 for ``question``).

Measures (:data:`MEASURES`, per question and layer; :data:`MEASURE_INFO` gives each a label, digits and its chance
with n candidates). Raw mean-pooled states are anisotropic (every pair looks similar) and a few vectors are
everyone's nearest neighbour (hubs), so besides the raw ``cosine`` and ``retrieval_top1`` (X->En) every other
measure works on vectors centred per language and layer over the ids: ``centred_cosine``,
``retrieval_top1_centred``, ``margin`` (centred cosine with the counterpart minus the mean centred cosine with the
other English questions) and CSLS retrieval (Conneau et al. 2018, k = :data:`CSLS_K`), which discounts hubs, in
both directions: X->En (the question retrieves among all English questions of the ids) and En->X (the English
question retrieves among that language's), top-1 and reciprocal rank, and ``csls_mrr`` their mean. Chance: top-1
1/n, reciprocal rank H_n/n; retrieval below 0.02 chance needs n >= 50 ids. :data:`PRIMARY` are the measures of the
declared family of tests; :func:`summary_layers` the layers an effect is averaged over (1..L: the embeddings'
layer 0 is the same in every system).
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

MEASURE_VERSION = 2  # 1: cosine and X->En retrieval among the ids; 2: + margin, CSLS both ways, hubness
CSLS_K = 10  # neighbours of CSLS's hubness penalty (Conneau et al. 2018)


def harmonic_chance(n: int) -> float:
    """Expected reciprocal rank of a random ranking of n candidates: H_n / n."""
    return float(np.sum(1.0 / np.arange(1, n + 1)) / n)


def top1_chance(n: int) -> float:
    return 1.0 / n


MEASURE_INFO = {
    "cosine": dict(label="cosine with English", digits=3, chance=None),
    "centred_cosine": dict(label="mean-centred cosine", digits=3, chance=None),
    "margin": dict(label="centred cosine margin over mismatched English", digits=3, chance=None),
    "retrieval_top1": dict(label="retrieval top-1 X->En", digits=3, chance=top1_chance),
    "retrieval_top1_centred": dict(label="centred retrieval top-1 X->En", digits=3, chance=top1_chance),
    "csls_top1_x2en": dict(label="CSLS top-1 X->En", digits=3, chance=top1_chance),
    "csls_top1_en2x": dict(label="CSLS top-1 En->X", digits=3, chance=top1_chance),
    "csls_rr_x2en": dict(label="CSLS reciprocal rank X->En", digits=3, chance=harmonic_chance),
    "csls_rr_en2x": dict(label="CSLS reciprocal rank En->X", digits=3, chance=harmonic_chance),
    "csls_mrr": dict(label="CSLS MRR (both directions)", digits=3, chance=harmonic_chance),
}
MEASURES = tuple(MEASURE_INFO)
PRIMARY = ("csls_mrr", "margin")  # the representation measures in the declared family of tests
PER_QUESTION = ("lang", "layer", "id", *MEASURES, "nearest_en", "nearest_en_csls")


def summary_layers(n_layers: int) -> list[int]:
    """The layers a representation effect is averaged over: 1..n_layers (the transformer blocks' outputs).
    Layer 0, the embeddings, is left out a priori: LoRA and stage 1 never change it, so it is the same in every
    system and would only dilute a difference."""
    if n_layers < 1:
        raise ValueError(f"summary_layers: need at least one transformer layer, got {n_layers}")
    return list(range(1, n_layers + 1))


# ----------------------------------------------------------------------------------------------------------------
# Representations


POOLINGS = ("question", "question_skip_first", "template", "bos_prefix")


def sink_token_id(tokenizer) -> int:
    """The token ``bos_prefix`` pooling feeds before the question (never pooled): the tokenizer's BOS, else its EOS."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise ConfigError("representation_pooling=bos_prefix: the tokenizer has neither a BOS nor an EOS token; "
                          "choose template or question_skip_first")
    return int(tid)


def _question_positions(tokenizer, text: str, pooling: str) -> tuple[list[int], list[int]]:
    """(input ids, positions to pool) of one question: its own tokens. Special tokens the tokenizer adds (a BOS,
    where it adds one: SmolLM2's does not) are fed but not pooled. The first position of a causal model is its
    attention sink (a state of huge norm in one dimension), so every pooling but the old ``question`` keeps it out:
    ``question_skip_first`` feeds the question's first token and does not pool it, ``template`` feeds the Alpaca
    template around the question first, ``bos_prefix`` feeds :func:`sink_token_id` first."""
    if pooling not in POOLINGS:
        raise ConfigError(f"representation_pooling={pooling!r}: choose one of {', '.join(POOLINGS)}")
    if pooling != "template":
        enc = tokenizer(text, add_special_tokens=True, return_special_tokens_mask=True)
        ids = list(enc["input_ids"])
        keep = [k for k, special in enumerate(enc["special_tokens_mask"]) if not special]
        if pooling == "question_skip_first":
            keep = [k for k in keep if k > 0]
        elif pooling == "bos_prefix":
            ids = [sink_token_id(tokenizer), *ids]
            keep = [k + 1 for k in keep]
        return ids, keep
    full = prompts.alpaca(text)
    start = prompts.ALPACA_TEMPLATE.index("{instruction}")
    end = start + len(text)
    enc = tokenizer(full, add_special_tokens=True, return_special_tokens_mask=True, return_offsets_mapping=True)
    keep = [k for k, ((a, b), special) in enumerate(zip(enc["offset_mapping"], enc["special_tokens_mask"]))
            if not special and b > a and a < end and b > start]
    return enc["input_ids"], keep


def max_positions(model, tokenizer) -> int | None:
    """The most tokens the model is built for: its config's ``max_position_embeddings`` and the tokenizer's
    ``model_max_length`` (the smaller one that is set; tokenizers without a limit say 1e30), or None."""
    limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    limits = [int(n) for n in limits if isinstance(n, (int, float)) and 0 < n < 1e9]
    return min(limits) if limits else None


def _truncated(encoded: list[tuple[list[int], list[int]]], limit: int | None, texts: list[str]):
    """Each (input ids, positions to pool) cut to the first ``limit`` tokens (a longer question would make the
    forward pass allocate memory quadratic in its length: a 1,000,000-character question asks for tens of GB);
    logged when anything is cut."""
    if limit is None:
        return encoded
    long = [k for k, (ids, _) in enumerate(encoded) if len(ids) > limit]
    if long:
        k = long[0]
        logger.warning("%d question(s) longer than the model's %d positions are cut to their first %d tokens "
                       "(e.g. %d tokens: %r...)", len(long), limit, limit, len(encoded[k][0]), texts[k][:40])
    return [(list(ids[:limit]), [p for p in keep if p < limit]) for ids, keep in encoded]


def pooled_states(model, tokenizer, texts: list[str], batch_size: int = 32, pooling: str = "template",
                  max_tokens: int | None = None) -> np.ndarray:
    """(len(texts), layers + 1, hidden) float32: each text's hidden states of every layer (0 = the embeddings),
    averaged over the positions of :func:`_question_positions`, fed at most ``max_tokens`` tokens (default:
    :func:`max_positions`; a longer text is cut, with a warning). Batches are sorted by length and right-padded (a
    causal model's states of real tokens do not see the padding); the LM head is never run."""
    import torch

    limit = max_tokens if max_tokens is not None else max_positions(model, tokenizer)
    encoded = _truncated([_question_positions(tokenizer, t, pooling) for t in texts], limit, texts)
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


def pooled_lengths(tokenizer, texts: list[str], pooling: str) -> np.ndarray:
    """How many tokens :func:`pooled_states` averages for each text."""
    return np.array([len(_question_positions(tokenizer, t, pooling)[1]) for t in texts])


def pooling_diagnostics(states: dict[str, np.ndarray], lengths: dict[str, np.ndarray]) -> pd.DataFrame:
    """Does a pooling carry the attention sink? Per layer: ``maxdim_share``, the largest single dimension's share
    of the energy of all languages' pooled vectors centred per language (max_d sum_i x_id^2 / sum_i |x_i|^2;
    ``maxdim`` that dimension); ``rho_cos``, Spearman's rho of the centred cosine of each non-English question with
    its English counterpart against its pooled token count; ``rho_norm``, rho of each pooled vector's norm (not
    centred) against its token count, over every language. ``states``: {lang: (n, layers, hidden)} with English
    under ``en``; ``lengths``: {lang: (n,)} (:func:`pooled_lengths`)."""
    from scipy import stats

    en = np.swapaxes(states[REF].astype(np.float64), 0, 1)
    centred = {lang: np.swapaxes(x.astype(np.float64), 0, 1) for lang, x in states.items()}
    centred = {lang: x - x.mean(1, keepdims=True) for lang, x in centred.items()}
    others = [lang for lang in states if lang != REF]
    energy = sum((x ** 2).sum(1) for x in centred.values())  # (layers, hidden)
    cos = np.concatenate([(_unit(centred[lang]) * _unit(centred[REF])).sum(-1) for lang in others], axis=1)
    length_x = np.concatenate([lengths[lang] for lang in others])
    norms = np.concatenate([np.linalg.norm(states[lang].astype(np.float64), axis=-1).T for lang in states], axis=1)
    length_all = np.concatenate([lengths[lang] for lang in states])
    return pd.DataFrame({"layer": np.arange(en.shape[0]), "maxdim_share": energy.max(1) / energy.sum(1),
                         "maxdim": energy.argmax(1),
                         "rho_cos": [stats.spearmanr(c, length_x).statistic for c in cos],
                         "rho_norm": [stats.spearmanr(v, length_all).statistic for v in norms]})


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """(..., n) rank (1 = best) of each row's own candidate, the diagonal, among that row's n scores: 1 + how
    many score higher + how many earlier candidates tie (so rank 1 is exactly ``argmax == own``, ties to the first)."""
    n = scores.shape[-1]
    own = np.diagonal(scores, axis1=-2, axis2=-1)[..., None]
    earlier = np.arange(n)[None, :] < np.arange(n)[:, None]  # [i, j]: candidate j comes before query i
    return 1 + (scores > own).sum(-1) + ((scores == own) & earlier).sum(-1)


def _knn_mean(sims: np.ndarray, k: int) -> np.ndarray:
    """(..., n) mean of each row's k largest values."""
    return -np.partition(-sims, k - 1, axis=-1)[..., :k].mean(-1)


def csls(x: np.ndarray, y: np.ndarray, k: int = CSLS_K) -> np.ndarray:
    """(..., n, n) CSLS (Conneau et al. 2018) of every x_i with every y_j: 2 cos(x_i, y_j) - r_y(x_i) - r_x(y_j),
    r_y(x_i) the mean cosine of x_i with its k nearest y (k capped at n). It lowers the score of hubs, vectors near
    everything. Unit-normalises; centre first."""
    sims = _unit(x) @ np.swapaxes(_unit(y), -1, -2)
    k = min(k, sims.shape[-1])
    return 2 * sims - _knn_mean(sims, k)[..., :, None] - _knn_mean(np.swapaxes(sims, -1, -2), k)[..., None, :]


def _layer_measures(x: np.ndarray, en: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-question measure of one language against English, all layers at once: ``x``, ``en`` (layers, n,
    hidden) float64 with row i of both the same question; each value (layers, n). Also the index of each question's
    nearest English question, raw (``nearest_en``) and by CSLS on centred vectors (``nearest_en_csls``)."""
    n = x.shape[1]
    sims = _unit(x) @ np.swapaxes(_unit(en), -1, -2)  # (layers, n, n): question i against English question j
    xc, ec = x - x.mean(1, keepdims=True), en - en.mean(1, keepdims=True)
    csims = _unit(xc) @ np.swapaxes(_unit(ec), -1, -2)
    scores = csls(xc, ec)
    own = np.arange(n)
    rank_x2en, rank_en2x = _ranks(scores), _ranks(np.swapaxes(scores, -1, -2))
    off = ~np.eye(n, dtype=bool)
    return {
        "cosine": np.diagonal(sims, axis1=1, axis2=2),
        "centred_cosine": np.diagonal(csims, axis1=1, axis2=2),
        "margin": np.diagonal(csims, axis1=1, axis2=2) - (csims * off).sum(-1) / (n - 1),
        "retrieval_top1": (sims.argmax(-1) == own).astype(float),
        "retrieval_top1_centred": (csims.argmax(-1) == own).astype(float),
        "csls_top1_x2en": (rank_x2en == 1).astype(float),
        "csls_top1_en2x": (rank_en2x == 1).astype(float),
        "csls_rr_x2en": 1.0 / rank_x2en,
        "csls_rr_en2x": 1.0 / rank_en2x,
        "csls_mrr": (1.0 / rank_x2en + 1.0 / rank_en2x) / 2,
        "nearest_en": sims.argmax(-1),
        "nearest_en_csls": scores.argmax(-1),
    }


def per_question_similarity(states: dict[str, np.ndarray], ids: list) -> pd.DataFrame:
    """Per-question measures (:data:`MEASURES`) of every non-English language against English, per layer, plus
    the id of each question's nearest English question (``nearest_en`` by raw cosine, ``nearest_en_csls`` by CSLS
    on centred vectors; hubness is how many questions share one). ``states`` maps each language (and ``en``) to
    (n, layers, hidden) arrays whose rows are the questions of ``ids``; centring subtracts each language's mean
    over the ids at each layer."""
    if REF not in states:
        raise ValueError("similarity needs the English states")
    n = len(ids)
    if n < 2:
        raise ValueError(f"similarity needs at least 2 questions (retrieval picks among them); got {n}")
    en = np.swapaxes(states[REF].astype(np.float64), 0, 1)
    frames = []
    for lang, x in states.items():
        if lang == REF:
            continue
        if x.shape != states[REF].shape:
            raise ValueError(f"{lang}: states of shape {x.shape}, English {states[REF].shape}")
        values = _layer_measures(np.swapaxes(x.astype(np.float64), 0, 1), en)
        layers = en.shape[0]
        id_array = np.empty(n, dtype=object)
        id_array[:] = ids
        cols = {name: v.reshape(-1) for name, v in values.items()}
        for name in ("nearest_en", "nearest_en_csls"):
            cols[name] = id_array[cols[name]]
        frames.append(pd.DataFrame({"lang": lang, "layer": np.repeat(np.arange(layers), n), "id": np.tile(id_array, layers),
                                    **cols}))
    if not frames:
        raise ValueError("similarity: no language besides English")
    out = pd.concat(frames, ignore_index=True)[list(PER_QUESTION)]
    for column in ("id", "nearest_en", "nearest_en_csls"):
        out[column] = out[column].tolist()  # plain Python ids, as given
    return out


def _stats_by_lang(per_question: pd.DataFrame, measure: str, layer: int) -> dict[str, np.ndarray]:
    """{lang: mean_stats of ``measure`` at ``layer``, rows in id order}."""
    at = per_question[per_question["layer"] == layer]
    return {lang: inference.mean_stats(g.sort_values("id", key=lambda s: s.map(_key))[measure].to_numpy())
            for lang, g in at.groupby("lang", sort=False)}


def hubness(per_question: pd.DataFrame, column: str = "nearest_en") -> pd.DataFrame:
    """Per language and layer: the largest number of questions whose nearest English question (``column``:
    ``nearest_en`` raw, ``nearest_en_csls`` after CSLS) is the same one; 1 when every question has its own."""
    counts = per_question.groupby(["lang", "layer", column], sort=False).size()
    return counts.groupby(level=["lang", "layer"], sort=False).max().rename("hub").reset_index()


def similarity_table(per_question: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per language (and ``Avg``, languages.AVG, the mean over languages, resampling the same ids in each) and layer:
    every measure with its 95% bootstrap CI (``<measure>_lo``, ``<measure>_hi``), n, the chance level of each
    retrieval measure (``<measure>_chance``; ``chance`` = 1 / n, top-1's) and hubness: ``hub`` and ``hub_csls``, the
    largest number of questions sharing one nearest English question by raw cosine and by CSLS (Avg: the mean
    over languages)."""
    hubs = {name: hubness(per_question, column).set_index(["lang", "layer"])["hub"]
            for name, column in (("hub", "nearest_en"), ("hub_csls", "nearest_en_csls"))}
    rows = []
    for layer in sorted(per_question["layer"].unique()):
        by_measure = {m: _stats_by_lang(per_question, m, layer) for m in MEASURES}
        langs = list(next(iter(by_measure.values())))
        for lang in [*langs, AVG] if len(langs) > 1 else langs:
            n = len(next(iter(by_measure.values()))[langs[0]])
            row = {"lang": lang, "layer": int(layer), "n": n, "chance": top1_chance(n)}
            for m in MEASURES:
                groups = by_measure[m] if lang == AVG else {lang: by_measure[m][lang]}
                ci = inference.score_ci(groups, inference.mean_score, n_boot, seed=seed)
                row.update({m: ci["value"], f"{m}_lo": ci["lo"], f"{m}_hi": ci["hi"]})
                if MEASURE_INFO[m]["chance"] is not None:
                    row[f"{m}_chance"] = MEASURE_INFO[m]["chance"](n)
            for name, hub in hubs.items():
                row[name] = float(np.mean([hub[(x, layer)] for x in langs])) if lang == AVG else int(hub[(lang, layer)])
            rows.append(row)
    return pd.DataFrame(rows)


def representation_settings(pooling: str, model_ref: str, langs: list[str], ids: list,
                            questions: dict | None = None) -> dict:
    """What a representation analysis depends on; a change recomputes it (``measures``: MEASURE_VERSION). The
    model as :func:`qalign_lib.evaluation.evaluator.model_identity` records it (relative to the runs root, with its
    fingerprint) and, given ``questions`` ({lang: {id: question}}, English included), a hash of the questions
    compared (an edited question recomputes)."""
    from qalign_lib.evaluation.evaluator import model_identity

    if pooling not in POOLINGS:
        raise ConfigError(f"representation_pooling={pooling!r}: choose one of {', '.join(POOLINGS)}")
    out = {**model_identity(model_ref), "pooling": pooling,
           "template": prompts.ALPACA_TEMPLATE if pooling == "template" else None,
           "prefix": "the tokenizer's BOS (else EOS) token" if pooling == "bos_prefix" else None,
           "reference": REF, "langs": list(langs), "ids": list(ids), "centring": "per language and layer, over the ids",
           "measures": MEASURE_VERSION, "csls_k": CSLS_K}
    if questions is not None:
        out["questions"] = files.content_hash({lang: [[i, q[i]] for i in ids] for lang, q in questions.items()})
    return out


def represent(model, tokenizer, out: layout.RepresentationDir, benchmark: str, langs, limit: int | None,
              batch_size: int = 32, pooling: str = "template", model_ref: str = "unknown", root=None,
              n_boot: int = 1000) -> pd.DataFrame:
    """Pool the states of the parallel questions, compare every language with English and write similarity.csv
    and per_question.csv (the settings last: they mark the analysis complete). Done already with the same
    settings: read and return it."""
    ids, questions = parallel_questions(benchmark, langs, limit, root)
    if len(ids) < 2:
        raise ConfigError(f"representations need at least 2 parallel questions (retrieval picks among them); got {len(ids)}")
    want = representation_settings(pooling, model_ref, [lang for lang in questions if lang != REF], ids, questions)
    if representation_complete(out, want):
        return pd.read_csv(out.similarity)
    logger.info("%s: hidden states of %d questions x %d languages (%s pooling)", benchmark, len(ids), len(questions), pooling)
    states = {lang: pooled_states(model, tokenizer, [q[i] for i in ids], batch_size, pooling) for lang, q in questions.items()}
    per_question = per_question_similarity(states, ids)
    table = similarity_table(per_question, n_boot)
    for path, frame in ((out.per_question, per_question), (out.similarity, table)):
        with atomic_write(path) as f:
            frame.to_csv(f, index=False)
    write_json(out.settings, {**want, "outputs": _output_hashes(out)})  # last: the analysis is complete
    return table


def _output_hashes(out: layout.RepresentationDir) -> dict[str, str]:
    return {path.name: files.file_hash(path) for path in (out.per_question, out.similarity)}


def representation_problem(out: layout.RepresentationDir, want: dict | None = None) -> str | None:
    """Why the stored analysis in ``out`` cannot be trusted (one line naming the file), or None: settings.json
    (written last) must hold ``want`` (when given) and the SHA-256 of per_question.csv and similarity.csv as they
    were written (a truncated, emptied or edited table does not match)."""
    if not out.settings.is_file():
        return f"{out.settings}: missing (not computed, or interrupted)"
    try:
        saved = files.read_json(out.settings)
    except (DataError, ResultsError) as e:
        return str(e).split("; ")[0]
    if not isinstance(saved, dict):
        return f"{out.settings}: not a JSON object"
    recorded = saved.get("outputs")
    if want is not None and {k: v for k, v in saved.items() if k != "outputs"} != want:
        changed = sorted(k for k in set(want) | set(saved) - {"outputs"} if saved.get(k) != want.get(k))
        return f"{out.settings}: settings changed since ({', '.join(changed)})"
    if not isinstance(recorded, dict):
        return f"{out.settings}: records no hashes of its tables (written by an older version)"
    for path in (out.per_question, out.similarity):
        if not path.is_file():
            return f"{path}: missing"
        if files.file_hash(path) != recorded.get(path.name):
            return f"{path}: not the table settings.json records (truncated or edited)"
    return None


def representation_complete(out: layout.RepresentationDir, want: dict) -> bool:
    """True when ``out`` holds the analysis of ``want``, whole (:func:`representation_problem`)."""
    return representation_problem(out, want) is None


def read_per_question(out: layout.RepresentationDir) -> pd.DataFrame:
    """per_question.csv, verified against the hash settings.json records and checked whole: every language and id
    of the settings at every layer, once; a fault is a one-line ResultsError naming the file."""
    problem = representation_problem(out)
    if problem:
        raise ResultsError(f"{problem}; analyse the system again (qalign study, or the analyze notebook) to recompute it")
    try:
        frame = pd.read_csv(out.per_question)
    except (OSError, ValueError) as e:
        raise ResultsError(f"{out.per_question}: cannot be read ({e}); delete it to recompute it") from None
    missing = [c for c in PER_QUESTION if c not in frame.columns]
    if missing:
        raise ResultsError(f"{out.per_question}: missing columns {missing}; delete it to recompute it")
    _check_whole(frame, files.read_json(out.settings), out.per_question)
    return frame


def _check_whole(frame: pd.DataFrame, saved: dict, path) -> None:
    """Every (language, layer) of the table holds each id of the settings once, the layers are 0..L-1 for every
    language, and the measures are numbers."""
    fix = "delete it to recompute it"
    langs, ids = saved.get("langs"), saved.get("ids")
    if sorted(map(str, frame["lang"].unique())) != sorted(map(str, langs or [])):
        raise ResultsError(f"{path}: languages {sorted(map(str, frame['lang'].unique()))}, settings.json says {langs}; {fix}")
    bad = [m for m in MEASURES if not pd.api.types.is_numeric_dtype(frame[m])]
    if bad:
        raise ResultsError(f"{path}: column(s) {bad} are not numbers; {fix}")
    layers = None
    want_ids = sorted(map(str, ids or []))
    for lang, part in frame.groupby("lang", sort=False):
        have = sorted(part["layer"].unique().tolist())
        if layers is None:
            layers = have
        if have != layers or have != list(range(len(have))):
            raise ResultsError(f"{path}: {lang} has layers {have[:3]}..{have[-3:]}, not 0..{len(layers) - 1} like the others; {fix}")
        for layer, rows in part.groupby("layer"):
            if sorted(map(str, rows["id"])) != want_ids:
                raise ResultsError(f"{path}: {lang} layer {layer}: not every id of settings.json exactly once; {fix}")
