"""Evaluation end to end on a random tiny LLaMA (qalign_lib.evaluation.evaluator): generation, scoring, resume
(after a torn line, a full disk, Ctrl-C), settings moved aside when they change, engines, the eval root's lock,
duplicate generations, and bad names and values refused before any model is loaded."""
from __future__ import annotations

import errno
import json
import logging
import os
import re
from pathlib import Path

import pytest

from qalign_lib.core import config, layout
from qalign_lib.core.errors import ConfigError, ModelError, QAlignError, ResultsError, RunError
from qalign_lib.evaluation import evaluator
from qalign_lib.models import engines, generation
from tests.helpers import FakeEngine, held_lock, nothing_under


def new_tokens(n: int) -> dict:
    return {"mgsm": n, "msvamp": n}


def test_evaluate_end_to_end_and_resume(synthetic_data, tiny_model, monkeypatch):
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=3, max_new_tokens=new_tokens(6), eval_batch_size=4)
    assert not evaluator.is_complete(cfg, run="base", benchmarks=["mgsm", "msvamp"], langs="de,en,te")
    metrics = evaluator.evaluate(cfg, run="base", benchmarks=["mgsm", "msvamp"], langs="de,en,te")
    target = evaluator.target(cfg, run="base")
    assert target.path == layout.eval_root("tiny", tiny_model, "base").path and target.model == tiny_model
    assert target.metrics.is_file() and json.loads(target.metrics.read_text()) == metrics
    assert target.read_settings("mgsm") == evaluator.settings(cfg, "mgsm", tiny_model)
    assert evaluator.is_complete(cfg, run="base", benchmarks=["mgsm", "msvamp"], langs="de,en,te")
    assert not evaluator.is_complete(cfg.replace(eval_limit=4), run="base", benchmarks=["mgsm"], langs="de,en,te")
    assert not evaluator.is_complete(cfg.replace(max_new_tokens=new_tokens(7)), run="base", benchmarks=["mgsm"],
                                      langs="de,en,te")
    assert evaluator.is_complete(cfg.replace(eval_batch_size=1), run="base", benchmarks=["mgsm"], langs="de,en,te")
    assert metrics["mgsm"]["reference"]["n"] == {"de": 3, "en": 3, "te": 3}
    assert metrics["msvamp"]["reference"]["n"] == {"de": 3, "en": 3}  # te is not part of mSVAMP: skipped
    for scorer in ("reference", "strict"):
        r = metrics["mgsm"][scorer]
        assert set(r["accuracy"]) == {"de", "en", "te"} and r["average_langs"] == ["de", "en"]
    rows = [json.loads(line) for line in target.generations("mgsm", "de").read_text().splitlines()]
    assert [r["id"] for r in sorted(rows, key=lambda r: r["id"])] == [0, 1, 2] and all("response" in r for r in rows)
    assert {r["id"] for r in evaluator.load_generations(target, "mgsm", ["de", "en", "sw"], limit=2)["de"]} == {0, 1}

    # resume: drop one row and tear the last line as a kill mid-write would; only the missing id is generated again
    path = target.generations("mgsm", "de")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1]) + lines[1][:10])
    calls = _spy_generation(monkeypatch)
    again = evaluator.evaluate(cfg, run="base", benchmarks=["mgsm", "msvamp"], langs="de,en,te")
    assert [[(it["lang"], it["id"]) for it in items] for items in calls] == [[("de", 1), ("de", 2)]]
    assert again["mgsm"]["reference"]["n"] == metrics["mgsm"]["reference"]["n"]
    # nothing missing: no model is even loaded
    monkeypatch.setattr(evaluator, "_load", lambda *a: (_ for _ in ()).throw(AssertionError("model loaded")))
    evaluator.evaluate(cfg, run="base", benchmarks=["mgsm"], langs="de,en,te")


