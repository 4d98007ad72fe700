"""The study runner (qalign_lib.study.runner): the plan decides as the stages do, skips what missing data stops,
runs analyses after training; a study holds its size's lock, and a kernel that dies is a study error."""
from __future__ import annotations

import papermill as pm
import pytest

from qalign_lib.core import layout
from qalign_lib.core.errors import StudyError
from qalign_lib.study import runner, studies
from qalign_lib.train import stages
from tests.helpers import BASE_STUDY, cli, held_lock, one_line_error, write_study
from tests.synthetic import make_data_dir


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
    assert s.runs["sft"].stage2_data == ["gsm8kinstruct"] and s.runs["sft"].langs == ["en"]
    # the released checkpoints behind the paper's numbers are rows of the study, evaluated by Hub id
    assert steps["MetaMath-7B-V1.0 (released)"].params["model"] == "meta-math/MetaMath-7B-V1.0"
    assert "MetaMath-7B-V1.0 (released)" in s.groups["main"] and "MetaMath-7B-V1.0 (released)" in s.groups["released"]
    assert steps["s1-x2en_question"].status == "skip" and "gsm8kinstruct_question [bn]" in steps["s1-x2en_question"].reason
    assert steps["qalign-mixed"].reason == "depends on qalign-gsm8kinstruct, which is skipped"
    assert steps["MonoReason"].status == "skip" and steps["Base"].status == "todo"
    assert steps["multireason"].status == "skip" and "gsm8kinstruct [bn]" in steps["multireason"].reason
    assert steps["s1-flores_x2en"].status == "todo" and steps["report"].status == "todo"
    assert steps["MonoReason"].reason == "its run monoreason is skipped"


@pytest.mark.train
def test_plan_follows_what_the_stages_trained(synthetic_data, tiny_model):
    """The planner decides exactly as the stages do: a run finished with the same inputs is done; changed inputs
    make it, and everything downstream of it, todo again."""
    small = dict(model=tiny_model, stage1_limit=2, batch_size=8, per_device_batch_size=8, report_to="none")
    s = studies.load("tiny", **small)
    steps = {st.name: st for st in runner.plan(s)}
    assert [steps[n].status for n in ("s1-x2en_question", "monoreason", "qalign-monoreason")] == ["todo"] * 3
    assert steps["qalign-monoreason"].reason.startswith("after s1-x2en_question")
    run = s.runs["s1-x2en_question"]
    stages.stage1(s.cfg, run.task, run.langs, name=run.name)
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


# ----------------------------------------------------------------------------------------------------------------
# Analyses, locks, dead kernels, missing benchmark data


def test_plan_has_analyze_steps_after_training(params_copy, synthetic_data):
    write_study(params_copy, BASE_STUDY)
    steps = runner.plan(studies.load("x"))
    analyze = [st for st in steps if st.kind == "analyze"]
    assert [(st.name, st.params, st.status) for st in analyze] == [
        ("Base", {"size": "tiny", "run": "base"}, "todo"), ("Stage 1: s1", {"size": "tiny", "run": "s1"}, "todo")]
    assert analyze[1].reason == "after training s1"
    assert [st.kind for st in steps][-1] == "report" and steps[-1].status == "todo"


@pytest.mark.timeout(300)
def test_study_holds_the_size_lock(tiny_params, capsys, monkeypatch):
    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **k: pytest.fail("a notebook ran while another study holds the lock"))
    with held_lock(layout.study_lock("tiny")) as holder:
        rc, err = cli(["study", "--study", "tiny", "--no-report"], capsys)
        assert rc == 1 and str(holder.pid) in one_line_error(err)


def test_dead_kernel_during_study_is_a_study_error(tmp_path, monkeypatch):
    from nbclient.exceptions import DeadKernelError

    def dead(*a, **k):
        raise DeadKernelError("Kernel died")

    monkeypatch.setattr(pm, "execute_notebook", dead)
    step = runner.Step("train", "s1-x2en_question", "stage1", {"size": "tiny", "run_name": "s1-x2en_question"}, "todo")
    with pytest.raises(StudyError) as e:
        runner.execute(step, tmp_path / "notebooks", 1)
    message = str(e.value)
    assert "the kernel died (out of memory?)" in message and "rerun" in message and "s1-x2en_question" in message


