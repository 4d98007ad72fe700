"""The ``qalign`` command (qalign_lib.tools.cli): data check/build, score, config, analyze; user errors exit 1
with one line naming the file or parameter, usage errors exit 2; odd --out values (a device, a FIFO, a directory, a
read-only filesystem) are refused and what was there is kept."""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest

from qalign_lib.core import config, layout
from qalign_lib.tools.cli import main
from tests.helpers import ROOT, cli, device_node, one_line_error, within
from tests.synthetic import make_data_dir


def test_data_check_study_tiny_passes_on_the_real_snapshot(real_data, capsys):
    assert main(["data", "check", "--study", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "all present" in out and "gsm8kinstruct_question" in out


def test_data_check_fails_with_reason_on_the_real_snapshot(real_data, capsys):
    assert main(["data", "check", "--study", "paper", "--size", "7b"]) == 1
    out = capsys.readouterr().out
    assert "MISSING metamathqa [en]" in out and "MISSING gsm8kinstruct_question [bn]" in out


def test_data_check_on_synthetic_data(tmp_path, capsys):
    full = make_data_dir(tmp_path / "full")
    assert main(["data", "check", "--study", "paper", "--size", "7b", "--data-dir", str(full)]) == 0
    assert "all present" in capsys.readouterr().out
    partial = make_data_dir(tmp_path / "partial", drop=["metamathqa/metamathqa.jsonl", "gsm8kinstruct/de.jsonl"])
    assert main(["data", "check", "--study", "paper", "--size", "7b", "--data-dir", str(partial)]) == 1
    out = capsys.readouterr().out
    assert "2 file(s) missing" in out and "MISSING metamathqa [en]" in out and "MISSING gsm8kinstruct [de]" in out


def test_data_build_writes_inspectable_rows(synthetic_data, tmp_path):
    out = tmp_path / "ex.jsonl"
    assert main(["data", "build", "--task", "x2en_question", "--langs", "de,zh", "--limit", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]) == {"prompt", "completion", "lang", "id"}
    assert rows[0]["prompt"].startswith("Below is an instruction") and "from German to English." in rows[0]["prompt"]
    mixed = tmp_path / "mixed.jsonl"
    assert main(["data", "build", "--task", "x2en_question+gsm8k", "--langs", "de", "--limit", "3", "--out", str(mixed)]) == 0
    assert sorted(json.loads(line)["lang"] for line in mixed.read_text().splitlines()) == ["de"] * 3 + ["en"] * 3


def test_score_prints_one_json_object(synthetic_data, tmp_path, capsys):
    gen = tmp_path / "gen.jsonl"  # synthetic gold of id 0 is 5 in every language
    gen.write_text(json.dumps({"lang": "en", "id": 0, "response": "5"}) + "\n" + json.dumps({"lang": "sw", "id": 0, "response": "7"}) + "\n")
    assert main(["score", "--benchmark", "mgsm", "--generations", str(gen), "--scorer", "strict"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"benchmark", "scorer", "n", "accuracy", "average", "average_non_en"}
    assert result["accuracy"] == {"sw": 0.0, "en": 100.0} and result["average"] == 50.0 and result["scorer"] == "strict"


def test_user_errors_exit_1_with_one_line(synthetic_data, tmp_path, capsys):
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"lang": "en", "id": 4000, "response": "18"}) + "\n")
    assert main(["score", "--benchmark", "mgsm", "--generations", str(gen)]) == 1
    assert "id 4000 is not a mgsm en question" in one_line_error(capsys.readouterr().err)
    partial = make_data_dir(tmp_path / "partial", drop=["gsm8kinstruct_question/bn.jsonl"])
    out = tmp_path / "x.jsonl"
    assert main(["data", "build", "--task", "x2en_question", "--langs", "bn", "--out", str(out), "--data-dir", str(partial)]) == 1
    assert "missing file" in one_line_error(capsys.readouterr().err) and not out.exists()
    assert main(["data", "build", "--task", "x2en_question", "--langs", "xx", "--out", str(out)]) == 1
    assert "unknown or unsupported language code(s) xx" in one_line_error(capsys.readouterr().err)
    assert main(["data", "check", "--study", "nope"]) == 1
    assert "unknown study 'nope'" in one_line_error(capsys.readouterr().err)


