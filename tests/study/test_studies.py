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
    assert s.analyses == {"Base": ["base"], "Stage 1: s1": ["s1"]} and s.effects == [("Base", "Stage 1: s1")]
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base, S1: s1}\n  effects: [[Base, S1]]\n")
    s = studies.load("x")
    assert s.analyses == {"Base": ["base"], "S1": ["s1"]} and s.effects == [("Base", "S1")]
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base, S1: nope}\n")
    with pytest.raises(ConfigError, match="unknown run 'nope'"):
        studies.load("x")
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base}\n  effects: [[Base, Other]]\n")
    with pytest.raises(ConfigError, match="is not a pair"):
        studies.load("x")


SEEDED_STUDY = """size: tiny
benchmarks: [mgsm]
runs:
  s1: {stage: 1, task: x2en_question, langs: [de, fr]}
  s1-seed1: {stage: 1, task: x2en_question, langs: [de, fr], stage1_seed: 1}
  s1-seed2: {stage: 1, task: x2en_question, langs: [de, fr], stage1_seed: 2, stage1_limit: 3}
  s1-full: {stage: 1, task: x2en_question, langs: [de, fr], lora_r: null, lr: 1.0e-4}
  s1-flores: {stage: 1, task: flores_x2en, langs: [de, fr], stage1_match_tokens: x2en_question, stage1_seed: 1}
  final: {stage: 2, init: s1-seed1, stage2_data: [gsm8k], lr: 0.002}
systems: {Base: base, Final: final}
analysis:
  systems:
    Base: base
    X2En: [s1-seed1, s1-seed2]
    Full: s1-full
  effects: [[Base, X2En], [Base, Full]]
"""


def test_run_overrides_are_validated_and_applied(params_copy):
    write_study(params_copy, SEEDED_STUDY)
    s = studies.load("x")
    assert s.runs["s1"].overrides == {} and s.runs["s1"].config(s.cfg) is s.cfg
    assert s.runs["s1-seed1"].overrides == {"stage1_seed": 1}
    assert s.runs["s1-seed2"].overrides == {"stage1_seed": 2, "stage1_limit": 3}
    assert s.runs["s1-full"].overrides == {"lora_r": None, "lr": 1.0e-4}
    full = s.runs["s1-full"].config(s.cfg)
    assert (full.lora_r, full.lr, s.cfg.lora_r) == (None, 1.0e-4, 16)
    assert s.runs["s1-flores"].config(s.cfg).stage1_match_tokens == "x2en_question"
    assert s.runs["final"].config(s.cfg).lr == 0.002 and s.runs["final"].config(s.cfg).stage1_seed is None


def test_analysis_systems_take_lists_of_runs(params_copy):
    write_study(params_copy, SEEDED_STUDY)
    s = studies.load("x")
    assert s.analyses == {"Base": ["base"], "X2En": ["s1-seed1", "s1-seed2"], "Full": ["s1-full"]}
    assert s.effects == [("Base", "X2En"), ("Base", "Full")]
    assert studies.order(s, ["X2En"]) == ["s1-seed1", "s1-seed2"]
    assert studies.analysis_refs(studies.Study("y", "tiny", s.cfg, {}, {}, [], analyses={"A": "base"}), "A") == ["base"]
    for bad, message in (("X2En: []", "expected a run"), ("X2En: [s1, s1]", "expected a run"),
                         ("X2En: [s1, nope]", "names unknown run 'nope'"), ("X2En: {a: s1}", "expected a run")):
        write_study(params_copy, SEEDED_STUDY.replace("X2En: [s1-seed1, s1-seed2]", bad))
        with pytest.raises(ConfigError, match=message):
            studies.load("x")


@pytest.mark.parametrize("line, message", [
    ("{stage: 1, task: x2en_question, stage1_sed: 1}", r"run 'bad': unknown key 'stage1_sed'; did you mean 'stage1_seed'\?"),
    ("{stage: 1, task: x2en_question, epochs: 2}", r"run 'bad': unknown key 'epochs'.*may override stage1_limit, stage1_seed"),
    ("{stage: 1, task: x2en_question, stage1_seed: -1}", r"stage1_seed=-1 .*run 'bad'.*out of range"),
    ("{stage: 1, task: x2en_question, lora_r: two}", r"lora_r='two' .*run 'bad'.*expected int or null"),
    ("{stage: 1, task: flores_x2en, stage1_match_tokens: questions}", r"run 'bad': stage1_match_tokens='questions': name a stage-1 task"),
    ("{stage: 2, stage2_data: [gsm8k], stage1_seed: 1}", r"run 'bad': stage1_seed is a stage-1 parameter"),
])
def test_bad_run_overrides_name_the_file_run_and_key(params_copy, line, message):
    write_study(params_copy, BASE_STUDY.replace("runs:\n", "runs:\n  bad: " + line + "\n"))
    with pytest.raises(ConfigError, match=message) as e:
        studies.load("x")
    assert "study-x.yaml" in str(e.value)


def test_offline_study_design():
    s = studies.load("offline")
    stage1 = {name: run for name, run in s.runs.items() if run.stage == 1}
    seven = ["sw", "ja", "zh", "de", "fr", "ru", "es"]
    for task in ("x2en_question", "en2x_question", "flores_x2en", "x2en_question_shuffled"):
        seeded = [r for r in stage1.values() if r.task == task and r.overrides.get("stage1_seed") is not None
                  and "lora_r" not in r.overrides and r.overrides.get("stage1_limit") is None]
        assert len({r.overrides["stage1_seed"] for r in seeded}) >= 3, task
        assert all(r.langs == seven for r in seeded), task
    flores = [r for r in stage1.values() if r.task == "flores_x2en" and r.overrides.get("stage1_seed") is not None]
    assert flores and all(r.overrides["stage1_match_tokens"] == "x2en_question" for r in flores)
    dose = [r for r in stage1.values() if r.overrides.get("stage1_limit") == 48]
    assert len({r.overrides["stage1_seed"] for r in dose}) >= 3
    assert any(r.overrides.get("lora_r", 16) is None for r in stage1.values())
    for system, refs in s.analyses.items():  # the seeds of a system share everything but the seed
        keys = {(s.runs[r].task, tuple(sorted((k, v) for k, v in s.runs[r].overrides.items() if k != "stage1_seed")))
                for r in refs if r in s.runs}
        assert len(keys) <= 1, system
    assert len(s.effects) == len(set(s.effects))