def test_dry_run_without_benchmark_data_skips_evaluation_and_report(tiny_params, tmp_path, monkeypatch, capsys):
    data = make_data_dir(tmp_path / "data", drop=["mgsm/*.jsonl", "msvamp/*.jsonl"])
    monkeypatch.setenv("QALIGN_DATA_DIR", str(data))
    steps = runner.plan(studies.load("tiny"))
    evaluate = [st for st in steps if st.kind == "evaluate"]
    assert {st.name for st in evaluate} == {"Base", "MonoReason", "QAlign+MonoReason"}
    for st in evaluate:
        assert st.status == "skip" and "mgsm" in st.reason, (st.name, st.status, st.reason)
    report = [st for st in steps if st.kind == "report"]
    assert [st.status for st in report] == ["skip"] and "benchmark" in report[0].reason, report
    assert all(st.status == "todo" for st in steps if st.kind == "train")  # training data is all there
    rc, _ = cli(["study", "--study", "tiny", "--dry-run"], capsys)
    assert rc == 0


# ----------------------------------------------------------------------------------------------------------------
# Per-run overrides and analyses over seeds

OVERRIDE_STUDY = BASE_STUDY.replace("systems:", """  s1-seed1: {stage: 1, task: x2en_question, langs: [de, fr], stage1_seed: 1}
  s1-seed2: {stage: 1, task: x2en_question, langs: [de, fr], stage1_seed: 2}
  s1-full: {stage: 1, task: x2en_question_shuffled, langs: [de, fr], lora_r: null, lr: 1.0e-4, stage1_limit: 3}
  final-full: {stage: 2, init: s1-full, stage2_data: [gsm8k], lora_r: null}
systems:""") + """analysis:
  systems: {Base: base, Seeds: [s1-seed1, s1-seed2], Full: [s1-full]}
  effects: [[Base, Seeds], [Seeds, Full]]
"""


def test_plan_passes_run_overrides_and_analyses_each_seed(params_copy, synthetic_data):
    write_study(params_copy, OVERRIDE_STUDY)
    steps = runner.plan(studies.load("x"))
    train = {st.name: st.params for st in steps if st.kind == "train"}
    assert train["s1"] == {"size": "tiny", "run_name": "s1", "task": "x2en_question", "langs": "de,fr"}
    assert train["s1-seed1"] == {**train["s1"], "run_name": "s1-seed1", "stage1_seed": 1}
    assert train["s1-full"] == {"size": "tiny", "run_name": "s1-full", "task": "x2en_question_shuffled", "langs": "de,fr",
                                "lora_r": "null", "lr": 1.0e-4, "stage1_limit": 3}  # None spelled out: full fine-tuning
    assert train["final-full"] == {"size": "tiny", "run_name": "final-full", "init": "s1-full", "stage2_data": "gsm8k",
                                   "langs": "en", "lora_r": "null"}
    analyze = [(st.name, st.params, st.status, st.reason) for st in steps if st.kind == "analyze"]
    assert analyze[0][:3] == ("Base", {"size": "tiny", "run": "base"}, "todo")  # the plan says why (issue 21)
    assert analyze[0][3].endswith("/settings.json: missing (not computed, or interrupted)")
    assert analyze[1:] == [("Seeds [s1-seed1]", {"size": "tiny", "run": "s1-seed1"}, "todo", "after training s1-seed1"),
                           ("Seeds [s1-seed2]", {"size": "tiny", "run": "s1-seed2"}, "todo", "after training s1-seed2"),
                           ("Full", {"size": "tiny", "run": "s1-full"}, "todo", "after training s1-full")]
    only = runner.plan(studies.load("x"), only=["Seeds"], report=False)
    assert [(st.kind, st.name) for st in only] == [("train", "s1-seed1"), ("train", "s1-seed2"),
                                                   ("analyze", "Seeds [s1-seed1]"), ("analyze", "Seeds [s1-seed2]")]


@pytest.mark.slow  # builds every run's examples from the real data (about a minute)
def test_offline_study_dry_run_plan(real_data):
    s = studies.load("offline")
    steps = runner.plan(s)
    analyze = [st.name for st in steps if st.kind == "analyze"]
    assert "Stage 1: X->En questions [s1-x2en_question-seed3]" in analyze and "Base" in analyze
    assert len(analyze) == sum(len(refs) for refs in s.analyses.values()) == 19  # base + 6 variants x 3 seeds
    train = {st.name: st for st in steps if st.kind == "train"}
    assert train["s1-flores_x2en-matched-seed2"].params["stage1_match_tokens"] == "x2en_question"
    assert train["s1-x2en_response"].status == "skip"  # multilingual answers are missing offline


