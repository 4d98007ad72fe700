"""Reliability and security: bad names and values are refused before any work, shared state is locked, nothing that
is not ours is replaced, and every fault a user can cause is one clear message naming the file or parameter.

One test per case of the reliability issue (see docs/reliability.md for the table of faults, what the user sees and
what is guaranteed). Faults that the OS would only produce for a non-root user or on a special filesystem (a
read-only filesystem, a file without read permission) are simulated in-process where the tests run as root, so that
they run everywhere; the device node of the ``/dev/full`` case is a private copy (mknod) so that a regression can
never replace the machine's own ``/dev/full``.
"""
from __future__ import annotations

import builtins
import errno
import io
import json
import logging
import os
import re
import shutil
import stat
from pathlib import Path

import papermill as pm
import pytest

from qalign_lib.core import config, files, layout, locks
from qalign_lib.core.errors import ConfigError, QAlignError, ResultsError, RunError, StudyError
from qalign_lib.evaluation import evaluator
from qalign_lib.models import engines, generation
from qalign_lib.study import runner, studies
from qalign_lib.train import stages, training
from tests.helpers import ROOT, cli, device_node, held_lock, mode, nothing_under, one_line_error, within
from tests.synthetic import make_data_dir


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def build_argv(out, *extra) -> list[str]:
    return ["data", "build", "--task", "x2en_question", "--langs", "de", "--limit", "2", "--out", str(out), *extra]


def deny(monkeypatch, where: Path, code: int, access: str) -> None:
    """Make the OS refuse ``access`` ("read" or "write") to ``where`` and everything below it with error ``code``,
    as a read-only filesystem (EROFS) or a missing read permission (EACCES) does. Simulated at the OS-call level
    (open, mkdir, rename) for this path only: as root, permissions stop nothing, and a real read-only filesystem
    needs a mount."""
    where_s = os.path.realpath(where)
    real_open, real_os_open, real_mkdir = io.open, os.open, os.mkdir
    real_replace, real_rename = os.replace, os.rename

    def hit(p) -> bool:
        if isinstance(p, int):
            return False
        try:
            p = os.path.realpath(os.fsdecode(p))
        except TypeError:
            return False
        return p == where_s or p.startswith(where_s + os.sep)

    def refuse(p):
        raise OSError(code, os.strerror(code), os.fsdecode(p))

    def _open(file, mode="r", *args, **kwargs):
        if hit(file) and (access == "read" or any(c in mode for c in "wax+")):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def _os_open(path, flags, *args, **kwargs):
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        if kwargs.get("dir_fd") is None and hit(path) and (access == "read" or writing):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def _mkdir(path, *args, **kwargs):
        if access == "write" and kwargs.get("dir_fd") is None and hit(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def _move(real):
        def move(src, dst, *args, **kwargs):
            if access == "write" and (hit(src) or hit(dst)):
                refuse(dst)
            return real(src, dst, *args, **kwargs)
        return move

    monkeypatch.setattr(io, "open", _open)
    monkeypatch.setattr(builtins, "open", _open)
    monkeypatch.setattr(os, "open", _os_open)
    monkeypatch.setattr(os, "mkdir", _mkdir)
    monkeypatch.setattr(os, "replace", _move(real_replace))
    monkeypatch.setattr(os, "rename", _move(real_rename))


def eval_cfg(tiny_model, **kw):
    base = dict(model=tiny_model, eval_limit=2, max_new_tokens={"mgsm": 4, "msvamp": 4}, eval_batch_size=4)
    return config.resolve("tiny", **{**base, **kw})


def no_model(monkeypatch):
    """Loading a model is an error: the checks under test come before any model is loaded."""
    monkeypatch.setattr(evaluator, "_load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a model was loaded")))


# ----------------------------------------------------------------------------------------------------------------
# Security: names and paths


def test_run_name_with_traversal_is_refused_and_the_victim_untouched(synthetic_data, tiny_model, tmp_path):
    victim = tmp_path / "victim"  # runs/tiny/../../victim
    (victim / "model").mkdir(parents=True)
    (victim / "model" / "weights.bin").write_bytes(b"precious")
    cfg = config.resolve("tiny", model=tiny_model, stage1_limit=2, report_to="none")
    with pytest.raises(ConfigError, match="victim"):
        stages.stage1(cfg, "x2en_question", "de", name="../../victim")
    assert sorted(p.relative_to(victim).as_posix() for p in victim.rglob("*")) == ["model", "model/weights.bin"]
    assert (victim / "model" / "weights.bin").read_bytes() == b"precious"
    assert nothing_under(layout.runs_dir())


