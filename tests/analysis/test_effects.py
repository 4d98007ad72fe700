"""Effects between systems (qalign_lib.analysis.effects): paired differences with CIs, permutation p, Holm over the
declared families, MDE, seeds, per-layer effects, and their summary."""
from types import SimpleNamespace

import pandas as pd
import pytest

from qalign_lib.analysis import effects, inference
from qalign_lib.analysis.representations import MEASURES
from tests.helpers import fake_analysis


def _found():
    return {"A": fake_analysis(0.0, 0.4), "B": fake_analysis(1.0, 0.8), "C": fake_analysis(0.0, 0.4)}


def test_effects_are_paired_differences_with_cis():
    eff = effects.effects(_found(), [("A", "B"), ("A", "C")], "mgsm", n_boot=500)
    assert list(eff.columns) == effects.COLUMNS
    avg = eff[eff["lang"] == "Avg"].set_index(["b", "measure"])
    assert avg.loc[("B", "chrf"), "diff"] == pytest.approx(avg.loc[("B", "chrf"), "value b"] - avg.loc[("B", "chrf"), "value a"])
    assert avg.loc[("B", "chrf"), "value b"] == pytest.approx(100.0)
    assert avg.loc[("B", "cosine"), "diff"] == pytest.approx(0.4) and avg.loc[("B", "retrieval_top1"), "diff"] == 1
    assert avg.loc[("B", "retrieval_top1_centred"), "diff"] == 0 and avg.loc[("B", "retrieval_top1_centred"), "p"] == 1
    assert (avg.loc["C", "diff"] == 0).all() and (avg.loc["C", "p"] == 1).all()  # identical systems
    # 6 questions, every one better in B: the exact sign-flip p is 2 / 2^6
    assert avg.loc[("B", "chrf"), "p"] == pytest.approx(2 / 64)
    assert set(eff["lang"]) == {"de", "fr", "Avg"}


def test_families_holm_mde_and_verdict():
    eff = effects.effects(_found(), [("A", "B"), ("A", "C")], "mgsm", n_boot=200)
    primary = eff[eff["family"] == effects.PRIMARY_FAMILY]
    # 2 pairs x (chrF, BLEU + the primary representation measures), on Avg only
    assert len(primary) == 2 * (2 + len(effects.PRIMARY)) and set(primary["lang"]) == {"Avg"}
    assert set(primary["measure"]) == {"chrf", "bleu", *effects.PRIMARY}
    adj = inference.holm(dict(zip(primary.index, primary["p"])))
    assert primary["p_adj"].tolist() == pytest.approx(list(adj.values()))
    b_chrf = primary[(primary["b"] == "B") & (primary["measure"] == "chrf")].iloc[0]
    assert b_chrf["p_adj"] == pytest.approx(min(1.0, len(primary) * 2 / 64))  # the smallest p, times m
    exploratory = eff[(eff["b"] == "B") & (eff["measure"] == "chrf") & (eff["lang"] != "Avg")]
    assert set(exploratory["family"]) == {"exploratory: B - A, chrf"} and len(exploratory) == 2
    assert exploratory["p_adj"].tolist() == pytest.approx([2 * 2 / 64] * 2)
    descriptive = [m for m in MEASURES if m not in effects.PRIMARY]
    if descriptive:  # a descriptive measure's Avg row is exploratory too, in its (pair, measure) family
        row = eff[(eff["b"] == "B") & (eff["measure"] == descriptive[0]) & (eff["lang"] == "Avg")].iloc[0]
        assert row["family"] == f"exploratory: B - A, {descriptive[0]}"
    assert (eff["verdict"] == eff["p_adj"].map(lambda p: effects.SIGNIFICANT if p < 0.05 else effects.NOT_SIGNIFICANT)).all()
    # MDE at the family's first Holm step, from the SD of the per-question differences
    row = eff[(eff["b"] == "B") & (eff["measure"] == "cosine") & (eff["lang"] == "de")].iloc[0]
    assert row["mde"] == 0.0  # every question's difference is 0.4: SD 0
    assert eff["mde"].notna().all()


