"""Issue 21, locks that cover what they protect (docs/reliability.md): retraining a run while it is evaluated or
analysed fails naming the reader instead of pulling the run from under it (case 1); lock files and folders linked
outside runs/ are refused and their targets left intact (case 7); the final model follows the umask (case 9)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from qalign_lib.analysis import pipeline
from qalign_lib.core import config, layout, locks
from qalign_lib.core.errors import ConfigError, RunError
from qalign_lib.evaluation import evaluator
from qalign_lib.train import stages, training
from tests.core.test_locks import shared_holder
from tests.helpers import ROOT, held_lock, mode, one_line_error

TRY_EXCLUSIVE = """
import sys
from pathlib import Path
from qalign_lib.core import locks
from qalign_lib.core.errors import RunError
try:
    with locks.lock(Path(sys.argv[1]), "run x (retraining)"):
        print("took it")
except RunError as e:
    print("refused:", e)
"""


def retrain_attempt(path) -> str:
    """What another process that wants to retrain the run (the exclusive lock ``path``) gets: 'took it' or
    'refused: <message>'."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", TRY_EXCLUSIVE, str(path)], capture_output=True, text=True, env=env,
                          timeout=120).stdout.strip()


def finished_run(name: str) -> layout.RunDir:
    run = layout.run("tiny", name)
    run.model.mkdir(parents=True)
    (run.model / "config.json").write_text("{}")
    run.run_json.write_text('{"fingerprint": "f"}')
    run.done_marker.write_text("f\n")
    assert run.is_done()
    return run


class Stop(Exception):
    pass


@pytest.mark.timeout(300)
def test_evaluating_a_run_holds_it_shared_so_retraining_it_fails_naming_the_evaluation(synthetic_data, tiny_model,
                                                                                        monkeypatch):
    run = finished_run("monoreason")
    seen = []

    def evaluating(*a, **k):  # the evaluation's work: meanwhile, another process tries to retrain the run
        seen.append(retrain_attempt(run.lock_file))
        raise Stop

    monkeypatch.setattr(evaluator, "_evaluate", evaluating)
    with pytest.raises(Stop):
        evaluator.evaluate(config.resolve("tiny", model=tiny_model, eval_limit=1), run="monoreason",
                           benchmarks="mgsm", langs="en")
    assert len(seen) == 1 and seen[0].startswith("refused: run x (retraining) is in use by another process "
                                                 f"(PID {os.getpid()} on "), seen
    assert retrain_attempt(run.lock_file) == "took it"  # released when the evaluation ends


@pytest.mark.timeout(300)
def test_analysing_a_run_holds_it_shared(synthetic_data, tiny_model, monkeypatch):
    run = finished_run("monoreason")
    seen = []

    def representing(*a, **k):
        seen.append(retrain_attempt(run.lock_file))
        raise Stop

    monkeypatch.setattr(pipeline, "representation_complete", representing)
    with pytest.raises(Stop):
        pipeline.analyze(config.resolve("tiny", model=tiny_model), run="monoreason")
    assert len(seen) == 1 and seen[0].startswith("refused:") and f"(PID {os.getpid()} on " in seen[0], seen


@pytest.mark.timeout(300)
def test_retraining_a_run_that_is_evaluated_fails_and_leaves_the_run_in_place(synthetic_data, tiny_model):
    run = finished_run("monoreason")
    reader = shared_holder(run.lock_file)  # an evaluation of monoreason in another process
    try:
        cfg = config.resolve("tiny", model=tiny_model, stage1_limit=2, report_to="none", lr=2e-3)
        with pytest.raises(RunError) as e:
            stages.train(cfg, "monoreason", ["gsm8kinstruct"], "en", "base", 2)
        assert f"run monoreason is in use by another process (PID {reader.pid} on " in str(e.value), str(e.value)
    finally:
        reader.kill()
        reader.wait()
    assert run.is_done() and run.run_json.read_text() == '{"fingerprint": "f"}'
    assert [p.name for p in run.path.parent.iterdir() if ".replaced-" in p.name] == []  # not moved aside


