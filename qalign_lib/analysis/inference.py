"""Uncertainty and significance for per-question results (numpy; scipy.stats and statsmodels for the tests).

Every per-question input is a dict ``question id -> value``; two systems or two languages are
always paired by id, never by position. Ids are put in a fixed sorted order before any
resampling, so results depend only on the data and the seed, not on dict insertion order.
Accuracies and differences are percentages (0-100).

The benchmarks are parallel: id k is the same problem in every language of mGSM / mSVAMP.

Tested implementations where they fit: the paired permutation (sign-flip) test is
``scipy.stats.permutation_test(permutation_type="samples")`` (:func:`permutation_test`), Holm is statsmodels'
``multipletests(method="holm")`` (:func:`holm`), power is statsmodels' ``TTestPower`` (:func:`mde`,
:func:`power_plan`). The bootstrap CIs stay the multinomial-count implementation below rather than
``scipy.stats.bootstrap``: one (n_boot, n) count matrix is shared by both systems of a pair, every language of the
average and every seed of a system (which scipy's bootstrap cannot resample within systems jointly with question
ids), and for 0/1 data drawing counts of the distinct rows is exact and much faster; it is the same percentile
bootstrap.
"""
from __future__ import annotations

import gc
import math

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

# ----------------------------------------------------------------------------- helpers

def _sorted(ids) -> list:
    return sorted(ids, key=lambda i: (type(i).__name__, i))


def _few(ids, k: int = 5) -> str:
    ids = _sorted(ids)
    return repr(ids[:k])[:-1] + (", ...]" if len(ids) > k else "]")


def _common_ids(named: dict[str, dict], require_same_ids: bool = True) -> list:
    """Sorted ids shared by all the dicts in ``named`` (label -> dict); ValueError if none, or if
    ``require_same_ids`` and the id sets differ."""
    sets = {k: set(v) for k, v in named.items()}
    for k, s in sets.items():
        if not s:
            raise ValueError(f"{k} has no question ids")
    shared, union = set.intersection(*sets.values()), set.union(*sets.values())
    if not shared:
        raise ValueError("no question id is shared by " + " and ".join(f"{k} (e.g. {_few(s, 3)})" for k, s in sets.items()))
    if require_same_ids and shared != union:
        lacks = "; ".join(f"{k} lacks {len(union - s)} ids, e.g. {_few(union - s)}" for k, s in sets.items() if s != union)
        raise ValueError(f"question ids differ: {lacks} (pass require_same_ids=False to use the {len(shared)} shared ids)")
    return _sorted(shared)


def _as01(d: dict, ids: list, what: str) -> np.ndarray:
    """Values of ``d`` at ``ids`` as a 0/1 float array; ValueError on anything not bool-like."""
    x = np.array([d[i] for i in ids], dtype=object)
    ok = np.array([isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, float, np.integer, np.floating)) and v in (0, 1)) for v in x], dtype=bool)
    if not ok.all():
        bad = [ids[j] for j in np.flatnonzero(~ok)[:5]]
        raise ValueError(f"{what}: correctness must be True/False (or 0/1); bad values at ids {bad}")
    return x.astype(float)


def _check(n_boot: int, alpha: float) -> None:
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _boot_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means over ``n_boot`` resamples (with replacement) of the n rows of ``x`` ((n,) or (n, k)).
    Drawing n rows with replacement is drawing multinomial counts of the distinct rows, so all means
    come from one (n_boot, n_distinct) count matrix: exact, and fast for 0/1 data."""
    rows, freq = np.unique(x, axis=0, return_counts=True)
    counts = rng.multinomial(len(x), freq / len(x), size=n_boot)
    return counts @ rows / len(x)


def _interval(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.percentile(stats, [50 * alpha, 100 - 50 * alpha])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- confidence intervals

def accuracy_ci(correct: dict, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Accuracy (%) with a percentile-bootstrap (1 - alpha) CI. Returns dict(acc, lo, hi, n)."""
    _check(n_boot, alpha)
    ids = _common_ids({"correct": correct})
    x = _as01(correct, ids, "correct") * 100
    lo, hi = _interval(_boot_means(x, n_boot, np.random.default_rng(seed)), alpha)
    return dict(acc=float(x.mean()), lo=lo, hi=hi, n=len(ids))