def test_absolute_run_name_is_refused(synthetic_data, tiny_model, tmp_path):
    target = tmp_path / "elsewhere"
    cfg = config.resolve("tiny", model=tiny_model, stage1_limit=2, report_to="none")
    with pytest.raises(ConfigError, match="elsewhere"):
        stages.stage1(cfg, "x2en_question", "de", name=str(target))
    assert not target.exists() and nothing_under(layout.runs_dir())


def test_base_is_a_reserved_run_name(synthetic_data, tiny_model):
    cfg = config.resolve("tiny", model=tiny_model, stage1_limit=2, report_to="none")
    with pytest.raises(ConfigError, match="reserved"):
        stages.stage1(cfg, "x2en_question", "de", name="base")
    assert nothing_under(layout.runs_dir())


def test_evaluate_run_with_traversal_is_refused(synthetic_data, tiny_model, tmp_path, monkeypatch):
    no_model(monkeypatch)
    with pytest.raises(ConfigError, match="victim"):
        evaluator.evaluate(eval_cfg(tiny_model), run="../../victim", benchmarks="mgsm", langs="en")
    assert not (tmp_path / "victim").exists() and nothing_under(layout.runs_dir())


# ----------------------------------------------------------------------------------------------------------------
# Security: never replace what is not a regular file of ours


def test_atomic_write_refuses_a_directory(tmp_path):
    target = tmp_path / "adir"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(QAlignError) as e:
        with files.atomic_write(target) as f:
            f.write("x")
    assert type(e.value).__name__ == "OutputError" and str(target) in str(e.value)
    assert (target / "inside").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name != "adir"]  # no temporary file left behind


def test_atomic_write_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def write():
        with files.atomic_write(fifo) as f:
            f.write("x\n")

    with pytest.raises(QAlignError) as e:
        within(20, write, fifo)
    assert type(e.value).__name__ == "OutputError" and str(fifo) in str(e.value)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_atomic_write_refuses_a_device_node(tmp_path):
    node = device_node(tmp_path)
    with pytest.raises(QAlignError) as e:
        with files.atomic_write(node) as f:
            f.write("x\n")
    assert type(e.value).__name__ == "OutputError" and str(node) in str(e.value)
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_atomic_write_writes_through_a_symlink(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old\n")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with files.atomic_write(link) as f:
        f.write("new\n")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new\n"


def test_atomic_write_empty_path_is_an_output_error(tmp_path):
    with pytest.raises(QAlignError) as e:
        with files.atomic_write("") as f:
            f.write("x")
    assert type(e.value).__name__ == "OutputError"
    assert sorted(tmp_path.iterdir()) == []  # nothing written into the working directory


def test_atomic_write_new_file_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        files.write_json(tmp_path / "a.json", {"a": 1})
        os.umask(0o027)
        files.write_jsonl(tmp_path / "b.jsonl", [{"a": 1}])
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.json") == 0o644 and mode(tmp_path / "b.jsonl") == 0o640


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path, umask022):
    path = tmp_path / "metrics.json"
    for m in (0o664, 0o600):
        path.write_text("{}\n")
        path.chmod(m)
        files.write_json(path, {"m": m})
        assert mode(path) == m and json.loads(path.read_text()) == {"m": m}


def test_run_files_are_readable_by_the_group_as_the_umask_says(synthetic_data, tiny_model, umask022):
    cfg = config.resolve("tiny", model=tiny_model, stage1_limit=2, report_to="none")
    out = training.prepare(cfg, "shared", ["x2en_question"], "de", "base", 1)
    run = layout.RunDir(out)
    assert mode(run.run_json) == 0o644 and mode(run.train_jsonl) == 0o644
    root = layout.base_eval("tiny", tiny_model)
    files.write_json(root.metrics, {})
    files.write_json(root.settings("mgsm"), {})
    assert mode(root.metrics) == 0o644 and mode(root.settings("mgsm")) == 0o644