def test_changed_generation_settings_move_old_generations_aside(synthetic_data, tiny_model):
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=1, max_new_tokens=new_tokens(4), eval_batch_size=4)
    evaluator.evaluate(cfg, run="base", benchmarks=["mgsm"], langs="en")
    root = evaluator.target(cfg, run="base").path
    evaluator.evaluate(cfg.replace(eval_batch_size=2), run="base", benchmarks=["mgsm"], langs="en")  # speed only
    assert not list(root.glob("mgsm.replaced-*"))
    evaluator.evaluate(cfg.replace(max_new_tokens=new_tokens(5)), run="base", benchmarks=["mgsm"], langs="en")
    aside = list(root.glob("mgsm.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "en.jsonl").is_file() and json.loads((aside[0] / "settings.json").read_text())[
        "max_new_tokens"] == 4


def test_evaluate_external_model_and_unknown_run(synthetic_data, tiny_model):
    cfg = config.resolve("tiny", eval_limit=1, max_new_tokens=new_tokens(4))
    metrics = evaluator.evaluate(cfg, model=tiny_model, benchmarks=["msvamp"], langs="en")
    assert metrics["model"] == tiny_model and metrics["size"] == "tiny" and metrics["limit"] == 1
    assert layout.eval_root("tiny", "", model=tiny_model).read_metrics() == metrics
    with pytest.raises(RunError, match="not finished"):
        evaluator.evaluate(cfg, run="never-trained")
    assert not evaluator.is_complete(cfg, run="never-trained")
    with pytest.raises(ConfigError, match="unknown benchmark"):
        evaluator.evaluate(cfg, model=tiny_model, benchmarks="gsm8k")
    with pytest.raises(ConfigError, match="langs: unknown or unsupported language code"):
        evaluator.evaluate(cfg, model=tiny_model, langs="de,xx")


def test_each_benchmark_takes_the_languages_it_has():
    cfg = config.resolve("tiny", eval_langs="de,en,te")
    assert evaluator.requested(cfg, "mgsm") == ["de", "en", "te"]
    assert evaluator.requested(cfg, "msvamp") == ["de", "en"]
    assert evaluator.requested(cfg, "msvamp", langs="te") == []


# ----------------------------------------------------------------------------------------------------------------
# Engines


def test_engine_vllm_without_vllm_stops_before_anything_is_touched(synthetic_data, tiny_model, monkeypatch):
    monkeypatch.setattr(engines, "vllm_installed", lambda: False)
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=1, engine="vllm")
    with pytest.raises(ModelError, match=r"qalign\[vllm\]"):
        evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    assert not evaluator.target(cfg, run="base").path.exists()


def test_switching_engines_moves_old_generations_aside(synthetic_data, tiny_model, monkeypatch):
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=1, max_new_tokens={"mgsm": 3}, engine="hf")
    evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    root = evaluator.target(cfg, run="base")
    monkeypatch.setattr(engines, "vllm_installed", lambda: True)  # pretend: vllm here, served by a fake engine
    monkeypatch.setattr(evaluator, "_load", lambda *a: FakeEngine())
    evaluator.evaluate(cfg.replace(engine="vllm"), run="base", benchmarks="mgsm", langs="en")
    aside = list(root.path.glob("mgsm.replaced-*"))
    assert len(aside) == 1 and json.loads((aside[0] / "settings.json").read_text())["engine"] == "hf"
    assert root.read_settings("mgsm")["engine"] == "vllm"


# ----------------------------------------------------------------------------------------------------------------
# Refused before any model is loaded; the eval root's lock; duplicate generations; resume after a full disk or Ctrl-C


def eval_cfg(tiny_model, **kw):
    base = dict(model=tiny_model, eval_limit=2, max_new_tokens={"mgsm": 4, "msvamp": 4}, eval_batch_size=4)
    return config.resolve("tiny", **{**base, **kw})


def no_model(monkeypatch):
    """Loading a model is an error: the checks under test come before any model is loaded."""
    monkeypatch.setattr(evaluator, "_load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a model was loaded")))


def test_evaluate_run_with_traversal_is_refused(synthetic_data, tiny_model, tmp_path, monkeypatch):
    no_model(monkeypatch)
    with pytest.raises(ConfigError, match="victim"):
        evaluator.evaluate(eval_cfg(tiny_model), run="../../victim", benchmarks="mgsm", langs="en")
    assert not (tmp_path / "victim").exists() and nothing_under(layout.runs_dir())


def test_evaluate_empty_model_is_a_config_error(synthetic_data, tiny_model, monkeypatch):
    no_model(monkeypatch)
    cfg = eval_cfg(tiny_model)
    with pytest.raises(ConfigError, match="model"):
        evaluator.evaluate(cfg, model="", benchmarks="mgsm", langs="en")
    assert nothing_under(layout.runs_dir())  # not the base model's eval root