def test_usage_errors_exit_2(capsys):
    for argv in (["score", "--benchmark", "gsm8k", "--generations", "x"], ["config", "--bogus"], ["nope"], []):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2, argv
    assert "invalid choice: 'gsm8k'" in capsys.readouterr().err


def test_config_prints_the_table(capsys):
    assert main(["config", "--size", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Parameters (size tiny (") and "sizes: 13b, 7b, tiny" in out
    assert "| parameter | type | default | value | affects | meaning |" in out
    for name in config.params():
        assert f"| `{name}` |" in out, name
    assert "| `model` | str | `''` | `'embedded:smollm2-135m-instruct'` | learned |" in out
    assert "| `lora_r` | int or null | `None` | `16` | learned |" in out
    assert main(["config"]) == 0  # the declared defaults, no value column
    out = capsys.readouterr().out
    assert "the declared defaults" in out and "| parameter | type | default | affects | meaning |" in out


def test_config_set_checks_and_applies_overrides(capsys):
    assert main(["config", "--size", "7b", "--set", "lr=1e-5", "eval_langs=de,zh"]) == 0
    out = capsys.readouterr().out
    assert "| `lr` | float | `2e-05` | `1e-05` |" in out and "`['de', 'zh']`" in out
    assert main(["config", "--size", "tiny", "--set", "lr=fast"]) == 1
    message = one_line_error(capsys.readouterr().err)
    assert "parameter lr='fast'" in message and "expected float" in message and "tiny.yaml" in message
    assert main(["config", "--size", "tiny", "--set", "epoch=2"]) == 1
    assert "did you mean 'epochs'?" in one_line_error(capsys.readouterr().err)
    assert main(["config", "--size", "bench"]) == 1
    assert "unknown size 'bench'" in one_line_error(capsys.readouterr().err)


def test_download_offline_is_a_clear_message(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "qalign_lib.tools.cli", "data", "download", "--out", str(tmp_path / "d"), "--datasets", "mgsm"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    # the progress bar may have drawn on stderr before; the error is the one last line
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("qalign: error: cannot download juletxara/mgsm") and "offline" in last
    assert r.stderr.count("qalign: error:") == 1 and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------------------------------------------
# analyze


def test_cli_unknown_model_and_language_without_parallel_data(synthetic_data, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["analyze", "translation", "--model", str(tmp_path / "no-such-model"), "--langs", "de",
                 "--out", out]) == 1
    assert "neither an embedded model, an existing directory nor a Hub id" in one_line_error(capsys.readouterr().err)
    assert main(["analyze", "representations", "--model", "embedded:nope", "--langs", "de", "--out", out]) == 1
    assert "unknown embedded model" in one_line_error(capsys.readouterr().err)
    assert main(["analyze", "translation", "--model", "x/y", "--benchmark", "msvamp", "--langs", "te", "--out", out]) == 1
    assert "mSVAMP has no parallel questions in te" in one_line_error(capsys.readouterr().err)
    assert main(["analyze", "representations", "--model", "x/y", "--langs", "en,de", "--out", out]) == 1
    assert "en is the reference" in one_line_error(capsys.readouterr().err)
    (tmp_path / "file").write_text("")
    assert main(["analyze", "representations", "--model", "x/y", "--out", str(tmp_path / "file")]) == 1
    assert "is not a directory" in one_line_error(capsys.readouterr().err)


def test_cli_representations_and_translation_on_the_tiny_llama(synthetic_data, tiny_model, tmp_path, capsys):
    path = tiny_model
    out = tmp_path / "rep"
    assert main(["analyze", "representations", "--model", path, "--langs", "de,zh", "--limit", "4", "--out", str(out)]) == 0
    table = pd.read_csv(layout.RepresentationDir(out).similarity)
    assert {"lang", "layer", "cosine", "retrieval_top1", "centred_cosine", "cosine_lo", "cosine_hi"} <= set(table.columns)
    assert set(table["lang"]) == {"de", "zh", "Avg"} and table["layer"].nunique() == 3  # 2 layers + embeddings
    assert ((table["cosine"] >= -1 - 1e-9) & (table["cosine"] <= 1 + 1e-9)).all()
    out = tmp_path / "tr"
    assert main(["analyze", "translation", "--model", path, "--langs", "de", "--limit", "2", "--max-new-tokens", "4",
                 "--engine", "hf", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "de.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1] and all({"source", "hypothesis", "reference"} <= set(r) for r in rows)
    metrics = json.loads(layout.TranslationDir(out).metrics.read_text())
    assert set(metrics["chrf"]) == {"de"} and set(metrics["bleu"]) == {"de"}


# ----------------------------------------------------------------------------------------------------------------
# --out: never replace what is not a regular file of ours


def build_argv(out, *extra) -> list[str]:
    return ["data", "build", "--task", "x2en_question", "--langs", "de", "--limit", "2", "--out", str(out), *extra]


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


def test_cli_out_on_a_read_only_filesystem_is_one_line(synthetic_data, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    deny(monkeypatch, ro, errno.EROFS, "write")
    rc, err = cli(build_argv(ro / "x.jsonl"), capsys)
    assert rc == 1 and "x.jsonl" in one_line_error(err)
    assert not any(ro.iterdir())


# ----------------------------------------------------------------------------------------------------------------
# Bad values and missing, unreadable or malformed files: one line naming the file or parameter, exit 1


@pytest.mark.parametrize("limit", ["0", "-1"], ids=["limit=0", "limit=-1"])
def test_cli_data_build_limit_must_be_positive(synthetic_data, tmp_path, capsys, limit):
    out = tmp_path / "x.jsonl"
    rc, err = cli(["data", "build", "--task", "x2en_question", "--langs", "de", "--limit", limit, "--out", str(out)], capsys)
    assert rc in (1, 2) and "--limit" in err and "Traceback" not in err, err
    assert not out.exists()


def test_cli_data_build_monolingual_task_checks_langs(synthetic_data, tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    rc, err = cli(["data", "build", "--task", "gsm8k", "--langs", "xx", "--out", str(out)], capsys)
    assert rc == 1 and "xx" in one_line_error(err) and not out.exists()


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


def test_cli_non_utf8_generations_name_the_file(synthetic_data, tmp_path, capsys):
    gen, rc, err = score_one(tmp_path, capsys, b'{"lang": "en", "id": 0, "response": "\xff\xfe 5"}\n')
    assert rc == 1 and str(gen) in one_line_error(err)


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


# ----------------------------------------------------------------------------------------------------------------
# issue 21: --out folders are the project's own; empty --langs; each argument's own hint; --set KEY=VALUE; Ctrl-C


def analyze_argv(what: str, model: str, out, *extra) -> list[str]:
    argv = ["analyze", what, "--model", model, "--langs", "de", "--limit", "2", "--out", str(out), *extra]
    return argv + (["--max-new-tokens", "4", "--engine", "hf"] if what == "translation" and "--max-new-tokens" not in extra
                   else [])


@pytest.mark.parametrize("what", ["translation", "representations"])
def test_cli_out_folder_of_another_tool_is_refused_untouched(synthetic_data, tiny_model, tmp_path, capsys, what):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "settings.json").write_text('{"tool": "other"}\n')
    (theirs / "metrics.json").write_text('{"bleu": 99}\n')
    rc, err = cli(analyze_argv(what, tiny_model, theirs), capsys)
    message = one_line_error(err)
    assert rc == 1 and f"--out {theirs}: is not empty and was not written by qalign" in message
    assert "choose a new or empty folder" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs"]  # not renamed aside
    assert sorted(p.name for p in theirs.iterdir()) == ["metrics.json", "settings.json"]
    assert (theirs / "settings.json").read_text() == '{"tool": "other"}\n'
    assert (theirs / "metrics.json").read_text() == '{"bleu": 99}\n'


def test_cli_out_marked_folder_moves_only_its_own_files(synthetic_data, tiny_model, tmp_path, capsys):
    out = tmp_path / "tr"
    assert main(analyze_argv("translation", tiny_model, out)) == 0
    assert json.loads((out / layout.OUT_MARKER).read_text()) == {"written_by": "qalign analyze translation"}
    (out / "notes.txt").write_text("the user's own notes")
    assert main(analyze_argv("translation", tiny_model, out, "--max-new-tokens", "3", "--engine", "hf")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tr"]  # the folder itself is never moved aside
    names = sorted(p.name for p in out.iterdir())
    assert {".lock", layout.OUT_MARKER, "de.jsonl", "settings.json", "metrics.json", "notes.txt"} <= set(names)
    assert (out / "notes.txt").read_text() == "the user's own notes"
    assert sorted(n.split(".replaced-")[0] for n in names if ".replaced-" in n) == ["de.jsonl", "metrics.json",
                                                                                    "settings.json"]
    assert json.loads((out / "settings.json").read_text())["max_new_tokens"] == 3
    capsys.readouterr()
    rc, err = cli(analyze_argv("representations", tiny_model, out), capsys)  # another analysis's folder
    assert rc == 1 and "holds the output of qalign analyze translation" in one_line_error(err)


@pytest.mark.parametrize("given", ["", "."])
def test_cli_out_empty_or_unmarked_cwd_is_one_line_and_writes_nothing(synthetic_data, tmp_path, capsys, monkeypatch,
                                                                      given):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unrelated.txt").write_text("x")
    for what in ("translation", "representations"):
        rc, err = cli(["analyze", what, "--model", str(tmp_path / "no-model"), "--out", given], capsys)
        named = f"--out {given!r}: give a folder" if not given else f"--out . ({tmp_path}): is not empty"
        assert rc == 1 and named in one_line_error(err)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated.txt"]


@pytest.mark.parametrize("langs", ["", ",", " , "])
def test_cli_empty_langs_is_one_line(synthetic_data, tmp_path, capsys, langs):
    for argv in (["analyze", "translation", "--model", "x/y", "--out", str(tmp_path / "o"), "--langs", langs],
                 ["analyze", "representations", "--model", "x/y", "--out", str(tmp_path / "o"), "--langs", langs],
                 ["data", "build", "--task", "x2en_question", "--out", str(tmp_path / "x.jsonl"), "--langs", langs]):
        rc, err = cli(argv, capsys)
        assert rc == 1 and one_line_error(err) == (f"qalign: error: --langs {langs!r} is empty; leave it out for "
                                                   f"every language or name some, e.g. de,zh"), argv
    assert list(tmp_path.iterdir()) == []


def test_cli_each_argument_has_its_own_hint(capsys):
    rc, err = cli(["analyze", "translation", "--model", "x/y", "--out", "o", "--batch-size", "0"], capsys)
    assert rc == 2 and "argument --batch-size: 0 is not >= 1 (a batch holds at least one example)" in err
    assert "--limit" not in err.splitlines()[-1]
    rc, err = cli(["analyze", "translation", "--model", "x/y", "--out", "o", "--max-new-tokens", "0"], capsys)
    assert rc == 2 and "argument --max-new-tokens: 0 is not >= 1 (at least one token is generated)" in err
    rc, err = cli(["analyze", "representations", "--model", "x/y", "--out", "o", "--limit", "0"], capsys)
    assert rc == 2 and "argument --limit: 0 is not >= 1 (leave --limit out for all examples)" in err


@pytest.mark.parametrize("size", [[], ["--size", "tiny"]], ids=["no-size", "tiny"])
def test_cli_config_set_without_equals_is_one_line(capsys, size):
    rc, err = cli(["config", *size, "--set", "lr=1e-5", "foo"], capsys)
    assert rc == 1 and one_line_error(err) == "qalign: error: --set 'foo': write each override as KEY=VALUE (e.g. lr=1e-5)"
    rc, err = cli(["config", *size, "--set", "=5"], capsys)
    assert rc == 1 and "--set '=5': write each override as KEY=VALUE" in one_line_error(err)


def test_cli_config_set_without_size_is_not_ignored(capsys):
    rc, err = cli(["config", "--set", "lr=fast"], capsys)
    assert rc == 1 and "--set lr=fast: give --size SIZE too" in one_line_error(err)
    rc, err = cli(["config", "--size", "tiny", "--set", "foo=1"], capsys)  # an unknown key: already refused
    assert rc == 1 and "unknown parameter 'foo'" in one_line_error(err)


def test_cli_ctrl_c_is_one_line_exit_130_and_releases_locks(tmp_path, capsys, monkeypatch):
    from qalign_lib.core import locks
    from qalign_lib.tools import cli as cli_module

    lock = tmp_path / ".lock"
    rows = tmp_path / "rows.jsonl"

    def interrupted(args):
        with locks.lock(lock, "a test"):
            rows.write_text('{"id": 0}\n')
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "_score", interrupted)
    try:
        rc, err = cli(["score", "--benchmark", "mgsm", "--generations", "g.jsonl"], capsys)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main as a KeyboardInterrupt (a traceback)")
    assert rc == 130 and err == ("qalign: interrupted; finished rows are kept and locks released; run the same "
                                 "command again to resume\n")
    assert rows.read_text() == '{"id": 0}\n'
    with locks.lock(lock, "after the interrupt"):
        pass