def test_significant_verdict_with_enough_questions():
    found = {"A": fake_analysis(0.0, 0.4, n=12), "B": fake_analysis(1.0, 0.8, n=12)}
    eff = effects.effects(found, [("A", "B")], "mgsm", n_boot=200)
    chrf = eff[(eff["measure"] == "chrf") & (eff["lang"] == "Avg")].iloc[0]
    # 2^12 = 4096 <= 10,000 swaps: exact p = 2 / 4096; Holm over 2 + len(PRIMARY) primary rows
    assert chrf["p"] == pytest.approx(2 / 4096) and chrf["verdict"] == effects.SIGNIFICANT


def test_representation_effects_leave_the_embeddings_out():
    a, b = fake_analysis(0.0, 0.4), fake_analysis(0.0, 0.4)
    pq = b["mgsm"]["representations"]
    pq.loc[pq["layer"] == 0, "cosine"] = 0.99  # only layer 0 (the embeddings) differs
    eff = effects.effects({"A": a, "B": b}, [("A", "B")], "mgsm", n_boot=100)
    assert (eff[eff["measure"] == "cosine"]["diff"] == 0).all()
    assert effects.summary_layers(2) == [1, 2]


def test_effects_with_seeds_average_the_replicates():
    def rep(cosine):
        return fake_analysis(0.0, cosine)["mgsm"]
    found = {"A": {"mgsm": {**rep(0.2), "replicates": [rep(0.2), rep(0.4)]}}, "B": {"mgsm": rep(0.8)}}
    eff = effects.effects(found, [("A", "B")], "mgsm", n_boot=400)
    row = eff[(eff["measure"] == "cosine") & (eff["lang"] == "Avg")].iloc[0]
    # A's seeds: 0.2 and 0.4 -> 0.3; B 0.8. Resampling A's two seeds: A = 0.2, 0.3 or 0.4, diff 0.6, 0.5 or 0.4
    assert row["value a"] == pytest.approx(0.3) and row["diff"] == pytest.approx(0.5)
    assert (row["lo"], row["hi"]) == pytest.approx((0.4, 0.6))


def test_collect_keeps_every_seed(monkeypatch):
    parts = {ref: {"mgsm": {"translation": {"de": [{"id": 0}]}, "representations": pd.DataFrame()}} for ref in ("r1", "r2", "r3")}
    monkeypatch.setattr(effects, "_read_replicate",
                        lambda cfg, ref: (parts[ref], None) if ref in parts else ({}, f"run {ref} not finished"))
    study = SimpleNamespace(cfg=None, analyses={"A": ["r1", "r2"], "B": "r3", "C": ["r3", "gone"], "D": ["gone"]})
    found, absent = effects.collect(study)
    assert [p is parts[r]["mgsm"] for p, r in zip(found["A"]["mgsm"]["replicates"], ("r1", "r2"))] == [True, True]
    assert found["A"]["mgsm"]["translation"] is parts["r1"]["mgsm"]["translation"]
    assert len(effects.replicates(found["B"]["mgsm"])) == 1 and len(effects.replicates(found["C"]["mgsm"])) == 1
    assert absent == {"C (run 2 of 2)": "run gone not finished", "D": "run gone not finished"}
    with pytest.raises(ValueError, match="list of run refs"):
        effects.collect(SimpleNamespace(cfg=None, analyses={"A": []}))


def test_layer_effects_holm_across_layers():
    a, b = fake_analysis(0.0, 0.4), fake_analysis(0.0, 0.4)
    pq = b["mgsm"]["representations"]
    measure = effects.PRIMARY[0]
    if measure in pq.columns:
        pq.loc[pq["layer"] == 2, measure] += 0.1
    else:
        pytest.skip(f"{measure} is not in the fixture")
    lay = effects.layer_effects({"A": a, "B": b}, [("A", "B")], "mgsm", n_boot=100)
    assert list(lay.columns) == effects.LAYER_COLUMNS
    rows = lay[lay["measure"] == measure].set_index("layer")
    assert rows.index.tolist() == [1, 2] and rows.loc[1, "diff"] == 0 and rows.loc[2, "diff"] == pytest.approx(0.1)
    assert set(rows["family"]) == {f"layers: B - A, {measure}"}
    # exact p = 2/64 at layer 2, 1 at layer 1; Holm over the 2 layers: 2/64 * 2, 1
    assert rows.loc[2, "p_adj"] == pytest.approx(4 / 64) and rows.loc[1, "p_adj"] == 1