def average_ci(correct_by_lang: dict, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0,
               paired: bool = False, langs=None, require_same_ids: bool = True) -> dict:
    """Plain mean over languages of per-language accuracy (%), with a percentile-bootstrap CI.

    paired=False (stratified): questions are resampled independently within each language, as if
    every language had its own independent question sample; the id sets may differ.
    paired=True: the SAME resampled ids are used in every language (ids are aligned first; see
    ``require_same_ids``). mGSM / mSVAMP are parallel, so a hard problem tends to be hard in every
    language and per-language accuracies are positively correlated; paired resampling keeps that
    correlation and is the right choice for these benchmarks. The stratified CI ignores it and is
    then usually too narrow for the average.
    Returns dict(acc, lo, hi, langs, per_lang) with per_lang = {lang: accuracy}.
    """
    _check(n_boot, alpha)
    langs = list(correct_by_lang) if langs is None else list(langs)
    missing = [lang for lang in langs if lang not in correct_by_lang]
    if not langs or missing:
        raise ValueError(f"average_ci: no results for languages {missing or 'at all'}; have {list(correct_by_lang)}")
    rng = np.random.default_rng(seed)
    if paired:
        ids = _common_ids({lang: correct_by_lang[lang] for lang in langs}, require_same_ids)
        x = np.stack([_as01(correct_by_lang[lang], ids, lang) for lang in langs], axis=1) * 100  # (n, L)
        per_lang, boot = x.mean(0), _boot_means(x, n_boot, rng).mean(1)
    else:
        xs = [_as01(correct_by_lang[lang], _common_ids({lang: correct_by_lang[lang]}), lang) * 100 for lang in langs]
        per_lang = np.array([x.mean() for x in xs])
        boot = np.mean([_boot_means(x, n_boot, rng) for x in xs], axis=0)
    lo, hi = _interval(boot, alpha)
    return dict(acc=float(per_lang.mean()), lo=lo, hi=hi, langs=langs,
                per_lang={lang: float(a) for lang, a in zip(langs, per_lang)})


# ----------------------------------------------------------------------------- paired tests

def paired_bootstrap(a: dict, b: dict, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0,
                     method: str = "shift", require_same_ids: bool = True) -> dict:
    """Difference acc(b) - acc(a) (%) on shared ids, percentile-bootstrap CI, two-sided p-value.

    The CI resamples question ids (both systems together). The p-value:
    - "shift" (default; Efron & Tibshirani 1993 sec. 16.4, Koehn 2004): the bootstrap differences,
      shifted to mean-zero (d* - d), stand for the null; p = 2 * share of them at least as far from 0
      as the observed d on d's side, clipped to 1. With a symmetric bootstrap distribution this is
      2 * the share of unshifted d* on the other side of 0 (ties at 0 included).
    - "sign_flip" (paired randomisation test): under the null each question's b_i - a_i is equally
      likely to have either sign; p = share of sign-flipped sums with |sum| >= |observed sum|
      (a Monte Carlo version of the exact McNemar test).
    Identical systems give diff 0 and p = 1. The p-value resolution is 1 / n_boot (p = 0 means < that).
    Returns dict(diff, lo, hi, p_value, n).
    """
    _check(n_boot, alpha)
    ids = _common_ids({"a": a, "b": b}, require_same_ids)
    d = (_as01(b, ids, "b") - _as01(a, ids, "a")) * 100  # per-question difference in {-100, 0, 100}
    rng = np.random.default_rng(seed)
    boot = _boot_means(d, n_boot, rng)
    obs = d.mean()
    if method == "shift":
        p = min(1.0, 2 * float(np.mean(np.sign(obs) * (boot - obs) >= abs(obs) - 1e-9)))
    elif method == "sign_flip":
        m, s = int(np.count_nonzero(d)), int(np.sign(d).sum())
        flipped = 2 * rng.binomial(m, 0.5, size=n_boot) - m  # sum of m random +-1
        p = float(np.mean(np.abs(flipped) >= abs(s)))
    else:
        raise ValueError(f"method must be 'shift' or 'sign_flip', got {method!r}")
    lo, hi = _interval(boot, alpha)
    return dict(diff=float(obs), lo=lo, hi=hi, p_value=p, n=len(ids))