def test_repaired_generations_file_keeps_its_mode(tmp_path):
    path = tmp_path / "en.jsonl"
    path.write_text(json.dumps({"lang": "en", "id": 0, "response": "5"}) + '\n{"lang": "en", "id": 1, "resp')
    path.chmod(0o644)
    old = os.umask(0o077)  # a colleague's umask: the repaired file keeps the mode it had
    try:
        assert generation.done_ids(path) == {0}
    finally:
        os.umask(old)
    assert mode(path) == 0o644
    assert path.read_text() == json.dumps({"lang": "en", "id": 0, "response": "5"}) + "\n"


def test_figures_save_follows_the_same_rules(tmp_path, umask022):
    new = files.save_figure(training.loss_curve([]), tmp_path / "new.png")
    assert mode(new) == 0o644
    real = tmp_path / "real.png"
    real.write_bytes(b"old")
    real.chmod(0o664)
    link = tmp_path / "link.png"
    link.symlink_to(real)
    files.save_figure(training.loss_curve([]), link)
    assert link.is_symlink() and real.read_bytes().startswith(b"\x89PNG") and mode(real) == 0o664
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(QAlignError) as e:
        files.save_figure(training.loss_curve([]), folder)
    assert type(e.value).__name__ == "OutputError" and str(folder) in str(e.value) and folder.is_dir()


def test_cli_out_dev_full_is_refused_and_the_device_kept(synthetic_data, tmp_path, capsys):
    node = device_node(tmp_path)
    rc, err = cli(build_argv(node), capsys)
    assert rc == 1 and str(node) in one_line_error(err)
    assert stat.S_ISCHR(os.lstat(node).st_mode) and stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_cli_out_symlink_is_written_through(synthetic_data, tmp_path, capsys):
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    rc, _ = cli(build_argv(link), capsys)
    assert rc == 0 and link.is_symlink()
    assert [json.loads(line)["lang"] for line in real.read_text().splitlines()] == ["de", "de"]


