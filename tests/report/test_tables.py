"""The report's tables (qalign_lib.report.tables) on hand-made results (numbers computed by hand)."""
import pandas as pd
import pytest

from qalign_lib.core import benchmarks
from qalign_lib.report import tables

# ----------------------------------------------------------------------------------------------------------------
# Table builders on hand-made results (numbers computed by hand)


def _result(benchmark: str, correct: dict, preds: dict | None = None) -> dict:
    """A scored benchmark as scoring.score_rows returns it: lang -> list of 0/1 per question id 0, 1, ..."""
    preds = preds or {}
    return {"benchmark": benchmark,
            "accuracy": {lang: 100.0 * sum(c) / len(c) for lang, c in correct.items()},
            "per_question": {lang: {i: {"pred": preds.get(lang, [None] * len(c))[i], "correct": bool(v)}
                                    for i, v in enumerate(c)} for lang, c in correct.items()}}


def test_accuracy_table_averages_the_registry_languages_only():
    b = benchmarks.get("mgsm")
    assert b.extra, "the test needs a benchmark with a language outside the average"
    # English 4/4, every other averaged language 2/4, the extra language(s) 0/4
    correct = {lang: [1, 1, 1, 1] if lang == "en" else [1, 1, 0, 0] for lang in b.averaged}
    correct.update({lang: [0, 0, 0, 0] for lang in b.extra})
    res = {"A": {"mgsm": _result("mgsm", correct)}, "B": {"mgsm": _result("mgsm", {"en": [1, 0, 0, 0]})}}
    wide, long = tables.accuracy_table(res, ["B", "missing", "A"], "mgsm", n_boot=200)
    assert list(wide.index) == ["B", "A"]  # systems order, the one without results left out
    assert list(wide.columns) == list(b.langs) + ["Avg", "Avg non-En"]
    n = len(b.averaged)
    assert wide.loc["A", "Avg"] == pytest.approx((100 + (n - 1) * 50) / n)  # 55.0: the extra languages' 0 not in it
    assert wide.loc["A", "Avg non-En"] == pytest.approx(50.0)
    assert wide.loc["A", b.extra[0]] == 0.0 and wide.loc["A", "en"] == 100.0
    assert wide.loc["B", "Avg"] == 25.0 and pd.isna(wide.loc["B", "Avg non-En"])  # English only: no non-En average
    a_long = long[long["system"] == "A"].set_index("lang")
    assert len(a_long) == len(b.langs) + 2 and a_long.loc["Avg", "n"] == 4 * n
    assert a_long.loc["en", "lo"] == a_long.loc["en", "hi"] == 100.0  # all right: no spread
    assert ((long["lo"] <= long["acc"]) & (long["acc"] <= long["hi"])).all()
    assert a_long.loc["de", "lo"] < 50.0 < a_long.loc["de", "hi"]


def test_paired_tests_difference_and_mcnemar():
    a = _result("msvamp", {"en": [1, 1, 0, 0], "de": [1, 0, 0, 0]})
    b = _result("msvamp", {"en": [1, 1, 1, 1], "de": [0, 1, 1, 1]})
    frame = tables.paired_tests({"A": {"msvamp": a}, "B": {"msvamp": b}}, "A", "B", "msvamp", n_boot=500).set_index("lang")
    assert list(frame.index) == ["de", "en"]  # registry order
    assert frame.loc["en", "diff"] == 50.0 and frame.loc["de", "diff"] == 50.0
    assert frame.loc["en", "acc A"] == 50.0 and frame.loc["en", "acc B"] == 100.0
    assert (frame.loc["en", "n01 (b only right)"], frame.loc["en", "n10 (a only right)"]) == (2, 0)
    assert (frame.loc["de", "n01 (b only right)"], frame.loc["de", "n10 (a only right)"]) == (3, 1)
    assert frame.loc["en", "p McNemar"] == pytest.approx(0.5)     # exact: 2 * P(Bin(2, 1/2) <= 0) = 2/4
    assert frame.loc["de", "p McNemar"] == pytest.approx(0.625)   # exact: 2 * P(Bin(4, 1/2) <= 1) = 2 * 5/16
    assert frame["p McNemar (Holm)"].tolist() == pytest.approx([1.0, 1.0])  # min(1, 2 * 0.5), then monotone
    assert tables.paired_tests({"A": {"msvamp": a}}, "A", "B", "msvamp", n_boot=10).empty


