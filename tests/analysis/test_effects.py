"""Effects between systems (qalign_lib.analysis.effects): paired differences with CIs, and their summary."""
import pytest

from qalign_lib.analysis import effects
from tests.helpers import fake_analysis


def test_effects_are_paired_differences_with_cis():
    found = {"A": fake_analysis(0.0, 0.4), "B": fake_analysis(1.0, 0.8), "C": fake_analysis(0.0, 0.4)}
    eff = effects.effects(found, [("A", "B"), ("A", "C")], "mgsm", n_boot=500)
    avg = eff[eff["lang"] == "Avg"].set_index(["b", "measure"])
    assert avg.loc[("B", "chrf"), "diff"] == pytest.approx(avg.loc[("B", "chrf"), "value b"] - avg.loc[("B", "chrf"), "value a"])
    assert avg.loc[("B", "chrf"), "value b"] == pytest.approx(100.0) and avg.loc[("B", "chrf"), "excludes zero"]
    assert avg.loc[("B", "cosine"), "diff"] == pytest.approx(0.4) and avg.loc[("B", "retrieval_top1"), "diff"] == 1
    assert avg.loc[("B", "retrieval_top1_centred"), "diff"] == 0 and not avg.loc[("B", "retrieval_top1_centred"), "excludes zero"]
    assert (avg.loc["C", "diff"] == 0).all() and not avg.loc["C", "excludes zero"].any()  # identical systems
    assert set(eff["lang"]) == {"de", "fr", "Avg"}
    text = effects.summary(eff, "A", "B")
    assert "chrF +" in text and "(CI excludes zero)" in text and "centred retrieval top-1 +0.000" in text