def test_cli_out_fifo_is_refused(synthetic_data, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rc, err = within(60, lambda: cli(build_argv(fifo), capsys), fifo)
    assert rc == 1 and str(fifo) in one_line_error(err)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_cli_out_empty_is_refused(synthetic_data, tmp_path, capsys):
    rc, err = cli(build_argv(""), capsys)
    assert rc == 1 and "qalign: error: " in one_line_error(err)
    assert sorted(tmp_path.iterdir()) == []


def test_cli_out_directory_is_one_line(synthetic_data, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    rc, err = cli(build_argv(folder), capsys)
    assert rc == 1 and str(folder) in one_line_error(err) and folder.is_dir() and not any(folder.iterdir())


def test_cli_out_on_a_read_only_filesystem_is_one_line(synthetic_data, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    deny(monkeypatch, ro, errno.EROFS, "write")
    rc, err = cli(build_argv(ro / "x.jsonl"), capsys)
    assert rc == 1 and "x.jsonl" in one_line_error(err)
    assert not any(ro.iterdir())


# ----------------------------------------------------------------------------------------------------------------
# Concurrent runs: one writer per run, per eval root, per study; appends never duplicate an id

# (changed inputs and `qalign study`: tests/test_study.py::test_plan_follows_what_the_stages_trained and
# tests/test_notebooks.py::test_study_chain_and_report_through_papermill)


@pytest.mark.timeout(120)
def test_lock_is_exclusive_names_the_holder_pid_and_is_released_by_kill_9(tmp_path):
    path = tmp_path / "shared" / ".lock"
    with held_lock(path) as holder:
        with pytest.raises(RunError) as e:
            with locks.lock(path, "a second writer"):
                pytest.fail("took a lock that another process holds")
        assert str(holder.pid) in str(e.value)
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait()
    with locks.lock(path, "after the holder died"):
        pass


@pytest.mark.timeout(180)
def test_training_holds_the_run_lock(synthetic_data, tiny_model):
    cfg = config.resolve("tiny", model=tiny_model, stage1_limit=2, batch_size=4, per_device_batch_size=4,
                         report_to="none")
    run = layout.run("tiny", "x")
    with held_lock(run.lock_file) as holder:
        with pytest.raises(RunError) as e:
            stages.stage1(cfg, "x2en_question", "de", name="x")
        assert str(holder.pid) in str(e.value)
    assert not run.train_log.exists() and not run.model.exists() and not run.done_marker.exists()


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


@pytest.mark.timeout(300)
def test_study_holds_the_size_lock(tiny_params, capsys, monkeypatch):
    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **k: pytest.fail("a notebook ran while another study holds the lock"))
    with held_lock(layout.study_lock("tiny")) as holder:
        rc, err = cli(["study", "--study", "tiny", "--no-report"], capsys)
        assert rc == 1 and str(holder.pid) in one_line_error(err)


def test_generation_appends_skip_ids_already_present(tmp_path, monkeypatch):
    folder = tmp_path / "mgsm"
    folder.mkdir()
    first = {"lang": "en", "id": 0, "response": "first", "new_tokens": 1}
    (folder / "en.jsonl").write_text(json.dumps(first) + "\n")  # another process wrote id 0 meanwhile

    def fake_generate(model, tokenizer, prompts, *a, **k):
        yield [(i, f"second {i}", 1) for i in range(len(prompts))]

    monkeypatch.setattr(generation, "generate", fake_generate)
    items = [{"id": 0, "lang": "en", "prompt": "p0"}, {"id": 1, "lang": "en", "prompt": "p1"}]
    generation.generate_to_files(engines.HF(None, None), items, folder, max_new_tokens=4, batch_size=8)
    rows = [json.loads(line) for line in (folder / "en.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1] and rows[0] == first


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


# ----------------------------------------------------------------------------------------------------------------
# Zero and negative values, empty names: refused with the key's name before loading data or a model


@pytest.mark.parametrize("key, value", [("eval_limit", 0), ("epochs", -1), ("batch_size", 0), ("eval_batch_size", 0)],
                         ids=["eval_limit=0", "epochs=-1", "batch_size=0", "eval_batch_size=0"])
def test_out_of_range_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"{key}={value}\b.*out of range"):
        config.resolve("tiny", **{key: value})
    with pytest.raises(ConfigError, match=rf"{key}="):  # the strings papermill passes too
        config.resolve("tiny", **{key: str(value)})


@pytest.mark.parametrize("limit", ["0", "-1"], ids=["limit=0", "limit=-1"])
def test_cli_data_build_limit_must_be_positive(synthetic_data, tmp_path, capsys, limit):
    out = tmp_path / "x.jsonl"
    rc, err = cli(["data", "build", "--task", "x2en_question", "--langs", "de", "--limit", limit, "--out", str(out)], capsys)
    assert rc in (1, 2) and "--limit" in err and "Traceback" not in err, err
    assert not out.exists()


def test_evaluate_empty_model_is_a_config_error(synthetic_data, tiny_model, monkeypatch):
    no_model(monkeypatch)
    cfg = eval_cfg(tiny_model)
    with pytest.raises(ConfigError, match="model"):
        evaluator.evaluate(cfg, model="", benchmarks="mgsm", langs="en")
    assert nothing_under(layout.runs_dir())  # not the base model's eval root


def test_cli_data_build_monolingual_task_checks_langs(synthetic_data, tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    rc, err = cli(["data", "build", "--task", "gsm8k", "--langs", "xx", "--out", str(out)], capsys)
    assert rc == 1 and "xx" in one_line_error(err) and not out.exists()


def test_every_notebook_checks_its_parameters_first():
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        first = code[1].source  # the first code cell after the parameters cell
        assert "check_parameters()" in first, f"{path.name}: its first code cell does not check the parameters"
        before = first.split("check_parameters()")[0]
        assert "resolve(" not in before and "load(" not in before, f"{path.name}: parameters checked after use"


# ----------------------------------------------------------------------------------------------------------------
# Tracebacks from the CLI: one line naming the file, exit 1


@pytest.mark.timeout(300)
def test_cli_runs_folder_read_only_is_one_line(tiny_params, capsys, monkeypatch):
    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **k: pytest.fail("a notebook ran although runs/ is read-only"))
    runs = layout.runs_dir()
    deny(monkeypatch, runs, errno.EROFS, "write")
    rc, err = cli(["study", "--study", "tiny", "--no-report"], capsys)
    assert rc == 1 and str(runs) in one_line_error(err)


def test_cli_unreadable_data_file_is_one_line(synthetic_data, tmp_path, capsys, monkeypatch):
    data = shutil.copytree(synthetic_data, tmp_path / "data")
    source = data / "gsm8kinstruct_question" / "de.jsonl"
    deny(monkeypatch, source, errno.EACCES, "read")
    out = tmp_path / "x.jsonl"
    rc, err = cli(build_argv(out, "--data-dir", str(data)), capsys)
    assert rc == 1 and str(source) in one_line_error(err) and not out.exists()


def test_cli_unreadable_generations_file_is_one_line(synthetic_data, tmp_path, capsys, monkeypatch):
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"lang": "en", "id": 0, "response": "5"}) + "\n")
    deny(monkeypatch, gen, errno.EACCES, "read")
    rc, err = cli(["score", "--benchmark", "mgsm", "--generations", str(gen)], capsys)
    assert rc == 1 and str(gen) in one_line_error(err)


