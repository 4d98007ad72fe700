"""Tests for qalign_lib.analysis.inference: hand-computed cases (arithmetic in comments)."""
import math

import numpy as np
import pandas as pd
import pytest

from qalign_lib.analysis import inference
from qalign_lib.analysis.inference import (
    accuracy_ci,
    agreement_rate,
    average_ci,
    consistency_table,
    holm,
    jaccard_consistency,
    mcnemar,
    paired_bootstrap,
)


def bools(seq, start=0):
    """{id: bool} with ids start, start+1, ..."""
    return {start + i: bool(v) for i, v in enumerate(seq)}


def pair(n01, n10, n11=0, n00=0):
    """Two systems with the given McNemar cells (n01 = a wrong & b right, n10 = a right & b wrong)."""
    a = [0] * n01 + [1] * n10 + [1] * n11 + [0] * n00
    b = [1] * n01 + [0] * n10 + [1] * n11 + [0] * n00
    return bools(a), bools(b)


def bernoulli(n, p, seed):
    return bools(np.random.default_rng(seed).random(n) < p)


# ----------------------------------------------------------------------------- McNemar

def test_mcnemar_exact_1_vs_6():
    a, b = pair(n01=1, n10=6, n11=3, n00=2)  # concordant pairs must not matter
    r = mcnemar(a, b)
    # two-sided binomial, n = 7: 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128 = 0.125
    assert (r["n01"], r["n10"], r["exact"]) == (1, 6, True)
    assert r["statistic"] == 1  # min(n01, n10)
    assert r["p_value"] == pytest.approx(0.125, abs=1e-12)
    assert mcnemar(b, a)["p_value"] == pytest.approx(0.125, abs=1e-12)  # symmetric
    assert (mcnemar(b, a)["n01"], mcnemar(b, a)["n10"]) == (6, 1)


def test_mcnemar_exact_edges():
    # n01 + n10 = 24 < 25 -> exact: 2 * sum_{k<=5} C(24,k) / 2^24
    #   = 2 * (1 + 24 + 276 + 2024 + 10626 + 42504) / 16777216 = 110910 / 16777216 = 0.0066107511...
    r = mcnemar(*pair(5, 19))
    assert r["exact"] and r["p_value"] == pytest.approx(0.0066107511520, rel=1e-9)
    # 3 vs 3: 2 * (1 + 6 + 15 + 20) / 64 = 84/64 > 1 -> clipped to 1
    assert mcnemar(*pair(3, 3))["p_value"] == 1.0
    # no discordant pairs: 2 * C(0,0) / 1 -> clipped to 1
    r = mcnemar(*pair(0, 0, n11=4, n00=1))
    assert (r["n01"], r["n10"], r["p_value"], r["exact"]) == (0, 0, 1.0, True)


def test_mcnemar_chi_square_branch():
    # n01=30, n10=10 (n = 40 >= 25): stat = (|30-10| - 1)^2 / 40 = 361/40 = 9.025
    # p = P(chi2_1 > 9.025) = 2 * (1 - Phi(sqrt(9.025) = 3.00416)) = 2 * 0.0013316 = 0.0026631
    r = mcnemar(*pair(30, 10, n11=50, n00=10))
    assert (r["n01"], r["n10"], r["exact"]) == (30, 10, False)
    assert r["statistic"] == pytest.approx(9.025)
    assert r["p_value"] == pytest.approx(0.0026631, abs=1e-6)
    # boundary n01 + n10 = 25 -> chi-square: (|15-10| - 1)^2 / 25 = 0.64, p = 2 * (1 - Phi(0.8)) = 2 * 0.21186 = 0.42371
    r = mcnemar(*pair(15, 10))
    assert not r["exact"] and r["statistic"] == pytest.approx(0.64)
    assert r["p_value"] == pytest.approx(0.42371, abs=1e-5)


# ----------------------------------------------------------------------------- accuracy CI

def test_accuracy_ci_point_and_keys():
    r = accuracy_ci(bools([1, 1, 1, 0, 1, 0, 1, 1, 0, 1]))  # 7 / 10
    assert set(r) == {"acc", "lo", "hi", "n"}
    assert r["acc"] == pytest.approx(70.0) and r["n"] == 10
    assert 0 <= r["lo"] < 70 < r["hi"] <= 100


