"""The study planner: order, sharing, skipping for missing data, and the report on synthetic results."""
import json
import shutil

import pandas as pd
import papermill as pm
import pytest
import yaml

from qalign_lib import config, reporting, runner, study as studies, training
from qalign_lib.config import ConfigError
from tests.conftest import ROOT


def test_paper_study_order_and_sharing(real_data):
    s = studies.load("paper", size="7b")
    order = studies.order(s)
    assert order.index("s1-x2en_question") < order.index("qalign-monoreason") < len(order)
    assert order.index("qalign-gsm8kinstruct") < order.index("qalign-mixed")
    assert order.count("s1-x2en_question") == 1  # one stage-1 model serves every stage 2 that starts from it
    assert studies.chain(s, "qalign-mixed") == ["s1-x2en_question", "qalign-gsm8kinstruct", "qalign-mixed"]
    assert studies.order(s, ["QAlign+MultiReason+MonoReason", "QAlign+MonoReason"]) == \
        ["s1-x2en_question", "qalign-gsm8kinstruct", "qalign-mixed", "qalign-monoreason"]
    assert s.runs["multireason"].langs == ["bn", "th", "sw", "ja", "zh", "de", "fr", "ru", "es", "en"]
    assert s.runs["s1-x2en_question"].langs == ["bn", "th", "sw", "ja", "zh", "de", "fr", "ru", "es"]


def test_requirements_and_missing_data_skip_dependents(real_data):
    s = studies.load("paper", size="7b")
    need = studies.requirements(s)
    assert need["metamathqa"] == ["en"] and need["gsm8k:train"] == ["en"] and "te" in need["mgsm"] and "te" not in need["msvamp"]
    steps = {st.name: st for st in runner.plan(s)}
    assert steps["monoreason"].status == "skip" and "metamathqa [en]" in steps["monoreason"].reason
    assert steps["sft-gsm8k"].status == "todo"  # GSM8K is present: not skipped
    assert steps["s1-x2en_question"].status == "skip" and "gsm8kinstruct_question [bn]" in steps["s1-x2en_question"].reason
    assert steps["qalign-mixed"].reason == "depends on qalign-gsm8kinstruct, which is skipped"
    assert steps["MonoReason"].status == "skip" and steps["Base"].status == "todo"


def test_bad_study_files_are_clear_errors(tmp_path, monkeypatch):
    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params)
    monkeypatch.setenv("QALIGN_PARAMS_DIR", str(params))
    cases = {
        "runs: {a: {stage: 3}}": "needs 'stage: 1' or 'stage: 2'",
        "runs: {a: {stage: 1, task: nope}}": "unknown stage-1 task 'nope'",
        "runs: {a: {stage: 2, init: b, data: [gsm8k]}}": "starts from unknown run 'b'",
        "runs: {a: {stage: 2, init: b, data: [gsm8k]}, b: {stage: 2, init: a, data: [gsm8k]}}": "cycle",
        "runs: {a: {stage: 2, data: [wiki]}}": "unknown stage-2 data",
        "runs: {}\nsystems: {X: nope}": "system 'X' names unknown run 'nope'",
    }
    for text, message in cases.items():
        (params / "study-bad.yaml").write_text("size: tiny\n" + text + "\n")
        with pytest.raises(ConfigError, match=message):
            studies.load("bad")
    with pytest.raises(ConfigError, match="known studies"):
        studies.load("missing")