@pytest.mark.timeout(300)
def test_evaluating_a_run_that_is_being_retrained_fails_before_writing(synthetic_data, tiny_model, monkeypatch):
    run = finished_run("monoreason")
    monkeypatch.setattr(evaluator, "_load", lambda *a, **k: pytest.fail("a model was loaded"))
    with held_lock(run.lock_file) as trainer:  # stage 2 retraining monoreason in another process
        with pytest.raises(RunError) as e:
            evaluator.evaluate(config.resolve("tiny", model=tiny_model, eval_limit=1), run="monoreason",
                               benchmarks="mgsm", langs="en")
        assert f"run monoreason is in use by another process (PID {trainer.pid} on " in str(e.value), str(e.value)
    assert not run.eval.path.exists()


@pytest.mark.timeout(300)
def test_an_eval_lock_linked_outside_runs_is_refused_and_its_target_left_intact(synthetic_data, tiny_model, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setattr(evaluator, "_load", lambda *a, **k: pytest.fail("a model was loaded"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=1)
    root = evaluator.target(cfg, run="base")
    root.path.mkdir(parents=True)
    root.lock_file.symlink_to(victim)
    with pytest.raises(RunError, match="symbolic link"):
        evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    assert victim.read_text() == "precious\n" and sorted(p.name for p in root.path.iterdir()) == [".lock"]


@pytest.mark.timeout(300)
def test_a_base_folder_linked_outside_runs_is_not_written_through(synthetic_data, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluator, "_load", lambda *a, **k: pytest.fail("a model was loaded"))
    outside = tmp_path / "outside"
    outside.mkdir()
    layout.size_root("tiny").mkdir(parents=True)
    (layout.size_root("tiny") / "base").symlink_to(outside, target_is_directory=True)
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=1)
    with pytest.raises(ConfigError, match="resolves outside"):
        evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    with pytest.raises(ConfigError, match="resolves outside"):
        pipeline.analyze(cfg, run="base")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("umask,want", [(0o022, 0o644), (0o002, 0o664)])
def test_the_final_model_follows_the_umask(tiny_model, umask, want):
    from transformers import AutoTokenizer

    run = layout.run("tiny", "shared")
    shutil.copytree(tiny_model, run.model_tmp)
    os.chmod(run.model_tmp / "model.safetensors", 0o600)  # as safetensors writes it
    old = os.umask(umask)
    try:
        training.publish_model(run, AutoTokenizer.from_pretrained(tiny_model))
    finally:
        os.umask(old)
    assert not run.model_tmp.exists()
    assert mode(run.model / "model.safetensors") == want and mode(run.model / "config.json") == want
    assert mode(run.model / "tokenizer.json") == want



@pytest.mark.timeout(300)
@pytest.mark.parametrize("what", ["translation", "representations"])
def test_an_analysis_out_folder_in_use_is_refused_naming_the_holder(synthetic_data, tiny_model, tmp_path, capsys,
                                                                    what):
    from qalign_lib.tools.cli import main

    out = tmp_path / "tr"
    lock = (layout.TranslationDir(out) if what == "translation" else layout.RepresentationDir(out)).lock_file
    with held_lock(lock) as other:  # another `qalign analyze ... --out tr` at work
        extra = ["--max-new-tokens", "4", "--engine", "hf"] if what == "translation" else []
        assert main(["analyze", what, "--model", tiny_model, "--langs", "de", "--limit", "2", *extra,
                     "--out", str(out)]) == 1
        message = one_line_error(capsys.readouterr().err)
    assert f"--out {out}" in message and f"in use by another process (PID {other.pid} on " in message, message
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written beside it


@pytest.mark.timeout(300)
@pytest.mark.parametrize("step", ["evaluate", "analyze"])
def test_a_run_retrained_between_finding_and_holding_it_is_not_read(synthetic_data, tiny_model, monkeypatch, step):
    run = finished_run("monoreason")
    module = evaluator if step == "evaluate" else pipeline
    found = module.target

    def target_then_retrained(*a, **k):  # a retraining moved the run aside right after it was found
        root = found(*a, **k)
        run.done_marker.unlink()
        return root

    monkeypatch.setattr(module, "target", target_then_retrained)
    monkeypatch.setattr(evaluator, "_evaluate", lambda *a, **k: pytest.fail("evaluated a run that is not finished"))
    monkeypatch.setattr(pipeline, "representation_complete", lambda *a, **k: pytest.fail("analysed an unfinished run"))
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=1)
    with pytest.raises(RunError, match="run 'monoreason' .* is not finished"):
        if step == "evaluate":
            evaluator.evaluate(cfg, run="monoreason", benchmarks="mgsm", langs="en")
        else:
            pipeline.analyze(cfg, run="monoreason")