def mcnemar(a: dict, b: dict, require_same_ids: bool = True) -> dict:
    """McNemar test of two systems on shared ids. n01 = a wrong & b right, n10 = a right & b wrong.

    If n01 + n10 < 25: exact two-sided binomial test, p = min(1, 2 * P(X <= min(n01, n10))) with
    X ~ Bin(n01 + n10, 1/2); statistic = min(n01, n10). Otherwise chi-square with continuity
    correction, statistic = (|n01 - n10| - 1)^2 / (n01 + n10), p = erfc(sqrt(statistic / 2)).
    Returns dict(n01, n10, statistic, p_value, exact).
    """
    ids = _common_ids({"a": a, "b": b}, require_same_ids)
    xa, xb = _as01(a, ids, "a"), _as01(b, ids, "b")
    n01, n10 = int(np.sum((xa == 0) & (xb == 1))), int(np.sum((xa == 1) & (xb == 0)))
    n = n01 + n10
    if n < 25:
        k = min(n01, n10)
        p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
        return dict(n01=n01, n10=n10, statistic=float(k), p_value=p, exact=True)
    stat = (abs(n01 - n10) - 1) ** 2 / n
    return dict(n01=n01, n10=n10, statistic=stat, p_value=math.erfc(math.sqrt(stat / 2)), exact=False)


def holm(p_values: dict) -> dict:
    """Holm-Bonferroni adjusted p-values, same keys and order (statsmodels ``multipletests(method="holm")``): the
    i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) * p_(j)). Empty in, empty out."""
    keys = list(p_values)
    p = np.array([p_values[k] for k in keys], dtype=float)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"holm: p-values must be in [0, 1], got {p_values}")
    if not keys:
        return {}
    gc.freeze()  # statsmodels' Holm ends with gc.collect(): with torch loaded that is ~0.4 s a call; frozen, ~0
    try:
        adj = multipletests(p, alpha=0.05, method="holm")[1]
    finally:
        gc.unfreeze()
    return {k: float(v) for k, v in zip(keys, adj)}


# ----------------------------------------------------------------------------- cross-lingual consistency (Figure 3)

def jaccard_consistency(correct_en: dict, correct_x: dict, require_same_ids: bool = True) -> float:
    """|C_en & C_x| / |C_en | C_x| * 100, C = ids answered correctly (over shared ids).
    nan when neither language answers anything correctly (0/0)."""
    ids = _common_ids({"correct_en": correct_en, "correct_x": correct_x}, require_same_ids)
    e, x = _as01(correct_en, ids, "correct_en") == 1, _as01(correct_x, ids, "correct_x") == 1
    union = int(np.sum(e | x))
    return float("nan") if union == 0 else 100 * int(np.sum(e & x)) / union


def agreement_rate(pred_en: dict, pred_x: dict, tol: float = 1e-3, require_same_ids: bool = True) -> float:
    """% of shared ids whose predicted numbers agree, |en - x| <= tol (absolute), whether right or wrong.
    None (or nan) means no number was extracted; it never agrees with anything, not even another None,
    but the id still counts in the denominator."""
    ids = _common_ids({"pred_en": pred_en, "pred_x": pred_x}, require_same_ids)
    num = lambda v: float("nan") if v is None else float(v)
    e, x = np.array([num(pred_en[i]) for i in ids]), np.array([num(pred_x[i]) for i in ids])
    with np.errstate(invalid="ignore"):
        agree = np.abs(e - x) <= tol  # False wherever either side is nan
    return 100 * float(agree.mean())


def consistency_table(per_lang_correct: dict, per_lang_pred: dict, langs, ref: str = "en",
                      require_same_ids: bool = True) -> pd.DataFrame:
    """Jaccard consistency and answer agreement of each language in ``langs`` (ref excluded) with ``ref``.
    Returns a DataFrame with columns lang, jaccard, agreement, one row per non-reference language."""
    need = [ref] + [lang for lang in langs if lang != ref]
    for what, d in (("per_lang_correct", per_lang_correct), ("per_lang_pred", per_lang_pred)):
        missing = [lang for lang in need if lang not in d]
        if missing:
            raise ValueError(f"consistency_table: {what} has no entry for {missing}; has {list(d)}")
    rows = []
    for lang in need[1:]:
        try:
            rows.append(dict(lang=lang,
                             jaccard=jaccard_consistency(per_lang_correct[ref], per_lang_correct[lang], require_same_ids),
                             agreement=agreement_rate(per_lang_pred[ref], per_lang_pred[lang], require_same_ids=require_same_ids)))
        except ValueError as e:
            raise ValueError(f"consistency_table, {ref} vs {lang}: {e}") from None
    return pd.DataFrame(rows, columns=["lang", "jaccard", "agreement"])


