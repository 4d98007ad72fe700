"""The run layout (qalign_lib.layout): names, paths that stay inside the runs directory, move-aside, run.json errors."""
from __future__ import annotations

import json
import os

import pytest

from qalign_lib.core import files, layout
from qalign_lib.core.errors import ConfigError, ResultsError, RunError


@pytest.mark.parametrize("name", ["s1-x2en_question", "qalign-monoreason", "a", "run.v2", "A+B_c-1", "x" * 128,
                                  "qalign-mixed.phase1-gsm8kinstruct"])
def test_valid_run_names(name):
    assert layout.check_name(name) == name
    run = layout.run("tiny", name)
    assert run.name == name and run.path == layout.runs_dir() / "tiny" / name


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/../../x", "/abs/path", "/", "", ".hidden", "a/b", "a\\b",
                                  "x.", "with space", "tab\t", "new\nline", "x" * 129, "run.replaced-20260101-000000",
                                  "base", "models", "notebooks", None, 3])
def test_invalid_run_names_are_config_errors(name):
    with pytest.raises(ConfigError, match="run_name"):
        layout.check_name(name)
    with pytest.raises(ConfigError):
        layout.run("tiny", name)


def test_reserved_names_say_so():
    with pytest.raises(ConfigError, match=r"run_name='base' is reserved \(base, models, notebooks, reports\)"):
        layout.run("tiny", "base")
    with pytest.raises(ConfigError, match=r"run_name='reports' is reserved"):  # runs/<size>/reports/ holds report stamps
        layout.run("tiny", "reports")


@pytest.mark.parametrize("size", ["../tiny", "", ".x", "a/b", "/tmp"])
def test_bad_sizes_are_config_errors(size):
    with pytest.raises(ConfigError, match="size"):
        layout.run(size, "x")
    with pytest.raises(ConfigError, match="size"):
        layout.report_dir(size)


def test_every_path_is_inside_the_runs_directory():
    root = layout.runs_dir().resolve()
    run = layout.run("tiny", "s1")
    paths = [run.path, run.model, run.model_tmp, run.run_json, run.train_jsonl, run.train_log, run.loss_png,
             run.checkpoints, run.tensorboard, run.done_marker, run.launch_log(), run.launch_log(1), run.eval.path,
             run.eval.metrics, run.eval.settings("mgsm"), run.eval.generations("mgsm", "de"), run.eval.bench_dir("msvamp"),
             layout.eval_root("tiny", "m", "base").path, layout.notebooks_dir("tiny"), layout.size_root("7b")]
    for model in ("Wenhao97/QAlign-MetaMathQA-7B", "../../../etc", "/abs/path/to/model", "~/x", "a/../../b"):
        paths.append(layout.eval_root("tiny", "", model=model).path)
    for path in paths:
        assert path.resolve().is_relative_to(root), path
    assert run.launch_log(1) != run.launch_log(0)  # one log per machine on a shared runs/
    assert layout.eval_root("tiny", "", model="Wenhao97/QAlign-MetaMathQA-7B").path == \
        root / "tiny" / "models" / "Wenhao97_QAlign-MetaMathQA-7B" / "eval"
    assert layout.eval_root("tiny", "", model="x/y").model == "x/y"
    assert layout.eval_root("tiny", "m", "base").path == root / "tiny" / "base" / "eval"
    assert layout.report_dir("tiny") == layout.figures_dir() / "tiny"
    with pytest.raises(ConfigError, match="model="):
        layout.eval_root("tiny", "", model="///")


def test_runs_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("QALIGN_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert layout.run("7b", "x").path == (tmp_path / "elsewhere" / "7b" / "x").resolve()


def test_move_aside_keeps_both(tmp_path):
    target = layout.run("tiny", "s1").path
    target.mkdir(parents=True)
    (target / "run.json").write_text('{"fingerprint": "old"}')
    first = files.move_aside(target, "inputs changed")
    assert not target.exists() and json.loads((first / "run.json").read_text()) == {"fingerprint": "old"}
    target.mkdir()
    (target / "run.json").write_text('{"fingerprint": "new"}')
    second = files.move_aside(target, "inputs changed again")  # within the same second: a name of its own
    assert first != second and first.is_dir() and second.is_dir()
    assert json.loads((second / "run.json").read_text()) == {"fingerprint": "new"}
    assert {p.name for p in target.parent.iterdir()} == {first.name, second.name}
    assert all(p.name.startswith("s1.replaced-") for p in (first, second))
    # a file (a benchmark's generations) is moved aside the same way
    f = tmp_path / "de.jsonl"
    f.write_text("x\n")
    aside = files.move_aside(f, "settings changed")
    assert aside.read_text() == "x\n" and not f.exists()


def test_run_meta_errors_name_the_file():
    run = layout.run("tiny", "s1")
    with pytest.raises(RunError, match=r"run 's1' .* has no run.json"):
        run.meta()
    assert run.fingerprint() is None and not run.is_done()
    run.path.mkdir(parents=True)
    run.run_json.write_text('{"fingerprint": "abc", "config": {')  # torn by a crash
    with pytest.raises(ResultsError, match=rf"{run.run_json}: not valid JSON"):
        run.meta()
    with pytest.raises(ResultsError, match="run.json"):
        run.fingerprint()
    run.run_json.write_text("[1, 2]")
    with pytest.raises(ResultsError, match=rf"{run.run_json}: expected a JSON object"):
        run.meta()
    run.run_json.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ResultsError, match=rf"{run.run_json}: cannot be read"):
        run.meta()


