"""The study report: table builders on hand-made results, results collection, and the report written from fake
systems on the synthetic data (directly, and through the report notebook)."""
import json

import pandas as pd
import papermill as pm
import pytest

from qalign_lib.core import benchmarks, errors, layout
from qalign_lib.report import document, results, tables
from qalign_lib.study import studies
from tests.helpers import ROOT, fake_system

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


# ----------------------------------------------------------------------------------------------------------------
# Fake systems, built through the run layout


def test_collect_reports_absent_systems_but_raises_on_corrupt_generations(synthetic_data, monkeypatch):
    s = studies.load("tiny")
    langs = {b: [lang for lang in s.cfg.eval_langs if lang in benchmarks.get(b).langs] for b in s.benchmarks}
    root = fake_system(s.cfg, s.systems["MonoReason"], {b: {lang: 1 for lang in langs[b]} for b in s.benchmarks})
    layout.run(s.size, s.systems["QAlign+MonoReason"]).model.mkdir(parents=True)  # started, never finished
    got, absent = results.collect(s)
    assert list(got) == ["MonoReason"] and set(got["MonoReason"]) == set(s.benchmarks)
    assert got["MonoReason"]["mgsm"]["accuracy"]["en"] == pytest.approx(100 / s.cfg.eval_limit, abs=1e-3)
    assert absent["Base"] == f"not evaluated ({layout.base_eval(s.size, s.cfg.model).path})"
    assert absent["QAlign+MonoReason"].startswith("run 'qalign-monoreason' (") and "is not finished" in absent["QAlign+MonoReason"]
    # a corrupt generations file is an error, not an absent system
    with root.generations("mgsm", "en").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(errors.ResultsError, match="not valid JSON"):
        results.collect(s)
    # and so is a bug
    from qalign_lib.evaluation import evaluator

    monkeypatch.setattr(evaluator, "load_generations", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        results.collect(s)


def test_published_checkpoint_row_joins_the_report(synthetic_data):
    s = studies.load("tiny")
    model = "Wenhao97/QAlign-MetaMathQA-7B"
    root = fake_system(s.cfg, f"model:{model}",
                        {b: {lang: s.cfg.eval_limit for lang in s.cfg.eval_langs if lang in benchmarks.get(b).langs}
                         for b in s.benchmarks})
    assert root == layout.model_eval(s.size, model)
    written = document.write_report(s, extra_models=[model], n_boot=500)
    out = layout.report_dir(s.size)
    name = f"{benchmarks.get('mgsm').table.lower().replace(' ', '')}_mgsm"
    table = pd.read_csv(out / f"{name}.csv", index_col=0)
    assert list(table.index) == [f"model: {model}"] and table.loc[f"model: {model}", "Avg"] == 100.0
    md = (out / f"{name}.md").read_text()
    assert s.caption.split(".")[0] in md and "- Base: not evaluated (" in md and "- MonoReason: run 'monoreason'" in md
    assert written[name] == out / f"{name}.md" and written[f"{name}_png"] == out / f"{name}.png"
    assert (out / f"{name}.png").stat().st_size > 0
    # the consistency pair has no results: paired tests say so, Figure 3 is not drawn
    assert "_no results_" in (out / "paired_mgsm.md").read_text()
    assert "figure3_consistency" not in written and not (out / "figure3_consistency.png").exists()
    index = (out / "README.md").read_text()
    assert f"`{name}.md`" in index and "- QAlign+MonoReason: run 'qalign-monoreason'" in index
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


@pytest.mark.slow
def test_report_notebook_on_synthetic_results(synthetic_data, params_copy, tmp_path):
    with (params_copy / "sizes" / "7b.yaml").open("a") as f:
        f.write("eval_limit: 10\n")
    s = studies.load("paper", size="7b")
    assert s.cfg.eval_limit == 10
    mgsm, msvamp = benchmarks.get("mgsm"), benchmarks.get("msvamp")
    skip = {"Stage 1: En->X responses"}  # one system without results: reported as absent
    k = {system: 2 + n % 7 for n, system in enumerate(s.systems)}  # 2..8 of 10 right in every averaged language
    for system, run in s.systems.items():
        if system not in skip:  # the extra language: 10 - k right, so it would move the average if it were in it
            fake_system(s.cfg, run, {"mgsm": {**{lang: k[system] for lang in mgsm.averaged}, **{lang: 10 - k[system] for lang in mgsm.extra}},
                                      "msvamp": {lang: k[system] for lang in msvamp.langs}})
    out = tmp_path / "report.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "report.ipynb"), str(out), parameters={"size": "7b", "study": "paper", "n_boot": 2000},
                        kernel_name="python3", progress_bar=False, cwd=str(ROOT))
    fig = layout.report_dir("7b")
    table = pd.read_csv(fig / "table2_mgsm.csv", index_col=0)
    main = s.groups["main"]
    expected = {system: 10.0 * k[system] for system in main}
    assert list(table.index) == main
    assert table["Avg"].to_dict() == pytest.approx(expected)
    assert table["te"].to_dict() == pytest.approx({x: 100 - v for x, v in expected.items()})
    assert list(table.columns) == list(mgsm.langs) + ["Avg", "Avg non-En"]
    ci = pd.read_csv(fig / "table2_mgsm_ci.csv")
    assert ((ci["lo"] <= ci["acc"]) & (ci["acc"] <= ci["hi"])).all() and len(ci) == len(main) * (len(mgsm.langs) + 2)
    assert len(pd.read_csv(fig / "table3_msvamp_ci.csv")) == len(main) * (len(msvamp.langs) + 2)
    ablation = pd.read_csv(fig / "table4_ablation.csv", index_col=0)
    assert list(ablation.index) == [x for x in s.groups["ablation"] if x not in skip]
    assert ablation.loc["Stage 1: FLORES X->En", f"{mgsm.display} acc"] == pytest.approx(10.0 * k["Stage 1: FLORES X->En"])
    assert "- Stage 1: En->X responses: run 'ablation-en2x_response'" in (fig / "table4_ablation.md").read_text()
    assert "En->X responses" not in (fig / "table2_mgsm.md").read_text()
    mixed = pd.read_csv(fig / "figure2_mixed.csv")
    assert len(mixed) == 2 * len(s.groups["mixed"])
    pvu = pd.read_csv(fig / "paper_vs_us.csv", index_col=0)
    assert pvu.loc["QAlign+MonoReason", f"paper {mgsm.display}"] == 49.6 and pvu.loc["MultiReason", f"paper {msvamp.display}"] == 44.1
    assert pvu.loc["QAlign+MonoReason", f"ours {mgsm.display}, our recipe"].startswith(f"{expected['QAlign+MonoReason']:.1f} [")
    assert pvu.loc["MonoReason", "paper number measures"].startswith("released MetaMath checkpoint")
    paired = pd.read_csv(fig / "paired_mgsm.csv", index_col=0)
    diff = expected["QAlign+MonoReason"] - expected["MonoReason"]
    assert paired["diff"].tolist() == pytest.approx([diff] * len(mgsm.averaged) + [-diff] * len(mgsm.extra))
    consistency = pd.read_csv(fig / "figure3_consistency.csv")
    same = consistency[~consistency["lang"].isin(mgsm.extra)]
    assert len(same) == 2 * (len(mgsm.averaged) - 1 + len(msvamp.langs) - 1) and (same["jaccard"] == 100.0).all()
    assert not consistency["lang"].isin(mgsm.extra).any()  # Figure 3: the ten languages only (no Telugu)
    for f in ("table2_mgsm.png", "table3_msvamp.png", "figure2_mixed.png", "figure3_consistency.png", "accuracy_mgsm.png",
              "accuracy_msvamp.png", "README.md"):
        assert (fig / f).is_file(), f
    nb = json.loads(out.read_text())
    shown = {c["id"]: json.dumps(c.get("outputs", [])) for c in nb["cells"] if c["cell_type"] == "code"}
    assert "- Stage 1: En->X responses: run 'ablation-en2x_response'" in shown["collect"]
    assert "Avg non-En" in shown["tables"] and "image/png" in shown["write"]
