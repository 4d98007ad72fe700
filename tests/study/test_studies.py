"""Study files (qalign_lib.study.studies): order and sharing of runs, the analysis section, clear errors."""
import pytest

from qalign_lib.core.config import ConfigError
from qalign_lib.study import studies
from tests.helpers import BASE_STUDY, write_study


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


def test_bad_study_files_are_clear_errors(params_copy):
    params = params_copy
    cases = {
        "runs: {a: {stage: 3}}": "needs 'stage: 1' or 'stage: 2'",
        "runs: {a: {stage: 1, task: nope}}": "unknown stage-1 task 'nope'",
        "runs: {a: {stage: 2, init: b, stage2_data: [gsm8k]}}": "starts from unknown run 'b'",
        "runs: {a: {stage: 2, init: b, stage2_data: [gsm8k]}, b: {stage: 2, init: a, stage2_data: [gsm8k]}}": "cycle",
        "runs: {a: {stage: 2, stage2_data: [wiki]}}": "unknown stage-2 data",
        "runs: {}\nsystems: {X: nope}": "system 'X' names unknown run 'nope'",
    }
    for text, message in cases.items():
        (params / "study-bad.yaml").write_text("size: tiny\n" + text + "\n")
        with pytest.raises(ConfigError, match=message):
            studies.load("bad")
    with pytest.raises(ConfigError, match="known studies"):
        studies.load("missing")


def test_study_analysis_section_and_default(params_copy):
    write_study(params_copy, BASE_STUDY)
    s = studies.load("x")
    assert s.analyses == {"Base": "base", "Stage 1: s1": "s1"} and s.effects == [("Base", "Stage 1: s1")]
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base, S1: s1}\n  effects: [[Base, S1]]\n")
    s = studies.load("x")
    assert s.analyses == {"Base": "base", "S1": "s1"} and s.effects == [("Base", "S1")]
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base, S1: nope}\n")
    with pytest.raises(ConfigError, match="unknown run 'nope'"):
        studies.load("x")
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base}\n  effects: [[Base, Other]]\n")
    with pytest.raises(ConfigError, match="is not a pair"):
        studies.load("x")