def test_consistency_jaccard_and_agreement():
    r = _result("mgsm", {"en": [1, 1, 1, 0], "de": [0, 1, 1, 1]}, preds={"en": [5, 6, 7, 8], "de": [5, 1, 2, 3]})
    frame = tables.consistency({"A": {"mgsm": r}}, ["A", "missing"], "mgsm")
    assert frame[["system", "lang"]].values.tolist() == [["A", "de"]]
    assert frame.loc[0, "jaccard"] == pytest.approx(100 * 2 / 4)  # {1,2} of {0,1,2,3}
    assert frame.loc[0, "agreement"] == pytest.approx(100 * 1 / 4)  # only id 0 predicts the same number


def test_consistency_leaves_telugu_out():
    """Figure 3 covers the reference's ten languages: mGSM's Telugu is an extra table column, never in Figure 3."""
    r = _result("mgsm", {"en": [1, 0], "de": [1, 0], "te": [1, 1]})
    frame = tables.consistency({"A": {"mgsm": r}}, ["A"], "mgsm")
    assert frame["lang"].tolist() == ["de"]


def _long(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame([{"system": s, "lang": "Avg", "acc": acc, "lo": lo, "hi": hi, "n": 10} for s, acc, lo, hi in rows])


def test_averages_table_and_paper_vs_us():
    mgsm, msvamp = benchmarks.get("mgsm").display, benchmarks.get("msvamp").display
    long = {"mgsm": _long([("X", 50.0, 40.0, 60.0), ("Y", 30.0, 20.0, 40.0)]),
            "msvamp": _long([("X", 70.0, 65.0, 75.0)])}
    avg = tables.averages(long, ["Y", "X"])
    assert avg[["benchmark", "system", "acc"]].values.tolist() == [[mgsm, "Y", 30.0], [mgsm, "X", 50.0], [msvamp, "X", 70.0]]
    table = tables.average_table(long, ["Y", "X"])
    assert list(table.index) == ["Y", "X"]
    assert table.loc["X", f"{msvamp} acc"] == 70.0 and table.loc["X", f"{mgsm} hi"] == 60.0
    assert pd.isna(table.loc["Y", f"{msvamp} acc"])
    long["mgsm"] = pd.concat([long["mgsm"], _long([("X released", 44.0, 34.0, 54.0)])], ignore_index=True)
    paper = {"source": "S", "systems": {"X": "Paper X", "Y": "Paper Y", "Z": "Paper Z"},
             "measures": {"X": {"what": "released checkpoint", "checkpoint": {"7b": "org/x-7b"}}},
             "averages": {"7b": {"X": {"mgsm": 45.0, "msvamp": 66.0}}}}
    pvu = tables.paper_vs_us(long, "7b", paper, released={"org/x-7b": "X released"}).set_index("system")
    assert list(pvu.index) == ["X", "Y"]  # Z: neither reported for 7b nor ours
    assert pvu.loc["X", "paper name"] == "Paper X" and pvu.loc["X", f"paper {mgsm}"] == 45.0
    assert pvu.loc["X", "paper number measures"] == "released checkpoint (org/x-7b)"
    assert pvu.loc["Y", "paper number measures"] == "unknown"
    assert pvu.loc["X", f"ours {mgsm}, our recipe"] == "50.0 [40.0, 60.0]" and pvu.loc["X", f"ours {msvamp}, our recipe"] == "70.0 [65.0, 75.0]"
    assert pvu.loc["X", f"ours {mgsm}, same checkpoint"] == "44.0 [34.0, 54.0]"  # like for like: the released model
    assert pd.isna(pvu.loc["X", f"ours {msvamp}, same checkpoint"])
    assert pd.isna(pvu.loc["Y", f"paper {mgsm}"]) and pd.isna(pvu.loc["Y", f"ours {msvamp}, our recipe"])
    assert tables.paper_vs_us(long, "7b", paper).attrs["source"] == "S"
    assert "no numbers for size 13b" in tables.paper_vs_us(long, "13b", paper).attrs["source"]