# ----------------------------------------------------------------------------- scores of summed statistics (chrF, BLEU, means)
# A corpus-level score (chrF, BLEU: sacrebleu computes them from the sum of per-sentence statistics) or a mean (the
# statistics [value, 1]) is a function of the sum of per-item statistics. Resampling items with replacement is then
# a matrix product: multinomial counts (n_boot, n) @ stats (n, k). ``score`` maps summed statistics (m, k) to (m,)
# scores. Groups (the languages of a parallel benchmark) share their items row by row, so an average over groups
# resamples the same items in every group, as average_ci(paired=True) does.

def resample_counts(n: int, n_boot: int = 10_000, seed: int = 0) -> np.ndarray:
    """(n_boot, n) counts of each of n items in ``n_boot`` resamples with replacement (each row sums to n)."""
    _check(n_boot, 0.05)
    if n < 1:
        raise ValueError("resample_counts: no items to resample")
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=int(n_boot))


def _groups(stats) -> dict:
    """``stats`` as {group: (n, k) float array}, every group with the same n (a bare array is one group)."""
    groups = {"": stats} if isinstance(stats, np.ndarray) else dict(stats)
    if not groups:
        raise ValueError("no statistics given")
    out = {g: np.asarray(s, dtype=float).reshape(len(s), -1) for g, s in groups.items()}
    sizes = {g: len(s) for g, s in out.items()}
    if len(set(sizes.values())) != 1 or not next(iter(sizes.values())):
        raise ValueError(f"every group needs the same, non-zero number of items (aligned rows); got {sizes}")
    return out


def _group_scores(groups: dict, score, counts: np.ndarray | None) -> tuple[float, np.ndarray | None]:
    """(score of the observed items averaged over groups, the same for each resample or None)."""
    value = float(np.mean([score(s.sum(0, keepdims=True))[0] for s in groups.values()]))
    boot = None if counts is None else np.mean([score(counts @ s) for s in groups.values()], axis=0)
    return value, boot


def score_ci(stats, score, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0) -> dict:
    """A score of summed per-item statistics (averaged over groups when ``stats`` is a dict of groups sharing
    their items), with a percentile-bootstrap (1 - alpha) CI over items. Returns dict(value, lo, hi, n)."""
    _check(n_boot, alpha)
    groups = _groups(stats)
    n = len(next(iter(groups.values())))
    value, boot = _group_scores(groups, score, resample_counts(n, n_boot, seed))
    lo, hi = _interval(boot, alpha)
    return dict(value=value, lo=lo, hi=hi, n=n)


def paired_score_diff(a, b, score, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0) -> dict:
    """score(b) - score(a) on the same items (rows of a and b correspond; groups as in :func:`score_ci`, the same
    groups in both), with a percentile-bootstrap CI and a two-sided p-value from the shifted bootstrap
    distribution, as :func:`paired_bootstrap`. Returns dict(diff, lo, hi, p_value, n, a, b)."""
    _check(n_boot, alpha)
    ga, gb = _groups(a), _groups(b)
    if list(ga) != list(gb) or len(next(iter(ga.values()))) != len(next(iter(gb.values()))):
        raise ValueError(f"paired_score_diff: a and b must hold the same groups and items; got {list(ga)} and {list(gb)}")
    n = len(next(iter(ga.values())))
    counts = resample_counts(n, n_boot, seed)
    va, ba = _group_scores(ga, score, counts)
    vb, bb = _group_scores(gb, score, counts)
    boot, obs = bb - ba, vb - va
    p = min(1.0, 2 * float(np.mean(np.sign(obs) * (boot - obs) >= abs(obs) - 1e-9)))
    lo, hi = _interval(boot, alpha)
    return dict(diff=obs, lo=lo, hi=hi, p_value=p, n=n, a=va, b=vb)