def test_cli_unknown_size_is_one_line(synthetic_data, capsys):
    for argv in (["data", "check", "--study", "tiny", "--size", "bench"],
                 ["study", "--study", "tiny", "--size", "bench", "--dry-run"]):
        rc, err = cli(argv, capsys)
        assert rc == 1 and "unknown size 'bench'" in one_line_error(err), argv


def score_one(tmp_path, capsys, line: str | bytes, benchmark="mgsm", data_dir=None) -> tuple[Path, int, str]:
    gen = tmp_path / "gen.jsonl"
    gen.write_bytes(line if isinstance(line, bytes) else line.encode())
    rc, err = cli(["score", "--benchmark", benchmark, "--generations", str(gen)]
                  + (["--data-dir", str(data_dir)] if data_dir else []), capsys)
    return gen, rc, err


def test_cli_response_that_is_a_number_names_the_file_and_row(synthetic_data, tmp_path, capsys):
    gen, rc, err = score_one(tmp_path, capsys, json.dumps({"lang": "en", "id": 0, "response": 5}) + "\n")
    message = one_line_error(err)
    assert rc == 1 and str(gen) in message and ("row 1" in message or f"{gen}:1" in message) and "response" in message


def test_cli_id_that_is_a_list_names_the_file_and_row(synthetic_data, tmp_path, capsys):
    gen, rc, err = score_one(tmp_path, capsys, json.dumps({"lang": "en", "id": [0], "response": "5"}) + "\n")
    message = one_line_error(err)
    assert rc == 1 and str(gen) in message and ("row 1" in message or f"{gen}:1" in message)


def test_cli_id_true_is_not_question_1(synthetic_data, tmp_path, capsys):
    gen, rc, err = score_one(tmp_path, capsys, json.dumps({"lang": "en", "id": True, "response": "8"}) + "\n")
    assert rc == 1 and str(gen) in one_line_error(err)  # question 1's gold is 8: scored, it would be correct


def test_cli_deeply_nested_json_line_names_the_file(synthetic_data, tmp_path, capsys):
    gen, rc, err = score_one(tmp_path, capsys, "[" * 100_000 + "]" * 100_000 + "\n")
    assert rc == 1 and str(gen) in one_line_error(err)


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


# ----------------------------------------------------------------------------------------------------------------
# Messages that name the right file


def test_cli_non_utf8_generations_name_the_file(synthetic_data, tmp_path, capsys):
    gen, rc, err = score_one(tmp_path, capsys, b'{"lang": "en", "id": 0, "response": "\xff\xfe 5"}\n')
    assert rc == 1 and str(gen) in one_line_error(err)


def test_corrupt_metrics_json_names_the_file(tmp_path):
    root = layout.base_eval("tiny", "m")
    root.metrics.parent.mkdir(parents=True)
    for text in ("", "{", "[1, 2]"):
        root.metrics.write_text(text)
        with pytest.raises(ResultsError) as e:
            root.read_metrics()
        assert str(root.metrics) in str(e.value)


def test_empty_settings_json_names_the_file(synthetic_data, tiny_model, monkeypatch):
    no_model(monkeypatch)
    cfg = eval_cfg(tiny_model)
    root = evaluator.target(cfg, run="base")
    root.settings("mgsm").parent.mkdir(parents=True)
    root.settings("mgsm").write_text("")
    with pytest.raises(ResultsError) as e:
        evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    assert str(root.settings("mgsm")) in str(e.value)


