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
                         ("X2En: [s1, nope]", "names unknown run 'nope'"), ("X2En: {a: s1}", "X2En: expected a name or a list of names")):
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
    dose = [r for r in stage1.values() if r.task == "x2en_question" and r.overrides.get("stage1_limit") not in (None, 16)]
    assert len({r.overrides["stage1_seed"] for r in dose}) >= 3  # a dose arm: another number of pairs, 3 seeds
    assert any(r.overrides.get("lora_r", 16) is None for r in stage1.values())
    for system, refs in s.analyses.items():  # the seeds of a system share everything but the seed
        keys = {(s.runs[r].task, tuple(sorted((k, v) for k, v in s.runs[r].overrides.items() if k != "stage1_seed")))
                for r in refs if r in s.runs}
        assert len(keys) <= 1, system
    assert len(s.effects) == len(set(s.effects))


def _alias_bomb_langs(levels: int = 10) -> str:
    """A YAML alias bomb (``levels`` x 10) as a run's langs."""
    lines = ["l0: &l0 [de, de, de, de, de, de, de, de, de, de]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines)


# Issue 21, cases 4, 10 (study files), 11 (alias bomb), 12 (long system name): each a one-line error naming the file
# and the key, at load (plan) time.
@pytest.mark.parametrize("body, message", [
    (BASE_STUDY.replace("runs:\n", "runs:\n  bad: {stage: 1, taks: en2x_question}\n"),
     r"run 'bad': unknown key 'taks'; did you mean 'task'\?"),
    (BASE_STUDY.replace("runs:\n", "runs:\n  bad: {stage: 1, init: final}\n"),
     r"run 'bad': init='final': a stage-1 run always starts from the base model"),
    (BASE_STUDY.replace("systems:", "sytems:"), r"unknown key 'sytems'; did you mean 'systems'\?"),
    ("", r"declares no systems and no analysis"),
    ("size: tiny\n", r"declares no systems and no analysis"),
    (BASE_STUDY.replace("runs:\n", "runs:\n  s1: {stage: 1, task: en2x_question}\n"),
     r"line 5: duplicate key 's1' \(first on line 4\)"),
    (BASE_STUDY + "systems: {X: base}\n", r"line 7: duplicate key 'systems' \(first on line 6\)"),
    (BASE_STUDY.replace("systems: {Base: base, Final: final}", "systems: {Base: base, Base: final}"),
     r"duplicate key 'Base'"),
    ("size: tiny\nruns: [a, b]\nsystems: {Base: base}\n", r"runs: expected a mapping, got \['a', 'b'\]"),
    ("size: tiny\nsystems: [Base]\n", r"systems: expected a mapping, got \['Base'\]"),
    (BASE_STUDY + "groups: [main]\n", r"groups: expected a mapping, got \['main'\]"),
    (BASE_STUDY.replace("benchmarks: [mgsm]", "benchmarks: 5"), r"benchmarks: expected a name or a list of names, got 5"),
    (BASE_STUDY + "analysis:\n  systems: {Base: base}\n  effects: 5\n", r"analysis.effects: expected a list, got 5"),
    (BASE_STUDY + "analysis:\n  systems: {Base: base}\n  efects: []\n", r"unknown key 'analysis.efects'; did you mean 'effects'\?"),
    (BASE_STUDY.replace("{Base: base, Final: final}", "{5: base}"), r"systems: the name 5 must be a string"),
    (BASE_STUDY.replace("init: s1", "init: 5"), r"run 'final': init: expected a string, got 5"),
    (BASE_STUDY.replace("langs: [de, fr]", "langs: 5"), r"run 's1': langs: expected a name or a list of names, got 5"),
    (BASE_STUDY.replace("{Base: base, Final: final}", "{" + "A" * 300 + ": base}"),
     r"system 'A{40}'\.\.\. \(300 characters\): a display name is 1 to 80"),
    (BASE_STUDY.replace("Final: final", "a/b: final"), r"system 'a/b': a display name"),
    (BASE_STUDY + "groups: {main: [Base, Fnal]}\n", r"group 'main' names unknown system 'Fnal'; did you mean 'Final'\?"),
    (BASE_STUDY.replace("{Base: base, Final: final}", "{Base: base, Final: fnal}"),
     r"system 'Final' names unknown run 'fnal'; did you mean 'final'\?"),
    (BASE_STUDY + "analysis:\n  systems: {Base: base}\n  effects: [[Base, Base]]\n", r"compares a system with itself"),
    (BASE_STUDY.replace("runs:\n", "runs:\n  bad: {stage: 1, stage2_data: [gsm8k]}\n"), r"stage2_data is a stage-2 key"),
    (BASE_STUDY + "analysis:\n  systems: {Base: base, S1: s1}\n  effects:\n    - {compare: [Base, S1], tests: t, not_show: n}\n",
     r"unknown key 'analysis.effects.0.not_show'; did you mean 'not_shown'\?"),
    (BASE_STUDY + "analysis:\n  systems: {Base: base, S1: s1}\n  effects:\n    - {compare: [Base, S1], tests: t}\n",
     r"analysis.effects.0.not_shown: missing"),
    (BASE_STUDY + "analysis:\n  systems: {Base: base, S1: s1}\n  effects:\n    - {compare: [Base, S1], tests: ' ', not_shown: n}\n",
     r"\['Base', 'S1'\]: 'tests' is empty"),
    (BASE_STUDY + "analysis:\n  systems: {Base: base, S1: s1}\n  effects:\n    - {compare: [Base], tests: t, not_shown: n}\n",
     r"is not a pair \[a, b\] of analysis systems"),

    (BASE_STUDY.replace("size: tiny\n", "size: tiny\n" + _alias_bomb_langs() + "\n").replace("langs: [de, fr]", "langs: *l9"),
     r"expands to more than 100000 YAML nodes"),
])
def test_study_file_mistakes_are_one_line_errors(params_copy, body, message):
    write_study(params_copy, body)
    with pytest.raises(ConfigError, match=message) as e:
        studies.load("x")
    assert str(e.value).startswith(str(params_copy / "study-x.yaml")) and "\n" not in str(e.value)


def test_every_shipped_study_passes_the_schema():
    for name, size in (("tiny", None), ("offline", None), ("paper", "7b"), ("paper", "13b")):
        s = studies.load(name, size=size)
        assert s.systems and all(set(m) <= set(s.systems) for m in s.groups.values()), name


def test_only_a_name_that_is_an_accuracy_and_an_analysis_system_means_both():
    """The offline study's "Stage 1: En->X questions" is an accuracy system (the ablation's stage 2) and an analysis
    system (three stage-1 seeds): `--only` with that name trained the ablation only, and the seeds' analyses waited
    for runs the plan never trained."""
    s = studies.load("offline")
    name = "Stage 1: En->X questions"
    assert name in s.systems and name in s.analyses
    assert studies.order(s, [name]) == ["s1-en2x_question", "ablation-en2x_question", "s1-en2x_question-seed1",
                                        "s1-en2x_question-seed2", "s1-en2x_question-seed3"]


def test_an_effect_declares_what_it_tests_and_what_it_does_not_show(params_copy):
    write_study(params_copy, BASE_STUDY + "analysis:\n  systems: {Base: base, S1: s1}\n  effects:\n"
                "    - compare: [Base, S1]\n      tests: >-\n        whether stage 1\n        translates\n"
                "      not_shown: accuracy\n    - [S1, Base]\n")
    s = studies.load("x")
    assert s.effects == [("Base", "S1"), ("S1", "Base")]
    assert s.effect_notes == {("Base", "S1"): {"tests": "whether stage 1 translates", "not_shown": "accuracy"}}


def test_every_declared_effect_of_the_shipped_studies_says_what_it_tests_and_does_not_show():
    for name in ("tiny", "offline"):
        s = studies.load(name)
        assert s.effects and set(s.effect_notes) == set(s.effects), name