def test_empty_settings_json_names_the_file(synthetic_data, tiny_model, monkeypatch):
    no_model(monkeypatch)
    cfg = eval_cfg(tiny_model)
    root = evaluator.target(cfg, run="base")
    root.settings("mgsm").parent.mkdir(parents=True)
    root.settings("mgsm").write_text("")
    with pytest.raises(ResultsError) as e:
        evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    assert str(root.settings("mgsm")) in str(e.value)


@pytest.mark.timeout(180)
def test_evaluation_holds_the_eval_root_lock(synthetic_data, tiny_model, monkeypatch):
    no_model(monkeypatch)
    cfg = eval_cfg(tiny_model)
    root = evaluator.target(cfg, run="base")
    with held_lock(root.lock_file) as holder:
        with pytest.raises(RunError) as e:
            evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
        assert str(holder.pid) in str(e.value)
    assert not root.generations("mgsm", "en").exists() and not root.metrics.exists()


def test_duplicate_identical_generations_are_read_once_with_a_warning(synthetic_data, tiny_model):
    cfg = eval_cfg(tiny_model)
    first = evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    root = evaluator.target(cfg, run="base")
    path = root.generations("mgsm", "en")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines) + lines[0])  # what two concurrent evaluations used to leave
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("qalign").addHandler(handler)
    try:
        rows = evaluator.generations(root, "mgsm", "en")
        again = evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    finally:
        logging.getLogger("qalign").removeHandler(handler)
    assert sorted(r["id"] for r in rows) == [0, 1]
    assert again["mgsm"]["reference"]["n"] == first["mgsm"]["reference"]["n"] == {"en": 2}
    assert records, "a duplicate id is kept once, with a warning"


def test_duplicate_different_generations_name_the_file_and_line(synthetic_data, tiny_model):
    cfg = eval_cfg(tiny_model)
    evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    root = evaluator.target(cfg, run="base")
    path = root.generations("mgsm", "en")
    lines = path.read_text().splitlines(keepends=True)
    row = json.loads(lines[0])
    path.write_text("".join(lines) + json.dumps({**row, "response": row["response"] + " and something else"}) + "\n")
    with pytest.raises(ResultsError) as e:
        evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    message = str(e.value)
    rest = message.replace(str(path), "FILE")  # the file, and its line 3 (as FILE:3, "line 3" or "rows 1 and 3")
    assert "FILE" in rest and ("FILE:3" in rest or re.search(r"\b(line|row)s?\b[^;]*\b3\b", rest)), message


def _spy_generation(monkeypatch) -> list:
    """The items of every generation call the evaluator makes from now on (each call's list, in order); it still
    generates."""
    calls = []
    real = generation.generate_to_files
    monkeypatch.setattr(evaluator, "generate_to_files", lambda e, items, *a, **k: calls.append(items) or real(e, items, *a, **k))
    return calls


def _gen_rows(path: Path) -> dict:
    return {r["id"]: r["response"] for r in map(json.loads, path.read_text().splitlines())}


def _resume_generates_only_what_is_missing(cfg, before: dict, path: Path, monkeypatch) -> None:
    calls = _spy_generation(monkeypatch)
    metrics = evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    assert metrics["mgsm"]["reference"]["n"] == {"en": 3}
    assert sorted(it["id"] for c in calls for it in c) == sorted(set(range(3)) - set(before))
    after = _gen_rows(path)
    assert sorted(after) == [0, 1, 2] and all(after[i] == before[i] for i in before)  # nothing lost or redone