def test_cli_empty_benchmark_file_is_blamed_not_the_generations(synthetic_data, tmp_path, capsys):
    data = shutil.copytree(synthetic_data, tmp_path / "data")
    bench = (data / "mgsm" / "de.jsonl").resolve()
    bench.write_text("")
    gen, rc, err = score_one(tmp_path, capsys, json.dumps({"lang": "de", "id": 0, "response": "5"}) + "\n", data_dir=data)
    assert rc == 1 and str(bench) in one_line_error(err)


def test_cli_data_path_that_is_a_directory_says_so(synthetic_data, tmp_path, capsys):
    data = shutil.copytree(synthetic_data, tmp_path / "data")
    bench = (data / "mgsm" / "de.jsonl").resolve()
    bench.unlink()
    bench.mkdir()
    gen, rc, err = score_one(tmp_path, capsys, json.dumps({"lang": "de", "id": 0, "response": "5"}) + "\n", data_dir=data)
    message = one_line_error(err)
    assert rc == 1 and str(bench) in message and "directory" in message and "download" not in message


def test_cli_data_path_symlink_loop_says_so(synthetic_data, tmp_path, capsys):
    data = shutil.copytree(synthetic_data, tmp_path / "data")
    bench = data.resolve() / "mgsm" / "de.jsonl"
    bench.unlink()
    bench.symlink_to("de.jsonl")  # points to itself
    gen, rc, err = score_one(tmp_path, capsys, json.dumps({"lang": "de", "id": 0, "response": "5"}) + "\n", data_dir=data)
    message = one_line_error(err)
    assert rc == 1 and "de.jsonl" in message and ("link" in message or "loop" in message) and "download" not in message


@pytest.mark.parametrize("fault", [lambda: OSError(errno.ENOSPC, "No space left on device"),
                                   lambda: RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter "
                                                        "failed writing file data/3: file write failed; unexpected pos "
                                                        "974528 vs 974416")],
                         ids=["ENOSPC", "unexpected-pos"])
def test_full_disk_during_checkpoint_save_is_a_run_error_that_resumes(synthetic_data, tiny_model, monkeypatch, fault):
    from trl import SFTTrainer

    cfg = config.resolve("tiny", model=tiny_model, stage1_limit=4, batch_size=4, per_device_batch_size=4, epochs=1,
                         save_steps=1, report_to="none", max_length=512)
    original = SFTTrainer.__dict__.get("_save_checkpoint")

    def full(self, *a, **k):
        raise fault()

    monkeypatch.setattr(SFTTrainer, "_save_checkpoint", full)
    with pytest.raises(RunError) as e:
        stages.stage1(cfg, "x2en_question", "de", name="x")
    run = layout.run("tiny", "x")
    message = str(e.value)
    assert "no space" in message.lower() and str(run.path) in message and "resum" in message.lower(), message
    assert not run.is_done()
    monkeypatch.setattr(SFTTrainer, "_save_checkpoint", original)
    stages.stage1(cfg, "x2en_question", "de", name="x")  # once space is freed: rerun
    assert run.is_done()


def test_missing_de_question_file_has_no_bn_th_hint(tmp_path, capsys):
    partial = make_data_dir(tmp_path / "partial", drop=["gsm8kinstruct_question/de.jsonl"])
    out = tmp_path / "x.jsonl"
    rc, err = cli(build_argv(out, "--data-dir", str(partial)), capsys)
    message = one_line_error(err)
    assert rc == 1 and "de.jsonl" in message
    assert not re.search(r"\bbn\b", message) and not re.search(r"\bth\b", message), message


def test_missing_bn_question_file_has_the_bn_th_hint(tmp_path, capsys):
    partial = make_data_dir(tmp_path / "partial", drop=["gsm8kinstruct_question/bn.jsonl"])
    out = tmp_path / "x.jsonl"
    rc, err = cli(["data", "build", "--task", "x2en_question", "--langs", "bn", "--out", str(out),
                   "--data-dir", str(partial)], capsys)
    message = one_line_error(err)
    assert rc == 1 and "bn.jsonl" in message and re.search(r"\bth\b", message), message


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
# Faults that already held (kept as regression tests): an interrupted or full-disk evaluation resumes, nothing lost
# (kill -9 mid-training: tests/test_distributed.py::test_kill_9_mid_run_resumes_from_the_last_checkpoint; a crash
# mid-training: tests/test_training.py::test_resume_after_interruption_equals_uninterrupted_training; a torn line:
# tests/test_evaluation.py::test_evaluate_end_to_end_and_resume)


