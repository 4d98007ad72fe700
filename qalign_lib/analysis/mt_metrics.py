"""Translation metrics: sacrebleu's chrF and BLEU with their defaults, computed from per-sentence sufficient
statistics (:func:`sentence_stats`) so that any subset of sentences (a bootstrap replicate) is scored by summing
rows, equal to sacrebleu's corpus score on that subset (tests check it); :func:`signature` is sacrebleu's.
"""
from __future__ import annotations

import numpy as np

from qalign_lib.core.errors import ConfigError

METRICS = ("chrf", "bleu")  # sacrebleu's CHRF() and BLEU() with their defaults


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