def test_accuracy_ci_width_matches_normal_approx_and_shrinks():
    # 200 right of 400: normal-approx 95% half-width = 1.96 * sqrt(0.5 * 0.5 / 400) * 100 = 1.96 * 2.5 = 4.9
    r = accuracy_ci(bools([1, 0] * 200))
    assert r["acc"] == 50.0
    assert r["lo"] == pytest.approx(50 - 4.9, abs=0.5) and r["hi"] == pytest.approx(50 + 4.9, abs=0.5)
    # alpha = 0.5: half-width = 0.6745 * 2.5 = 1.69
    r50 = accuracy_ci(bools([1, 0] * 200), alpha=0.5)
    assert r50["hi"] - r50["lo"] == pytest.approx(2 * 1.69, abs=0.4)
    # sampled data: the CI covers the true 70%, and gets ~sqrt(20) = 4.5x narrower from n = 100 to 2000
    small, big = accuracy_ci(bernoulli(100, 0.7, seed=1)), accuracy_ci(bernoulli(2000, 0.7, seed=2))
    assert small["lo"] < 70 < small["hi"] and big["lo"] < 70 < big["hi"]
    ratio = (small["hi"] - small["lo"]) / (big["hi"] - big["lo"])
    assert 3.5 < ratio < 5.5


def test_accuracy_ci_degenerate():
    assert accuracy_ci(bools([1] * 30)) == dict(acc=100.0, lo=100.0, hi=100.0, n=30)
    assert accuracy_ci(bools([0] * 30)) == dict(acc=0.0, lo=0.0, hi=0.0, n=30)


def test_accuracy_ci_deterministic_and_order_free():
    d = bernoulli(300, 0.6, seed=3)
    shuffled = {k: d[k] for k in reversed(list(d))}
    assert accuracy_ci(d, seed=7) == accuracy_ci(d, seed=7) == accuracy_ci(shuffled, seed=7)
    # 10,000 resamples pin the percentiles down; with 20 another seed moves them
    assert accuracy_ci(d, n_boot=20, seed=7) != accuracy_ci(d, n_boot=20, seed=8)


def test_bad_inputs():
    with pytest.raises(ValueError, match="no question ids"):
        accuracy_ci({})
    with pytest.raises(ValueError, match="True/False"):
        accuracy_ci({1: True, 2: "yes"})
    with pytest.raises(ValueError, match="alpha"):
        accuracy_ci(bools([1, 0]), alpha=1.5)


# ----------------------------------------------------------------------------- average CI

def test_average_is_plain_mean_of_languages():
    # de: 1/2 = 50 %, zh: 3/4 = 75 % -> mean 62.5 (pooled would be 4/6 = 66.7)
    r = average_ci({"de": bools([1, 0]), "zh": bools([1, 1, 1, 0])})
    assert r["acc"] == pytest.approx(62.5)
    assert r["per_lang"] == {"de": 50.0, "zh": 75.0} and r["langs"] == ["de", "zh"]
    assert r["lo"] < 62.5 < r["hi"]
    assert average_ci({"de": bools([1] * 5), "zh": bools([1] * 9)}) == dict(
        acc=100.0, lo=100.0, hi=100.0, langs=["de", "zh"], per_lang={"de": 100.0, "zh": 100.0})


def test_average_paired_vs_stratified():
    one = bools([1, 0, 1, 1] * 60)  # 75 %, n = 240
    langs = {lang: dict(one) for lang in ["bn", "th", "sw", "ja", "zh", "de", "fr", "ru", "es", "en"]}
    single = accuracy_ci(one, seed=5)
    paired = average_ci(langs, paired=True, seed=5)
    strat = average_ci(langs, seed=5)
    # identical languages: paired resampling of the same ids = resampling one language
    assert [paired[k] for k in ("acc", "lo", "hi")] == pytest.approx([single[k] for k in ("acc", "lo", "hi")], abs=1e-9)
    # independent resampling per language averages 10 independent errors: width / sqrt(10) = width * 0.316
    ratio = (strat["hi"] - strat["lo"]) / (single["hi"] - single["lo"])
    assert 0.25 < ratio < 0.4
    assert strat["acc"] == 75.0


def test_average_ids_and_langs():
    d = {"de": bools([1, 0, 1]), "zh": bools([1, 1, 0, 0], start=1)}  # ids 0..2 vs 1..4
    average_ci(d)  # stratified: id sets may differ
    with pytest.raises(ValueError, match=r"de lacks 2 ids, e\.g\. \[3, 4\]"):
        average_ci(d, paired=True)
    r = average_ci(d, paired=True, require_same_ids=False)  # shared ids 1, 2: de 0,1 -> 50; zh 1,1 -> 100
    assert r["per_lang"] == {"de": 50.0, "zh": 100.0} and r["acc"] == 75.0
    assert average_ci(d, langs=["zh"])["acc"] == 50.0
    with pytest.raises(ValueError, match="fr"):
        average_ci(d, langs=["de", "fr"])