def test_done_needs_the_marker_and_the_model():
    run = layout.run("tiny", "s1")
    run.path.mkdir(parents=True)
    run.run_json.write_text(json.dumps({"fingerprint": "abc123"}))
    assert run.fingerprint() == "abc123"
    with pytest.raises(RunError, match=r"run 's1' .* is not finished"):
        run.require_done()
    run.mark_done()
    assert run.done_marker.read_text() == "abc123\n" and not run.is_done()  # no model yet
    run.model.mkdir()
    (run.model / "config.json").write_text("{}")
    assert run.is_done() and run.require_done() is run
    assert layout.eval_root("tiny", "base-model", "s1").path == run.eval.path
    assert layout.eval_root("tiny", "base-model", "base").model == "base-model"
    assert layout.eval_root("tiny", "base-model", None, model="x/y").path == \
        layout.eval_root("tiny", "", model="x/y").path  # an explicit model: the base model does not matter
    with pytest.raises(RunError, match="not finished"):
        layout.eval_root("tiny", "base-model", "never-trained")


def test_eval_root_reads_results_files():
    root = layout.eval_root("tiny", "m", "base")
    assert root.read_metrics() is None and root.read_settings("mgsm") is None
    root.settings("mgsm").parent.mkdir(parents=True)
    root.settings("mgsm").write_text('{"model": "m"}')
    assert root.read_settings("mgsm") == {"model": "m"}
    root.metrics.write_text("{oops")
    with pytest.raises(ResultsError, match=rf"{root.metrics}: not valid JSON .* delete it and rerun"):
        root.read_metrics()


def test_paths_are_built_without_touching_the_disk():
    before = set(os.listdir(layout.runs_dir().parent)) if layout.runs_dir().parent.exists() else set()
    run = layout.run("tiny", "s1")
    _ = (run.model, run.eval.metrics, layout.eval_root("tiny", "", model="a/b").path, layout.notebooks_dir("tiny"))
    assert not layout.runs_dir().exists()
    assert (set(os.listdir(layout.runs_dir().parent)) if layout.runs_dir().parent.exists() else set()) == before


# ----------------------------------------------------------------------------------------------------------------
# Report folders and results files


def test_report_dir_of_other_studies_is_a_subfolder():
    assert layout.report_dir("tiny", "tiny") == layout.report_dir("tiny") == layout.figures_dir() / "tiny"
    assert layout.report_dir("7b", "paper") == layout.figures_dir() / "7b"
    assert layout.report_dir("tiny", "offline") == layout.figures_dir() / "tiny" / "offline"


def test_corrupt_metrics_json_names_the_file(tmp_path):
    root = layout.eval_root("tiny", "m", "base")
    root.metrics.parent.mkdir(parents=True)
    for text in ("", "{", "[1, 2]"):
        root.metrics.write_text(text)
        with pytest.raises(ResultsError) as e:
            root.read_metrics()
        assert str(root.metrics) in str(e.value)


@pytest.mark.parametrize("folder", ["base", "models", "base/eval", "base/analysis", ".locks", "notebooks", "reports"])
def test_folders_linked_outside_the_size_are_refused(folder, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    link = layout.size_root("tiny") / folder
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    calls = {"base": lambda: layout.model_home("tiny", "m", "base"),
             "models": lambda: layout.model_home("tiny", "", model="x/y"),
             "base/eval": lambda: layout.eval_root("tiny", "m", "base"),
             "base/analysis": lambda: layout.analysis_root("tiny", "m", "base"),
             ".locks": lambda: layout.study_lock("tiny"), "notebooks": lambda: layout.notebooks_dir("tiny"),
             "reports": lambda: layout.report_stamp("tiny", "offline")}
    with pytest.raises(ConfigError) as e:
        calls[folder]()
    assert "resolves outside" in str(e.value) and "refusing to write there" in str(e.value)
    if folder == ".locks":
        with pytest.raises(ConfigError, match="resolves outside"):
            layout.run("tiny", "x").lock_file
    assert list(outside.iterdir()) == []


def test_a_runs_eval_and_analysis_carry_the_runs_lock(tmp_path):
    run = layout.run("tiny", "x")
    run.model.mkdir(parents=True)
    (run.model / "config.json").write_text("{}")
    run.done_marker.write_text("f\n")
    assert layout.eval_root("tiny", "m", "x").run_lock == run.lock_file == layout.size_root("tiny") / ".locks" / "x.lock"
    assert layout.analysis_root("tiny", "m", "x").run_lock == run.lock_file
    assert run.eval.run_lock == run.analysis.run_lock == run.lock_file
    assert layout.eval_root("tiny", "m", "base").run_lock is None
    assert layout.analysis_root("tiny", "", model="x/y").run_lock is None


@pytest.mark.parametrize("length", [129, 300])
def test_a_run_name_longer_than_128_characters_says_so(length):
    with pytest.raises(ConfigError) as e:
        layout.run("tiny", "x" * length)
    assert str(e.value) == (f"run_name={'x' * 40!r}... ({length} characters): a run name is at most 128 characters (it "
                            "becomes a folder name); choose a shorter one")
    assert layout.run("tiny", "x" * 128).name == "x" * 128