@pytest.mark.train
def test_a_changed_override_retrains_the_run(params_copy, synthetic_data, tiny_model):
    """An override is part of the run's fingerprint: the planner and the stage agree that a run trained with
    stage1_seed 1 is done under 1 and changed under 2."""
    small = dict(model=tiny_model, stage1_limit=2, batch_size=8, per_device_batch_size=8, report_to="none")
    write_study(params_copy, BASE_STUDY.replace("langs: [de, fr]}", "langs: [de, fr], stage1_seed: 1}"))
    s = studies.load("x", **small)
    run = s.runs["s1"]
    stages.stage1(run.config(s.cfg), run.task, run.langs, name=run.name)
    assert {st.name: st.status for st in runner.plan(s)}["s1"] == "done"
    write_study(params_copy, BASE_STUDY.replace("langs: [de, fr]}", "langs: [de, fr], stage1_seed: 2}"))
    steps = {st.name: st for st in runner.plan(studies.load("x", **small))}
    assert steps["s1"].status == "todo" and steps["s1"].reason == "inputs changed since it was trained"
    assert steps["final"].reason.startswith("after s1")


def test_an_unchanged_report_is_not_rebuilt_and_a_changed_result_rebuilds_it(params_copy, synthetic_data, tmp_path,
                                                                                 monkeypatch):
    """A second `qalign study` with nothing changed finds the report done (its stamp holds the digest of what it was
    made from); a result file that changes, or a study file that changes, makes it todo again."""
    monkeypatch.setenv("QALIGN_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("QALIGN_FIGURES_DIR", str(tmp_path / "figures"))
    write_study(params_copy, "size: tiny\nbenchmarks: [mgsm]\nsystems: {Base: base}\n")
    monkeypatch.setattr(runner.evaluator, "incomplete", lambda *a, **k: None)
    monkeypatch.setattr(runner.pipeline, "incomplete", lambda *a, **k: None)
    result = layout.size_root("tiny") / "base" / "eval" / "mgsm" / "metrics.json"
    result.parent.mkdir(parents=True)
    result.write_text("{}")
    ran = []

    def fake_execute(step, out_dir, index):
        ran.append(step.kind)
        readme = layout.report_dir("tiny", "x") / "README.md"
        readme.parent.mkdir(parents=True, exist_ok=True)
        readme.write_text("report")
        return out_dir / "nb.ipynb"

    monkeypatch.setattr(runner, "execute", fake_execute)
    study = studies.load("x")
    assert runner.plan(study)[-1].status == "todo"  # never made
    assert runner._run(study, runner.plan(study)) == 0 and ran == ["report"]
    again = runner.plan(studies.load("x"))[-1]
    assert (again.status, again.reason) == ("done", "made from the same results, study, size and code")
    result.write_text('{"changed": 1}')
    assert runner.plan(studies.load("x"))[-1].status == "todo"  # a result changed: rebuilt
    runner._run(study, runner.plan(study))
    assert runner.plan(studies.load("x"))[-1].status == "done"
    write_study(params_copy, "size: tiny\nbenchmarks: [mgsm]\nsystems: {Base: base}\ncaption: another\n")
    assert runner.plan(studies.load("x"))[-1].status == "todo"  # the study file changed


def _notebook_writer(monkeypatch, full_after: int):
    """papermill writing its output notebook (iorw.LocalHandler.write opens it for writing at every save) on a disk
    that fills up after ``full_after`` saves; returns a fake ``execute_notebook`` that saves three times."""
    import errno

    import nbformat
    from papermill import iorw

    saves = []
    write = iorw.LocalHandler.write

    def writing(self, buf, path):
        saves.append(path)
        if len(saves) > full_after:
            open(path, "w").close()  # truncated, then nothing fits
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, buf, path)

    def execute(src, out, **k):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
        for _ in range(3):  # as papermill saves: at the start, after each cell, at the end
            iorw.write_ipynb(nb, out)

    monkeypatch.setattr(iorw.LocalHandler, "write", writing)
    monkeypatch.setattr(pm, "execute_notebook", execute)
    return saves


@pytest.mark.parametrize("full_after", [0, 1])
def test_full_disk_writing_an_executed_notebook_names_it_and_keeps_the_previous_one(tmp_path, monkeypatch, full_after):
    step = runner.Step("train", "s1-x2en_question", "stage1", {"size": "tiny", "run_name": "s1-x2en_question"}, "todo")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    out = notebooks / "01-train-s1-x2en_question.ipynb"
    out.write_text("the previous run's executed notebook")
    _notebook_writer(monkeypatch, full_after)
    with pytest.raises(StudyError) as e:
        runner.execute(step, notebooks, 1)
    assert str(e.value) == (f"train s1-x2en_question: no space left on device while writing its executed notebook "
                            f"{out}; free space (`df -h {notebooks}`), then rerun `qalign study`: it resumes from what "
                            "is finished")
    assert sorted(p.name for p in notebooks.iterdir()) == [out.name]  # no empty or partial notebook beside it
    assert out.read_text() == "the previous run's executed notebook"