def test_full_disk_during_evaluation_resumes_with_nothing_lost(synthetic_data, tiny_model, monkeypatch):
    cfg = eval_cfg(tiny_model, eval_limit=3, eval_batch_size=1)
    path = evaluator.target(cfg, run="base").generations("mgsm", "en")
    real_fsync, state = os.fsync, {"n": 0, "full": True}

    def fsync(fd):  # the second append to the generations file finds the disk full
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if name == str(path.resolve()):
            state["n"] += 1
            if state["full"] and state["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises((OSError, QAlignError)):
        evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    before = _gen_rows(path)
    assert 1 <= len(before) < 3
    state["full"] = False
    _resume_generates_only_what_is_missing(cfg, before, path, monkeypatch)


def test_sigint_during_evaluation_resumes_with_nothing_lost(synthetic_data, tiny_model, monkeypatch):
    cfg = eval_cfg(tiny_model, eval_limit=3, eval_batch_size=1)
    path = evaluator.target(cfg, run="base").generations("mgsm", "en")
    real = generation.generate

    def interrupted(*a, **k):  # Ctrl-C while the second batch is generated
        for k_, batch in enumerate(real(*a, **k)):
            if k_ == 1:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(generation, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    before = _gen_rows(path)
    assert len(before) == 1
    monkeypatch.setattr(generation, "generate", real)
    _resume_generates_only_what_is_missing(cfg, before, path, monkeypatch)


# ----------------------------------------------------------------------------------------------------------------
# Every result records its inputs (issue 21: cases 1, 3, 5, 10)


def _finished_run(cfg, name: str, tiny_model: str, fingerprint: str) -> layout.RunDir:
    import shutil

    run = layout.run(cfg.size, name)
    shutil.copytree(tiny_model, run.model)
    (run.path / "run.json").write_text(json.dumps({"fingerprint": fingerprint}))
    run.done_marker.write_text(fingerprint + "\n")
    return run


def _copy_data(src: Path, dst: Path, monkeypatch) -> Path:
    import shutil

    shutil.copytree(src, dst)
    monkeypatch.setenv("QALIGN_DATA_DIR", str(dst))
    return dst


def _edit_row(path: Path, ident, **fields) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        if row["id"] == ident:
            row.update(fields)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_copying_runs_keeps_evaluations_of_runs_complete(synthetic_data, tiny_model, tmp_path, monkeypatch):
    """Case 5: settings name a run relative to the runs root, so a copied runs/ is still complete."""
    import shutil

    cfg = config.resolve("tiny", model=tiny_model, eval_limit=1, max_new_tokens=new_tokens(4), eval_batch_size=4)
    _finished_run(cfg, "r1", tiny_model, "fp-1")
    evaluator.evaluate(cfg, run="r1", benchmarks=["mgsm"], langs="en")
    root = evaluator.target(cfg, run="r1")
    saved = root.read_settings("mgsm")
    assert saved["model"] == "runs:tiny/r1" and saved["model_fingerprint"] == "fp-1"
    assert str(tmp_path) not in json.dumps(saved) and str(tmp_path) not in root.metrics.read_text()
    shutil.copytree(tmp_path / "runs", tmp_path / "runs2", symlinks=True)
    monkeypatch.setenv("QALIGN_RUNS_DIR", str(tmp_path / "runs2"))
    assert evaluator.incomplete(cfg, run="r1", benchmarks=["mgsm"], langs="en") is None
    assert evaluator.is_complete(cfg, run="r1", benchmarks=["mgsm"], langs="en")


def test_a_retrained_run_is_another_model(synthetic_data, tiny_model, monkeypatch):
    """Case 1: the run's fingerprint is part of the settings: a retrained run's old answers are not its own."""
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=1, max_new_tokens=new_tokens(4), eval_batch_size=4)
    run = _finished_run(cfg, "r1", tiny_model, "fp-1")
    evaluator.evaluate(cfg, run="r1", benchmarks=["mgsm"], langs="en")
    (run.path / "run.json").write_text(json.dumps({"fingerprint": "fp-2"}))
    assert evaluator.incomplete(cfg, run="r1", benchmarks=["mgsm"], langs="en") == "mgsm: changed since: model_fingerprint"
    evaluator.evaluate(cfg, run="r1", benchmarks=["mgsm"], langs="en")
    aside = list(run.eval.path.glob("mgsm.replaced-*"))
    assert len(aside) == 1 and json.loads((aside[0] / "settings.json").read_text())["model_fingerprint"] == "fp-1"
    assert run.eval.read_settings("mgsm")["model_fingerprint"] == "fp-2"
    assert evaluator.is_complete(cfg, run="r1", benchmarks=["mgsm"], langs="en")


def test_generations_without_settings_are_not_trusted(synthetic_data, tiny_model, monkeypatch):
    """Case 1: rows appended into a retrained run's eval/ (no settings.json) are moved aside, not completed."""
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=2, max_new_tokens=new_tokens(4), eval_batch_size=4)
    evaluator.evaluate(cfg, run="base", benchmarks=["mgsm"], langs="en")
    root = evaluator.target(cfg, run="base")
    root.settings("mgsm").unlink()
    assert evaluator.incomplete(cfg, run="base", benchmarks=["mgsm"], langs="en") == "mgsm: no settings.json"
    calls = _spy_generation(monkeypatch)
    evaluator.evaluate(cfg, run="base", benchmarks=["mgsm"], langs="en")
    assert [[(it["lang"], it["id"]) for it in items] for items in calls] == [[("en", 0), ("en", 1)]]
    aside = list(root.path.glob("mgsm.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "en.jsonl").is_file() and not (aside[0] / "settings.json").exists()


def test_an_edited_question_regenerates_that_language_only(synthetic_data, tiny_model, tmp_path, monkeypatch):
    """Case 3: the settings record a hash of each language's questions; an edit is noticed and only that language's
    answers are generated again."""
    from qalign_lib.data import corpora

    data = _copy_data(synthetic_data, tmp_path / "data", monkeypatch)
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=2, max_new_tokens=new_tokens(4), eval_batch_size=4)
    evaluator.evaluate(cfg, run="base", benchmarks=["mgsm"], langs="de,en")
    root = evaluator.target(cfg, run="base")
    assert evaluator.is_complete(cfg, run="base", benchmarks=["mgsm"], langs="de,en")
    _edit_row(corpora.path_of("mgsm", "de", root=data), 0, question="Eine ganz andere Frage?")
    assert evaluator.incomplete(cfg, run="base", benchmarks=["mgsm"], langs="de,en") == "mgsm: changed since: questions"
    calls = _spy_generation(monkeypatch)
    evaluator.evaluate(cfg, run="base", benchmarks=["mgsm"], langs="de,en")
    assert [[(it["lang"], it["id"]) for it in items] for items in calls] == [[("de", 0), ("de", 1)]]
    assert [p.name.split(".replaced-")[0] for p in root.bench_dir("mgsm").glob("*.replaced-*")] == ["de.jsonl"]
    assert evaluator.is_complete(cfg, run="base", benchmarks=["mgsm"], langs="de,en")


def test_an_edited_gold_answer_rescores(synthetic_data, tiny_model, tmp_path, monkeypatch):
    """Case 3: metrics.json records a hash of the gold answers it was scored against; an edit makes it todo and
    evaluating again rescores without generating."""
    from qalign_lib.data import corpora

    data = _copy_data(synthetic_data, tmp_path / "data", monkeypatch)
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=2, max_new_tokens=new_tokens(4), eval_batch_size=4)
    evaluator.evaluate(cfg, run="base", benchmarks=["mgsm"], langs="en")
    from qalign_lib.core import benchmarks

    _edit_row(corpora.path_of("mgsm", "en", root=data), 1, **{benchmarks.get("mgsm").answer_field: "987654"})
    reason = evaluator.incomplete(cfg, run="base", benchmarks=["mgsm"], langs="en")
    assert reason == "mgsm: metrics.json was not scored from these generations settings and gold answers"
    monkeypatch.setattr(evaluator, "_load", lambda *a: (_ for _ in ()).throw(AssertionError("model loaded")))
    evaluator.evaluate(cfg, run="base", benchmarks=["mgsm"], langs="en")
    assert evaluator.is_complete(cfg, run="base", benchmarks=["mgsm"], langs="en")


def test_a_non_string_response_names_the_file_and_row(synthetic_data, tiny_model):
    """Case 10: a generation row whose response is not a string is a one-line error, not a traceback later."""
    cfg = config.resolve("tiny", model=tiny_model, eval_limit=2, max_new_tokens=new_tokens(4), eval_batch_size=4)
    evaluator.evaluate(cfg, run="base", benchmarks=["mgsm"], langs="en")
    root = evaluator.target(cfg, run="base")
    path = root.generations("mgsm", "en")
    _edit_row(path, 1, response=12345)
    with pytest.raises(ResultsError, match=re.escape(f"{path}: row ") + r"\d: field 'response' must be a string, got int"):
        evaluator.generations(root, "mgsm", "en")