def mean_stats(values) -> np.ndarray:
    """Per-item statistics [value, 1] whose :func:`mean_score` is the plain mean of ``values``."""
    v = np.asarray(values, dtype=float)
    return np.stack([v, np.ones_like(v)], axis=1)


def mean_score(summed: np.ndarray) -> np.ndarray:
    """The mean from summed :func:`mean_stats`."""
    return summed[:, 0] / summed[:, 1]


# ----------------------------------------------------------------------------- permutation test, effects with seeds, power

def _aligned(a, b, what: str) -> tuple[dict, dict]:
    ga, gb = _groups(a), _groups(b)
    if list(ga) != list(gb) or len(next(iter(ga.values()))) != len(next(iter(gb.values()))):
        raise ValueError(f"{what}: a and b must hold the same groups and items; got {list(ga)} and {list(gb)}")
    return ga, gb


def permutation_test(a, b, score, n_resamples: int = 10_000, seed: int = 0) -> dict:
    """Paired permutation (sign-flip) test of score(b) - score(a) over items: ``scipy.stats.permutation_test`` with
    ``permutation_type="samples"``, two-sided. ``a`` and ``b`` are per-item statistics as in :func:`score_ci` (a
    dict of groups sharing their items: the languages of a parallel benchmark). Under the null a and b are
    exchangeable within an item; a permutation swaps a and b for a set of items, in every group at once (the item,
    a question, is the unit). The statistic is the score of the summed statistics, averaged over groups, so corpus
    scores (chrF, BLEU) and means (:func:`mean_stats`) are tested alike. Exact (all 2^n swaps) when
    2^n <= ``n_resamples``, else ``n_resamples`` random swaps from ``seed`` (scipy's p then counts the observed
    statistic too, so it is never 0). Identical a and b give p = 1. Returns dict(diff, p_value, n, exact)."""
    ga, gb = _aligned(a, b, "permutation_test")
    n = len(next(iter(ga.values())))
    names = list(ga)
    A = {g: ga[g] for g in names}
    D = {g: gb[g] - ga[g] for g in names}
    total_a = {g: A[g].sum(0) for g in names}
    total_b = {g: gb[g].sum(0) for g in names}

    def statistic(x, y, axis=-1):
        swapped = (np.atleast_2d(np.moveaxis(np.asarray(x), axis, -1)) >= n).astype(float)  # (m, n): item i swapped
        out = 0.0
        for g in names:
            moved = swapped @ D[g]  # what the swaps move from the b side to the a side
            out = out + score(total_b[g] - moved) - score(total_a[g] + moved)
        out = out / len(names)
        return out if np.ndim(x) > 1 else out[0]

    idx = np.arange(n)
    res = _scipy_stats.permutation_test((idx, idx + n), statistic, permutation_type="samples", vectorized=True,
                                        n_resamples=int(n_resamples), alternative="two-sided",
                                        random_state=np.random.default_rng(seed))
    exact = 2.0 ** n <= n_resamples
    return dict(diff=float(res.statistic), p_value=float(min(1.0, res.pvalue)), n=n, exact=bool(exact))


def pseudo_values(a, b, score) -> np.ndarray:
    """Jackknife pseudo-values of score(b) - score(a) (averaged over groups), one per item: n * D - (n - 1) * D_(-i).
    For a mean they are exactly the per-item differences b_i - a_i; for a corpus score they are its per-item
    linearisation. Their SD is the "SD of the per-question differences" that :func:`mde` takes."""
    ga, gb = _aligned(a, b, "pseudo_values")
    n = len(next(iter(ga.values())))
    if n < 2:
        raise ValueError("pseudo_values: need at least 2 items")
    full, loo = 0.0, np.zeros(n)
    for g in ga:
        sa, sb = ga[g], gb[g]
        full += score(sb.sum(0, keepdims=True))[0] - score(sa.sum(0, keepdims=True))[0]
        loo += score(sb.sum(0) - sb) - score(sa.sum(0) - sa)
    full, loo = full / len(ga), loo / len(ga)
    return n * full - (n - 1) * loo