@pytest.mark.timeout(300)
def test_stage2_holds_its_init_run_shared_so_retraining_the_init_fails_naming_it(synthetic_data, tiny_model,
                                                                                  monkeypatch):
    init = finished_run("s1-x2en_question")
    seen = []

    def preparing(*a, **k):  # stage 2 reads its init's model: meanwhile, another process tries to retrain the init
        seen.append(retrain_attempt(init.lock_file))
        raise Stop

    monkeypatch.setattr(training, "prepare", preparing)
    cfg = config.resolve("tiny", model=tiny_model, stage2_limit=2, report_to="none")
    with pytest.raises(Stop):
        stages.stage2(cfg, "s1-x2en_question", "gsm8kinstruct", "en", name="qalign")
    assert len(seen) == 1 and seen[0].startswith("refused: run x (retraining) is in use by another process "
                                                 f"(PID {os.getpid()} on "), seen
    assert retrain_attempt(init.lock_file) == "took it"  # released when stage 2 ends


@pytest.mark.timeout(300)
def test_stage2_refuses_an_init_run_that_is_being_retrained_naming_the_trainer_before_reading_it(
        synthetic_data, tiny_model, monkeypatch):
    init = finished_run("s1-x2en_question")
    monkeypatch.setattr(training, "plan", lambda *a, **k: pytest.fail("the init run was read"))
    monkeypatch.setattr(training, "prepare", lambda *a, **k: pytest.fail("stage 2 was prepared"))
    cfg = config.resolve("tiny", model=tiny_model, stage2_limit=2, report_to="none")
    with held_lock(init.lock_file) as trainer:  # stage 1 retraining s1-x2en_question in another process
        with pytest.raises(RunError) as e:
            stages.stage2(cfg, "s1-x2en_question", "gsm8kinstruct", "en", name="qalign")
    assert str(e.value).startswith("run s1-x2en_question (the init of run qalign) is in use by another process "
                                   f"(PID {trainer.pid} on "), str(e.value)
    assert not layout.run("tiny", "qalign").path.exists()


@pytest.mark.timeout(300)
def test_stage2_refuses_an_init_run_moved_aside_before_it_was_held(synthetic_data, tiny_model, monkeypatch):
    init = finished_run("s1-x2en_question")
    take = locks.lock

    def retrained_first(path, what, shared=False):  # a retraining moved the init aside just before it was held
        if shared:
            init.done_marker.unlink()
        return take(path, what, shared)

    monkeypatch.setattr(locks, "lock", retrained_first)
    monkeypatch.setattr(training, "prepare", lambda *a, **k: pytest.fail("stage 2 was prepared"))
    cfg = config.resolve("tiny", model=tiny_model, stage2_limit=2, report_to="none")
    with pytest.raises(RunError, match="run 's1-x2en_question' .* is not finished"):
        stages.stage2(cfg, "s1-x2en_question", "gsm8kinstruct", "en", name="qalign")
