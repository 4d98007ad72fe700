"""The study planner: order, sharing, and skipping for missing data (the report's tests: tests/report/)."""
import pytest

from qalign_lib.core.config import ConfigError
from qalign_lib.study import runner, studies
from qalign_lib.train import stages
from tests.synthetic import make_data_dir


def test_paper_study_order_and_sharing():
    s = studies.load("paper", size="7b")
    order = studies.order(s)
    assert sorted(order) == sorted(s.runs)  # every run once
    for name in order:  # every run after the run it starts from
        init = s.runs[name].init
        assert init == "base" or order.index(init) < order.index(name), (init, name)
    assert order.index("s1-x2en_question") < order.index("qalign-monoreason")
    assert order.index("qalign-gsm8kinstruct") < order.index("qalign-mixed")
    assert order.count("s1-x2en_question") == 1  # one stage-1 model serves every stage 2 that starts from it
    assert studies.chain(s, "qalign-mixed") == ["s1-x2en_question", "qalign-gsm8kinstruct", "qalign-mixed"]
    assert studies.order(s, ["QAlign+MultiReason+MonoReason", "QAlign+MonoReason"]) == \
        ["s1-x2en_question", "qalign-gsm8kinstruct", "qalign-mixed", "qalign-monoreason"]
    assert s.runs["multireason"].langs == ["bn", "th", "sw", "ja", "zh", "de", "fr", "ru", "es", "en"]
    assert s.runs["s1-x2en_question"].langs == ["bn", "th", "sw", "ja", "zh", "de", "fr", "ru", "es"]


def test_requirements_and_missing_data_skip_dependents(tmp_path, monkeypatch):
    """On synthetic data with the files the offline snapshot lacks left out (see the real-data test below)."""
    root = make_data_dir(tmp_path / "data", drop=["metamathqa/*.jsonl", "gsm8kinstruct_question/bn.jsonl",
                                                  "gsm8kinstruct_question/th.jsonl", "gsm8kinstruct/[!e]*.jsonl",
                                                  "gsm8kinstruct/es.jsonl"])
    monkeypatch.setenv("QALIGN_DATA_DIR", str(root))
    _check_paper_plan_on_the_offline_snapshot()


def test_real_dry_run_plan_skips_what_the_snapshot_lacks(real_data):
    _check_paper_plan_on_the_offline_snapshot()


def _check_paper_plan_on_the_offline_snapshot():
    s = studies.load("paper", size="7b")
    need = studies.requirements(s)
    assert need["metamathqa"] == ["en"] and "gsm8k:train" not in need and "en" in need["gsm8kinstruct"] and "te" in need["mgsm"] and "te" not in need["msvamp"]
    steps = {st.name: st for st in runner.plan(s)}
    assert steps["monoreason"].status == "skip" and "metamathqa [en]" in steps["monoreason"].reason
    assert steps["sft"].status == "todo"  # the reference's SFT data (gsm8kinstruct_en) is present: not skipped
    assert s.runs["sft"].tasks == ["gsm8kinstruct"] and s.runs["sft"].langs == ["en"]
    # the released checkpoints behind the paper's numbers are rows of the study, evaluated by Hub id
    assert steps["MetaMath-7B-V1.0 (released)"].params["model"] == "meta-math/MetaMath-7B-V1.0"
    assert "MetaMath-7B-V1.0 (released)" in s.groups["main"] and "MetaMath-7B-V1.0 (released)" in s.groups["released"]
    assert steps["s1-x2en_question"].status == "skip" and "gsm8kinstruct_question [bn]" in steps["s1-x2en_question"].reason
    assert steps["qalign-mixed"].reason == "depends on qalign-gsm8kinstruct, which is skipped"
    assert steps["MonoReason"].status == "skip" and steps["Base"].status == "todo"
    assert steps["multireason"].status == "skip" and "gsm8kinstruct [bn]" in steps["multireason"].reason
    assert steps["s1-flores_x2en"].status == "todo" and steps["report"].status == "todo"
    assert steps["MonoReason"].reason == "its run monoreason is skipped"


def test_bad_study_files_are_clear_errors(params_copy):
    params = params_copy
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


def test_plan_follows_what_the_stages_trained(synthetic_data, tiny_model):
    """The planner decides exactly as the stages do: a run finished with the same inputs is done; changed inputs
    make it, and everything downstream of it, todo again."""
    small = dict(model=tiny_model, stage1_limit=2, batch_size=8, per_device_batch_size=8, report_to="none")
    s = studies.load("tiny", **small)
    steps = {st.name: st for st in runner.plan(s)}
    assert [steps[n].status for n in ("s1-x2en_question", "monoreason", "qalign-monoreason")] == ["todo"] * 3
    assert steps["qalign-monoreason"].reason.startswith("after s1-x2en_question")
    run = s.runs["s1-x2en_question"]
    stages.stage1(s.cfg, run.tasks[0], run.langs, name=run.name)
    steps = {st.name: st for st in runner.plan(s)}
    assert steps["s1-x2en_question"].status == "done" and steps["s1-x2en_question"].reason == "finished with the same inputs"
    assert steps["qalign-monoreason"].status == "todo" and steps["monoreason"].status == "todo"
    assert steps["Base"].status == "todo" and steps["QAlign+MonoReason"].reason == "after training qalign-monoreason"
    # a learned parameter changed: retrain it and what starts from it; a speed parameter changed: nothing to do
    steps = {st.name: st for st in runner.plan(studies.load("tiny", **small, lr=1e-4))}
    assert steps["s1-x2en_question"].status == "todo" and steps["s1-x2en_question"].reason == "inputs changed since it was trained"
    assert steps["qalign-monoreason"].reason.startswith("after s1-x2en_question")
    steps = {st.name: st for st in runner.plan(studies.load("tiny", **small, gradient_checkpointing=True, save_steps=7))}
    assert steps["s1-x2en_question"].status == "done"