def mde(sd: float, n: int, alpha: float = 0.05, family_size: int = 1, power: float = 0.8) -> float:
    """Minimum detectable effect (in the units of ``sd``): the smallest true mean difference a two-sided paired t-test
    on ``n`` items detects with probability ``power`` at level alpha / family_size (the first step of Holm over a
    family of that size), given the SD of the per-item differences; statsmodels ``TTestPower().solve_power``.
    nan when n < 2 or sd is not finite; 0 when sd is 0."""
    if not 0 < alpha < 1 or not 0 < power < 1 or int(family_size) < 1:
        raise ValueError(f"mde: need 0 < alpha < 1, 0 < power < 1, family_size >= 1; got {alpha}, {power}, {family_size}")
    if n < 2 or not np.isfinite(sd):
        return float("nan")
    if sd == 0:
        return 0.0
    d = TTestPower().solve_power(effect_size=None, nobs=int(n), alpha=alpha / int(family_size), power=power,
                                 alternative="two-sided")
    return float(np.asarray(d).item() * sd)


def power_plan(sd: float, n_values, alpha: float = 0.05, family_size: int = 1, power: float = 0.8) -> pd.DataFrame:
    """The design table: for each number of questions n in ``n_values``, the :func:`mde` (same units as ``sd``, the SD
    of the per-question differences) at ``power``, two-sided, level alpha / family_size. Columns n, mde."""
    ns = [int(n) for n in n_values]
    return pd.DataFrame({"n": ns, "mde": [mde(sd, n, alpha, family_size, power) for n in ns]}, columns=["n", "mde"])


def _replicates(x) -> list[dict]:
    """One system's statistics as a list of replicates (seeds), each a dict of groups."""
    reps = list(x) if isinstance(x, (list, tuple)) else [x]
    if not reps:
        raise ValueError("no replicate given")
    return [_groups(r) for r in reps]


def _seed_average(reps: list[dict]) -> dict:
    return {g: np.mean([r[g] for r in reps], axis=0) for g in reps[0]}


def paired_effect(a, b, score, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0,
                  n_resamples: int = 10_000) -> dict:
    """score(b) - score(a) on the same items, where each system is one replicate (statistics as in :func:`score_ci`) or
    a list of replicates (training seeds; every replicate with the same groups and items).

    - Point estimate: the mean over a system's replicates of its score (groups averaged), b minus a.
    - CI: percentile bootstrap over items and seeds: each resample draws the items (the same counts in every group,
      both systems and every seed) and, for a system with several replicates, that many replicates with replacement.
    - p: :func:`permutation_test` on the seed-averaged per-item statistics. With several seeds its conclusion is
      conditional on these seeds (the items are the random unit; the seeds are averaged, not resampled).
    - sd: SD of the :func:`pseudo_values` (per-item differences) of the seed-averaged statistics, for :func:`mde`.
    Returns dict(diff, lo, hi, p_value, n, a, b, sd, seeds_a, seeds_b, exact)."""
    _check(n_boot, alpha)
    ra, rb = _replicates(a), _replicates(b)
    for r in ra[1:] + rb:
        _aligned(ra[0], r, "paired_effect")
    n = len(next(iter(ra[0].values())))
    counts = resample_counts(n, n_boot, seed)
    rng = np.random.default_rng([seed, 1])

    def side(reps):
        values, boots = zip(*(_group_scores(r, score, counts) for r in reps))
        boots = np.stack(boots)  # (seeds, n_boot)
        if len(reps) > 1:
            pick = rng.integers(len(reps), size=(n_boot, len(reps)))
            boot = boots[pick, np.arange(n_boot)[:, None]].mean(1)
        else:
            boot = boots[0]
        return float(np.mean(values)), boot

    va, ba = side(ra)
    vb, bb = side(rb)
    ma, mb = _seed_average(ra), _seed_average(rb)
    perm = permutation_test(ma, mb, score, n_resamples, seed)
    sd = float(np.std(pseudo_values(ma, mb, score), ddof=1)) if n > 1 else float("nan")
    lo, hi = _interval(bb - ba, alpha)
    return dict(diff=vb - va, lo=lo, hi=hi, p_value=perm["p_value"], n=n, a=va, b=vb, sd=sd,
                seeds_a=len(ra), seeds_b=len(rb), exact=perm["exact"])