def _gen_rows(path: Path) -> dict:
    return {r["id"]: r["response"] for r in map(json.loads, path.read_text().splitlines())}


def _resume_generates_only_what_is_missing(cfg, before: dict, path: Path, monkeypatch) -> None:
    calls = []
    real = generation.generate_to_files
    monkeypatch.setattr(evaluator, "generate_to_files",
                        lambda e, items, *a, **k: calls.append([it["id"] for it in items]) or real(e, items, *a, **k))
    metrics = evaluator.evaluate(cfg, run="base", benchmarks="mgsm", langs="en")
    assert metrics["mgsm"]["reference"]["n"] == {"en": 3}
    assert sorted(i for c in calls for i in c) == sorted(set(range(3)) - set(before))
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
# Notebooks (slow): bad parameters stop the first code cell with a ConfigError, before any work


def run_nb(name, tmp_path, **parameters):
    out = tmp_path / f"{name}.out.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), parameters=parameters,
                        kernel_name="python3", progress_bar=False, cwd=str(tmp_path))


def _victim(tmp_path) -> Path:
    victim = tmp_path / "victim"  # runs/tiny/../../victim
    (victim / "model").mkdir(parents=True)
    (victim / "model" / "model.safetensors").write_bytes(b"precious")
    return victim


STAGE1_BAD = {  # id: (parameters, what the message must contain)
    "run_name=../../victim": ({"run_name": "../../victim"}, ["run_name", "victim"]),
    "run_name=absolute": ({"run_name": "{tmp}/elsewhere"}, ["run_name", "elsewhere"]),
    "batch_size=0": ({"batch_size": 0}, ["batch_size=0", "out of range"]),
    "epochs=-1": ({"epochs": -1}, ["epochs=-1", "out of range"]),
    "epoch=1 (misspelled)": ({"epoch": 1}, ["'epoch'", "epochs"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(STAGE1_BAD))
def test_stage1_notebook_refuses_bad_parameters_before_any_work(tiny_params, tmp_path, case):
    parameters, expected = STAGE1_BAD[case]
    parameters = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in parameters.items()}
    victim = _victim(tmp_path)
    with pytest.raises(pm.PapermillExecutionError) as e:
        run_nb("stage1", tmp_path, size="tiny", **parameters)
    assert e.value.ename == "ConfigError", (e.value.ename, e.value.evalue)
    assert all(x in e.value.evalue for x in expected), e.value.evalue
    assert nothing_under(layout.runs_dir()) and not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in victim.rglob("*")) == ["model", "model.safetensors"]
    assert (victim / "model" / "model.safetensors").read_bytes() == b"precious"


EVALUATE_BAD = {
    "eval_limt=1 (misspelled)": ({"eval_limt": 1}, [r"'eval_limt'", r"'eval_limit'"]),
    "limit=abc (no such parameter)": ({"limit": "abc"}, [r"(?<!\w)limit(?!\w)"]),
    "eval_limit=abc": ({"eval_limit": "abc"}, [r"eval_limit='abc'"]),
    "eval_limit=0": ({"eval_limit": 0}, [r"eval_limit=0\b", "out of range"]),
    "eval_batch_size=0": ({"eval_batch_size": 0}, [r"eval_batch_size=0\b", "out of range"]),
    "model=''": ({"model": ""}, ["model"]),
    "benchmarks=gsm8k": ({"benchmarks": "gsm8k"}, ["gsm8k"]),
    "run=../../victim": ({"run": "../../victim"}, [r"\.\./\.\./victim"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(EVALUATE_BAD))
def test_evaluate_notebook_refuses_bad_parameters_before_any_work(tiny_params, tmp_path, case):
    parameters, expected = EVALUATE_BAD[case]
    victim = _victim(tmp_path)
    with pytest.raises(pm.PapermillExecutionError) as e:
        run_nb("evaluate", tmp_path, size="tiny", **parameters)
    assert e.value.ename == "ConfigError", (e.value.ename, e.value.evalue)
    assert all(re.search(x, e.value.evalue) for x in expected), e.value.evalue
    assert nothing_under(layout.runs_dir()) and not (victim / "eval").exists()