def test_an_executed_notebook_is_written_whole_under_its_name(tmp_path, monkeypatch):
    import nbformat

    step = runner.Step("train", "s1-x2en_question", "stage1", {"size": "tiny", "run_name": "s1-x2en_question"}, "todo")
    saves = _notebook_writer(monkeypatch, full_after=3)
    out = runner.execute(step, tmp_path / "notebooks", 1)
    assert out == tmp_path / "notebooks" / "01-train-s1-x2en_question.ipynb"
    assert set(saves) == {str(out.with_name(".01-train-s1-x2en_question.partial.ipynb"))}  # never `out` half-written
    assert nbformat.read(out, as_version=4).cells[0].source == "1 + 1"
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_a_fifo_as_the_study_lock_is_a_one_line_error_naming_it(tiny_params, capsys, monkeypatch):
    import os
    import stat

    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **k: pytest.fail("a notebook ran without the study lock"))
    lock = layout.study_lock("tiny")
    lock.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(lock)
    rc, err = cli(["study", "--study", "tiny", "--no-report"], capsys)
    assert rc == 1 and one_line_error(err) == (f"qalign: error: `qalign study` for size tiny: its lock file {lock} is "
                                               "not a regular file (a FIFO, a socket or a device); remove it, then rerun")
    assert stat.S_ISFIFO(os.lstat(lock).st_mode)


def test_a_300_character_run_name_is_refused_when_the_study_is_planned(params_copy, synthetic_data, capsys,
                                                                      monkeypatch):
    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **k: pytest.fail("a notebook ran"))
    long = "s" * 300
    write_study(params_copy, BASE_STUDY.replace("s1:", f"{long}:").replace("init: s1", f"init: {long}"))
    rc, err = cli(["study", "--study", "x", "--dry-run"], capsys)
    assert rc == 1 and one_line_error(err) == (f"qalign: error: {params_copy / 'study-x.yaml'}: run name={'s' * 40!r}... "
                                               "(300 characters): a run name is at most 128 characters (it becomes a "
                                               "folder name); choose a shorter one")


def test_an_interrupted_or_partial_report_is_planned_again_with_the_reason(params_copy, synthetic_data, monkeypatch):
    """Issue 21 case 6: a report folder with its INCOMPLETE.md (killed with -9 or still being written), a stamp that
    does not list the report's files (from before), or a file of the report missing or changed: the report step is
    todo and the plan says why."""
    import json

    from qalign_lib.core import reportdir

    write_study(params_copy, "size: tiny\nbenchmarks: [mgsm]\nsystems: {Base: base}\n")
    monkeypatch.setattr(runner.evaluator, "incomplete", lambda *a, **k: None)
    monkeypatch.setattr(runner.pipeline, "incomplete", lambda *a, **k: None)
    out = layout.report_dir("tiny", "x")
    stamp = layout.report_stamp("tiny", "x")

    def fake_execute(step, out_dir, index):
        with reportdir.writing(out, "it"):
            (out / "table2_mgsm.csv").write_text("1\n")
            (out / "README.md").write_text("report")
        return out_dir / "nb.ipynb"

    monkeypatch.setattr(runner, "execute", fake_execute)
    study = studies.load("x")
    assert runner.plan(study)[-1].reason == f"the report in {out} has no index README.md"
    runner._run(study, runner.plan(study))
    assert runner.plan(study)[-1].status == "done"
    assert sorted(json.loads(stamp.read_text())["files"]) == ["README.md", "table2_mgsm.csv"]

    (out / "table2_mgsm.csv").unlink()
    assert runner.plan(study)[-1].reason == f"{out / 'table2_mgsm.csv'} is missing"
    runner._run(study, runner.plan(study))
    assert runner.plan(study)[-1].status == "done"

    (out / "INCOMPLETE.md").write_text("This report is being written, or was interrupted, since 2026-01-02 03:04:05 "
                                       "UTC by PID 4242 on node7: its files ...")
    step = runner.plan(study)[-1]
    assert (step.status, step.reason) == ("todo", f"the report in {out} is being written or was interrupted "
                                          f"({out / 'INCOMPLETE.md'}: since 2026-01-02 03:04:05 UTC by PID 4242 on "
                                          "node7); its files may mix two versions")
    runner._run(study, runner.plan(study))
    assert runner.plan(study)[-1].status == "done" and not (out / "INCOMPLETE.md").exists()

    stamp.write_text(json.dumps({"inputs": runner.report_inputs(study)}))  # a stamp from before files were listed
    assert runner.plan(study)[-1].reason == f"its stamp {stamp} does not list the report's files"
    stamp.unlink()
    assert runner.plan(study)[-1].reason == f"not made by `qalign study` yet (no {stamp})"