# ----------------------------------------------------------------------------- paired bootstrap

@pytest.mark.parametrize("method", ["shift", "sign_flip"])
def test_paired_identical_systems(method):
    a = bernoulli(200, 0.6, seed=4)
    r = paired_bootstrap(a, dict(a), method=method)
    assert r == dict(diff=0.0, lo=0.0, hi=0.0, p_value=1.0, n=200)


@pytest.mark.parametrize("method", ["shift", "sign_flip"])
def test_paired_clearly_different(method):
    a, b = pair(n01=40, n10=5, n11=35, n00=20)  # acc(a) = 40 %, acc(b) = 75 %
    r = paired_bootstrap(a, b, method=method)
    assert r["diff"] == pytest.approx(35.0) and r["n"] == 100  # b - a, not a - b
    assert r["p_value"] < 0.001 and 0 < r["lo"] < 35 < r["hi"]
    assert paired_bootstrap(b, a, method=method)["diff"] == pytest.approx(-35.0)


def test_paired_shift_matches_normal_approx():
    # n = 1000, n01 = 50, n10 = 35: d_i in {+1 (5 %), -1 (3.5 %), 0}; mean 0.015
    # var(d_i) = E[d^2] - mean^2 = 0.085 - 0.000225 = 0.084775; sd of mean = sqrt(0.084775/1000) = 0.0092073
    # shift p ~ 2 * (1 - Phi(0.015 / 0.0092073 = 1.6291)) = 0.1033; 95% CI ~ 1.5 +- 1.96 * 0.92073 = [-0.30, 3.30]
    a, b = pair(n01=50, n10=35, n11=600, n00=315)
    r = paired_bootstrap(a, b)
    assert r["diff"] == pytest.approx(1.5)
    assert r["p_value"] == pytest.approx(0.1033, abs=0.02)
    assert r["lo"] == pytest.approx(-0.30, abs=0.15) and r["hi"] == pytest.approx(3.30, abs=0.15)


def test_paired_shift_exact_tiny_case():
    # 4 questions, b better on one: d = (+100, 0, 0, 0), diff = 25. A resample holds K ~ Bin(4, 1/4) copies of +100.
    # shift: d* - 25 >= 25  <=>  d* >= 50  <=>  K >= 2: 1 - (3/4)^4 - 4 (1/4)(3/4)^3 = 1 - 81/256 - 108/256 = 67/256
    # p = 2 * 67/256 = 0.5234 (Monte Carlo sd 2 * sqrt(.26 * .74 / 1e4) = 0.009)
    a, b = pair(n01=1, n10=0, n11=2, n00=1)
    r = paired_bootstrap(a, b)
    assert r["diff"] == pytest.approx(25.0)
    assert r["p_value"] == pytest.approx(134 / 256, abs=0.03)


def test_paired_sign_flip_matches_exact_mcnemar():
    # 1 vs 6 discordant: exact p = 0.125 (see test_mcnemar_exact_1_vs_6); Monte Carlo sd = sqrt(.125*.875/1e4) = 0.0033
    a, b = pair(n01=1, n10=6, n11=10, n00=3)
    assert paired_bootstrap(a, b, method="sign_flip")["p_value"] == pytest.approx(0.125, abs=0.015)
    with pytest.raises(ValueError, match="method"):
        paired_bootstrap(a, b, method="permutation")


def test_paired_deterministic():
    a, b = bernoulli(300, 0.5, seed=1), bernoulli(300, 0.6, seed=2)
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)


# ----------------------------------------------------------------------------- alignment by id

def test_alignment_is_by_id_not_position():
    a = {"q1": True, "q2": False, "q3": True}
    b = {"q3": False, "q2": True, "q1": True}  # same ids, other insertion order
    # q1: 1,1  q2: 0,1 -> n01  q3: 1,0 -> n10
    r = mcnemar(a, b)
    assert (r["n01"], r["n10"]) == (1, 1)
    assert paired_bootstrap(a, b)["diff"] == pytest.approx(0.0)