def _fake_system(size: str, run: str, accuracy: dict, cfg: dict) -> None:
    """A finished run whose generations answer the first k questions of each language correctly."""
    from qalign_lib import data

    root = training.run_dir(size, run)
    if run != "base":
        (root / "model").mkdir(parents=True, exist_ok=True)
        (root / "model" / "config.json").write_text("{}")
        (root / "DONE").write_text("x\n")
    for benchmark, per_lang in accuracy.items():
        for lang, k in per_lang.items():
            gold = data.load_benchmark(benchmark, lang, limit=cfg["eval_limit"])
            rows = [{"lang": lang, "id": q["id"], "response": f"The answer is {q['answer'] if i < k else 'unknown'}."}
                    for i, q in enumerate(gold)]
            (root / "eval" / benchmark).mkdir(parents=True, exist_ok=True)
            (root / "eval" / benchmark / f"{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "eval" / "metrics.json").write_text("{}")


def test_report_notebook_on_synthetic_results(real_data, tmp_path, monkeypatch):
    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params)
    cfg7 = yaml.safe_load((params / "7b.yaml").read_text())
    cfg7.update(eval_limit=10)
    (params / "7b.yaml").write_text(yaml.safe_dump(cfg7))
    monkeypatch.setenv("QALIGN_PARAMS_DIR", str(params))
    s = studies.load("paper", size="7b")
    langs = ["bn", "th", "sw", "ja", "zh", "de", "fr", "ru", "es", "en"]
    skip = {"Stage 1: En->X responses"}  # one system without results: reported as absent
    for n, (system, run) in enumerate(s.systems.items()):
        if system in skip:
            continue
        k = 2 + n % 7  # 2..8 correct out of 10 in every language
        _fake_system("7b", run, {"mgsm": {lang: k for lang in langs + ["te"]}, "msvamp": {lang: k for lang in langs}}, s.cfg)
    out = tmp_path / "report.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "report.ipynb"), str(out), parameters={"size": "7b", "study": "paper", "n_boot": 2000},
                        kernel_name="python3", progress_bar=False, cwd=str(ROOT))
    fig = config.figures_dir() / "7b"
    table = pd.read_csv(fig / "table2_mgsm.csv", index_col=0)
    expected = {system: 10.0 * (2 + n % 7) for n, system in enumerate(s.systems) if system in s.groups["main"]}
    assert table["Avg"].to_dict() == pytest.approx(expected) and table["te"].to_dict() == pytest.approx(expected)
    assert list(table.columns) == langs + ["te", "Avg", "Avg non-En"]
    ci = pd.read_csv(fig / "table2_mgsm_ci.csv")
    assert ((ci["lo"] <= ci["acc"]) & (ci["acc"] <= ci["hi"])).all() and len(ci) == 5 * 13
    ablation = pd.read_csv(fig / "table4_ablation.csv", index_col=0)
    assert "Stage 1: FLORES X->En" in ablation.index and "Stage 1: En->X responses" not in ablation.index
    assert "- Stage 1: En->X responses: run 'ablation-en2x_response'" in (fig / "table4_ablation.md").read_text()
    assert "En->X responses" not in (fig / "table2_mgsm.md").read_text()
    pvu = pd.read_csv(fig / "paper_vs_us.csv", index_col=0)
    assert pvu.loc["QAlign+MonoReason", "paper mGSM"] == 49.6 and pvu.loc["MultiReason", "paper mSVAMP"] == 44.1
    assert pvu.loc["QAlign+MonoReason", "ours mGSM"].startswith(f"{expected['QAlign+MonoReason']:.1f} [")
    paired = pd.read_csv(fig / "paired_mgsm.csv", index_col=0)
    diff = expected["QAlign+MonoReason"] - expected["MonoReason"]
    assert paired["diff"].tolist() == pytest.approx([diff] * 11)
    consistency = pd.read_csv(fig / "figure3_consistency.csv")
    assert (consistency["jaccard"] == 100.0).all()  # the same first-k ids are right in every language
    for f in ("table2_mgsm.png", "table3_msvamp.png", "figure2_mixed.png", "figure3_consistency.png", "accuracy_mgsm.png", "README.md"):
        assert (fig / f).is_file(), f


def test_published_checkpoint_row_joins_the_report(real_data, tmp_path, monkeypatch):
    from qalign_lib import data, evaluation

    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params)
    cfg = yaml.safe_load((params / "tiny.yaml").read_text())
    monkeypatch.setenv("QALIGN_PARAMS_DIR", str(params))
    s = studies.load("tiny")
    _, root = evaluation.target(s.cfg, model="Wenhao97/QAlign-MetaMathQA-7B")
    assert root == config.runs_dir() / "tiny" / "models" / "Wenhao97_QAlign-MetaMathQA-7B" / "eval"
    for benchmark in ("mgsm", "msvamp"):
        for lang in cfg["eval_langs"]:
            rows = [{"lang": lang, "id": q["id"], "response": q["answer"]} for q in data.load_benchmark(benchmark, lang, limit=cfg["eval_limit"])]
            (root / benchmark).mkdir(parents=True, exist_ok=True)
            (root / benchmark / f"{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "metrics.json").write_text("{}")
    reporting.write_report(s, extra_models=["Wenhao97/QAlign-MetaMathQA-7B"], n_boot=500)
    table = pd.read_csv(config.figures_dir() / "tiny" / "table2_mgsm.csv", index_col=0)
    assert table.loc["model: Wenhao97/QAlign-MetaMathQA-7B", "Avg"] == 100.0