def test_summary_names_the_adjusted_p_family_and_mde():
    eff = effects.effects(_found(), [("A", "B"), ("A", "C")], "mgsm", n_boot=200)
    text = effects.summary(eff, "A", "B")
    m = 2 * (2 + len(effects.PRIMARY))
    assert text.startswith("chrF +97.7 [") and f"Holm-adjusted p = {min(1, m * 2 / 64):.3f} (family of {m}), MDE 0.0" in text
    assert "excludes zero" not in text and "exploratory, family of 3" in text
    assert effects.format_p(0.0004) == "p < 0.001" and effects.format_p(0.0123) == "p = 0.012"


def _only(part: dict, lang: str) -> dict:
    """One system's analysis (fake_analysis) cut to a single language."""
    m = part["mgsm"]
    pq = m["representations"]
    return {"mgsm": {"translation": {lang: m["translation"][lang]}, "representations": pq[pq["lang"] == lang]}}


def test_one_language_is_tested_once_in_the_primary_family():
    """Issue 21 case 13: with one analysis language its effect is the average over languages: one row per measure
    (lang Avg), the primary measures in the primary family, no exploratory copy of the same test."""
    found = {k: _only(v, "de") for k, v in _found().items()}
    eff = effects.effects(found, [("A", "B")], "mgsm", n_boot=200)
    assert list(eff["lang"]) == ["Avg"] * len(eff) and len(eff) == len(effects.METRICS) + len(MEASURES)
    assert not eff.duplicated(["a", "b", "measure"]).any()
    primary = eff[eff["family"] == effects.PRIMARY_FAMILY]
    assert sorted(primary["measure"]) == sorted(effects.primary_measures())
    m = len(effects.primary_measures())
    assert list(primary["p_adj"]) == pytest.approx([min(1.0, m * 2 / 64)] * m)  # Holm over the m primary tests
    two = effects.effects(_found(), [("A", "B")], "mgsm", n_boot=200)  # the same language's row among two languages
    de = two[two["lang"] == "de"].set_index("measure")
    assert eff.set_index("measure")["diff"].to_dict() == pytest.approx(de.loc[eff["measure"], "diff"].to_dict())
    assert effects.languages(found, [("A", "B")], "mgsm") == ["de"]
    assert effects.languages(_found(), [("A", "B")], "mgsm") == ["de", "fr"]
    assert "chrF +" in effects.summary(eff, "A", "B") and f"(family of {m})" in effects.summary(eff, "A", "B")


def _primary_rows(p_adj: dict, diff: dict, mde: dict, a="Base", b="S1") -> pd.DataFrame:
    rows = [{"a": a, "b": b, "measure": m, "lang": effects.AVG, "family": effects.PRIMARY_FAMILY, "p_adj": p_adj[m],
             "diff": diff[m], "mde": mde[m]} for m in p_adj]
    # an exploratory row that would count if the verdict read outside the primary family
    rows.append({"a": a, "b": b, "measure": "cosine", "lang": effects.AVG, "family": "exploratory: S1 - Base, cosine",
                 "p_adj": 0.001, "diff": -1.0, "mde": 0.1})
    return pd.DataFrame(rows)


def test_the_verdict_names_what_changed_in_the_primary_family_and_what_was_not_excluded():
    table = _primary_rows({"chrf": 0.001, "bleu": 0.02, "csls_mrr": 0.3, "margin": 0.04},
                          {"chrf": 11.2, "bleu": 3.5, "csls_mrr": 0.003, "margin": -0.012},
                          {"chrf": 2.8, "bleu": 1.7, "csls_mrr": 0.016, "margin": 0.005})
    assert effects.verdict(table, "Base", "S1") == (
        "chrF and BLEU rose and centred cosine margin over mismatched English fell (Holm-adjusted p < 0.05); no change "
        "detected in CSLS MRR (both directions) (a change smaller than the MDE, CSLS MRR (both directions) 0.016, is "
        "not excluded)")
    at_alpha = _primary_rows({"chrf": 0.05, "bleu": 0.9}, {"chrf": 5.0, "bleu": 1.0}, {"chrf": 4.7, "bleu": 3.7})
    assert effects.verdict(at_alpha, "Base", "S1") == (  # p_adj = alpha is not below it
        "no primary measure changed detectably (every Holm-adjusted p >= 0.05; changes smaller than the MDE, chrF 4.7, "
        "BLEU 3.7, are not excluded)")
    assert effects.verdict(table, "S1", "Base") == ""  # not a declared direction: no rows, no verdict