def test_misaligned_ids_raise():
    a, b = bools([1, 0, 1, 1]), bools([1, 1, 0, 1], start=2)  # ids 0..3 vs 2..5
    for f in (mcnemar, paired_bootstrap, jaccard_consistency):
        with pytest.raises(ValueError, match=r"lacks 2 ids, e\.g\. \[0, 1\]"):
            f(a, b)
    with pytest.raises(ValueError, match=r"\[4, 5\]"):
        mcnemar(a, b)
    # shared ids 2, 3: a = 1,1; b = 1,1
    assert mcnemar(a, b, require_same_ids=False)["n01"] == 0
    assert paired_bootstrap(a, b, require_same_ids=False)["n"] == 2
    with pytest.raises(ValueError, match="no question id is shared"):
        mcnemar(bools([1, 0]), bools([1, 0], start=10), require_same_ids=False)
    with pytest.raises(ValueError, match="pred_en"):
        agreement_rate({1: 2.0}, {2: 2.0}, require_same_ids=False)


# ----------------------------------------------------------------------------- consistency (Figure 3)

def test_jaccard():
    en = bools([0, 1, 1, 1, 1, 0, 0], start=0)  # C_en = {1, 2, 3, 4}
    x = bools([0, 0, 0, 1, 1, 1, 0], start=0)   # C_x  = {3, 4, 5}
    # |{3,4}| / |{1,2,3,4,5}| = 2/5 = 40 %
    assert jaccard_consistency(en, x) == pytest.approx(40.0)
    assert jaccard_consistency(en, en) == 100.0
    assert math.isnan(jaccard_consistency(bools([0, 0]), bools([0, 0])))  # 0/0
    # only shared ids count: an extra right answer at id 7 in en is ignored -> still 40 %
    assert jaccard_consistency({**en, 7: True}, x, require_same_ids=False) == pytest.approx(40.0)


def test_agreement_rate():
    en = {1: 1.0, 2: 2.0, 3: None, 4: None, 5: 5.0}
    x = {1: 1.0005, 2: 2.1, 3: None, 4: 3.0, 5: 5}
    # agree: id 1 (|0.0005| <= 1e-3), id 5; not id 2 (0.1), id 3 (None vs None), id 4 -> 2/5 = 40 %
    assert agreement_rate(en, x) == pytest.approx(40.0)
    # tol = 0.2 also counts id 2 -> 3/5 = 60 %
    assert agreement_rate(en, x, tol=0.2) == pytest.approx(60.0)
    assert agreement_rate({1: float("nan")}, {1: float("nan")}) == 0.0  # nan is "no number"


def test_consistency_table():
    correct = {"en": bools([1, 1, 1, 0]), "de": bools([1, 1, 0, 0]), "zh": bools([0, 0, 0, 1])}
    pred = {"en": dict(enumerate([1, 2, 3, 4.0])), "de": dict(enumerate([1, 2, 9, None])),
            "zh": dict(enumerate([0, 0, 3, 4.0]))}
    t = consistency_table(correct, pred, ["en", "de", "zh"])
    assert isinstance(t, pd.DataFrame) and list(t.columns) == ["lang", "jaccard", "agreement"]
    assert list(t["lang"]) == ["de", "zh"]
    # de: C = {0,1} vs en {0,1,2} -> 2/3; answers agree at ids 0, 1 -> 2/4
    # zh: C = {3} vs {0,1,2} -> 0/4; answers agree at ids 2, 3 -> 2/4
    assert t["jaccard"].tolist() == pytest.approx([200 / 3, 0.0])
    assert t["agreement"].tolist() == pytest.approx([50.0, 50.0])
    assert list(consistency_table(correct, pred, ["zh"])["lang"]) == ["zh"]  # ref need not be listed
    with pytest.raises(ValueError, match="fr"):
        consistency_table(correct, pred, ["de", "fr"])
    with pytest.raises(ValueError, match="en vs de"):
        consistency_table({**correct, "de": bools([1, 1])}, pred, ["de"])


# ----------------------------------------------------------------------------- Holm

def test_holm():
    # sorted: d .005*4 = .02; a .01*3 = .03; c .03*2 = .06; b .04*1 = .04 -> running max .06
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert list(adj) == ["a", "b", "c", "d"]
    assert adj == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02})
    # .3*2 = .6, .4*1 = .4 -> max(.6, .4) = .6; clipping: .6*2 = 1.2 -> 1
    assert holm({"x": 0.4, "y": 0.3}) == pytest.approx({"x": 0.6, "y": 0.6})
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}
    assert holm({"only": 0.02}) == {"only": 0.02}
    with pytest.raises(ValueError):
        holm({"x": float("nan")})


# ----------------------------------------------------------------------------------------------------------------
# Score CIs and paired differences of any score


def test_score_ci_and_paired_difference_of_means():
    x = inference.mean_stats([1, 0, 1, 1])
    ci = inference.score_ci(x, inference.mean_score, 500)
    assert ci["value"] == 0.75 and ci["lo"] <= 0.75 <= ci["hi"] and ci["n"] == 4
    same = inference.paired_score_diff(x, x, inference.mean_score, 500)
    assert same["diff"] == 0 and same["lo"] == same["hi"] == 0 and same["p_value"] == 1.0
    better = inference.paired_score_diff(inference.mean_stats([0] * 20), inference.mean_stats([1] * 20),
                                          inference.mean_score, 500)
    assert better["diff"] == 1 and better["lo"] == 1 and better["p_value"] == 0.0
    with pytest.raises(ValueError, match="same, non-zero number of items"):
        inference.score_ci({"a": x, "b": inference.mean_stats([1])}, inference.mean_score, 10)


def test_holm_empty_and_statsmodels_agree():
    from statsmodels.stats.multitest import multipletests

    assert holm({}) == {}
    p = {"a": 0.001, "b": 0.2, "c": 0.03, "d": 0.04, "e": 0.9}
    assert list(holm(p).values()) == pytest.approx(list(multipletests(list(p.values()), method="holm")[1]))


# ----------------------------------------------------------------------------------------------------------------
# Paired permutation test, per-question differences, power, effects with seeds


def test_permutation_test_is_exact_for_small_n():
    m = inference.mean_stats
    # 5 items, every b_i - a_i = +1: of the 2^5 = 32 sign patterns only all-plus and all-minus reach |mean| >= 1
    r = inference.permutation_test(m([0] * 5), m([1] * 5), inference.mean_score)
    assert r == {"diff": 1.0, "p_value": pytest.approx(2 / 32), "n": 5, "exact": True}
    # 2 discordant items of 6 (both +1): |sum| >= 2 in 2 of the 4 patterns that matter -> p = 1/2
    r = inference.permutation_test(m([1, 0, 1, 1, 0, 1]), m([1] * 6), inference.mean_score)
    assert r["diff"] == pytest.approx(1 / 3) and r["p_value"] == pytest.approx(0.5)
    same = inference.permutation_test(m([1, 0, 1]), m([1, 0, 1]), inference.mean_score)
    assert same["diff"] == 0 and same["p_value"] == 1.0


def test_permutation_test_swaps_a_question_in_every_language_at_once():
    m = inference.mean_stats
    # per question, +1 in x and -1 in y: the language average of every swap is 0, so p = 1; swapping the languages
    # independently would give p = 2/32 * ... < 1
    a, b = {"x": m([0] * 5), "y": m([1] * 5)}, {"x": m([1] * 5), "y": m([0] * 5)}
    r = inference.permutation_test(a, b, inference.mean_score)
    assert r["diff"] == 0 and r["p_value"] == 1.0


def test_permutation_test_of_a_corpus_score_matches_enumeration():
    import itertools

    from qalign_lib.analysis.mt_metrics import SCORES, sentence_stats

    refs = ["the cat sat on the mat", "two apples and a pear", "Tom buys 3 eggs", "a red car", "it is raining today",
            "she has five pens"]
    hyps = ["the cat sat", "two apples", "Tom buys eggs", "a car", "rain", "she has pens"]
    a, b = sentence_stats("chrf", hyps, refs), sentence_stats("chrf", refs, refs)
    score = SCORES["chrf"]
    obs = score(b.sum(0, keepdims=True))[0] - score(a.sum(0, keepdims=True))[0]
    null = []
    for flips in itertools.product([0, 1], repeat=6):
        s = np.array(flips, dtype=bool)[:, None]
        xa, xb = np.where(s, b, a), np.where(s, a, b)
        null.append(score(xb.sum(0, keepdims=True))[0] - score(xa.sum(0, keepdims=True))[0])
    null = np.array(null)
    p = min(1.0, 2 * min(np.mean(null >= obs - 1e-9), np.mean(null <= obs + 1e-9)))
    r = inference.permutation_test(a, b, score)
    assert r["exact"] and r["diff"] == pytest.approx(obs) and r["p_value"] == pytest.approx(p)
    assert r["p_value"] == pytest.approx(2 / 64)  # every hypothesis is worse than its reference


def test_permutation_test_monte_carlo_above_the_exact_size():
    m = inference.mean_stats
    r = inference.permutation_test(m([0] * 20), m([1] * 20), inference.mean_score, n_resamples=999, seed=3)
    # 2^20 > 999: random swaps; only the all-plus / all-minus patterns reach the observed value, so p is scipy's
    # (0 + 1) / (999 + 1) per side, doubled
    assert not r["exact"] and r["p_value"] == pytest.approx(2 / 1000)
    assert r == inference.permutation_test(m([0] * 20), m([1] * 20), inference.mean_score, n_resamples=999, seed=3)


def test_pseudo_values_of_a_mean_are_the_per_question_differences():
    a, b = inference.mean_stats([1, 0, 2, 5]), inference.mean_stats([2, 2, 2, 2])
    assert inference.pseudo_values(a, b, inference.mean_score) == pytest.approx([1, 2, 0, -3])
    two = inference.pseudo_values({"x": a, "y": b}, {"x": b, "y": b}, inference.mean_score)
    assert two == pytest.approx([0.5, 1, 0, -1.5])  # averaged over the languages
    with pytest.raises(ValueError, match="at least 2"):
        inference.pseudo_values(inference.mean_stats([1]), inference.mean_stats([2]), inference.mean_score)


def test_mde_is_the_effect_a_paired_t_test_detects_with_the_power():
    from statsmodels.stats.power import TTestPower

    d = inference.mde(2.0, 50, alpha=0.05, family_size=4, power=0.8)
    assert TTestPower().power(effect_size=d / 2.0, nobs=50, alpha=0.05 / 4) == pytest.approx(0.8, abs=1e-6)
    # large n: close to (z_{1 - alpha/2} + z_{0.8}) sd / sqrt(n) = (1.95996 + 0.84162) * 2 / sqrt(10000)
    assert inference.mde(2.0, 10_000) == pytest.approx(2.80158 * 2 / 100, rel=1e-3)
    assert inference.mde(0.0, 50) == 0.0 and math.isnan(inference.mde(1.0, 1)) and math.isnan(inference.mde(float("nan"), 9))
    assert inference.mde(1.0, 50, family_size=12) > inference.mde(1.0, 50)
    with pytest.raises(ValueError, match="family_size"):
        inference.mde(1.0, 50, family_size=0)


def test_power_plan():
    plan = inference.power_plan(10.0, [50, 250], alpha=0.05, family_size=12)
    assert list(plan.columns) == ["n", "mde"] and plan["n"].tolist() == [50, 250]
    assert plan["mde"].tolist() == pytest.approx([inference.mde(10.0, 50, 0.05, 12), inference.mde(10.0, 250, 0.05, 12)])
    assert plan["mde"].iloc[1] < plan["mde"].iloc[0]


def test_paired_effect_with_one_replicate_is_the_paired_difference():
    a, b = inference.mean_stats([1, 0, 1, 1, 0, 1]), inference.mean_stats([1] * 6)
    d = inference.paired_effect(a, b, inference.mean_score, 500)
    ref = inference.paired_score_diff(a, b, inference.mean_score, 500)
    assert (d["diff"], d["lo"], d["hi"], d["a"], d["b"]) == pytest.approx((ref["diff"], ref["lo"], ref["hi"], ref["a"], ref["b"]))
    assert d["p_value"] == pytest.approx(0.5) and d["seeds_a"] == d["seeds_b"] == 1
    assert d["sd"] == pytest.approx(np.std([0, 1, 0, 0, 1, 0], ddof=1))


def test_paired_effect_resamples_seeds_within_a_system():
    m = inference.mean_stats
    # a: two seeds, one scores 0 on every question, the other 1; b: one seed scoring 1. Questions add no variance;
    # the seeds do: a resampled pair of a's seeds averages 0, 0.5 or 1 (prob. 1/4, 1/2, 1/4), so diff is 1, 0.5 or 0
    d = inference.paired_effect([m([0] * 20), m([1] * 20)], [m([1] * 20)], inference.mean_score, 2000, seed=1)
    assert d["a"] == 0.5 and d["b"] == 1 and d["diff"] == 0.5 and (d["lo"], d["hi"]) == (0.0, 1.0)
    assert d["seeds_a"] == 2 and d["seeds_b"] == 1
    # the permutation test sees the seed average (0.5 on every question, b 1): conditional on these seeds
    assert d["p_value"] < 0.001 and d["sd"] == 0
    with pytest.raises(ValueError, match="same groups and items"):
        inference.paired_effect([m([0] * 20), m([1] * 19)], [m([1] * 20)], inference.mean_score, 10)
