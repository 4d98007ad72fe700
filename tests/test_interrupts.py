"""Ctrl-C (issue 21 case 10): one line on stderr, exit 130, locks released, the rows written so far kept.

The commands run as subprocesses in their own process group, which receives SIGINT as a terminal's Ctrl-C
delivers it (to the whole foreground group). The CLI's own handling of a KeyboardInterrupt is unit-tested in
tests/tools/test_cli.py (test_cli_ctrl_c_is_one_line_exit_130_and_releases_locks).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qalign_lib.core import layout, locks
from qalign_lib.tools.cli import INTERRUPTED


def interrupt_once(argv: list[str], ready, tmp_path: Path, within: float = 600, **env) -> tuple[int, str, str, dict]:
    """Start ``qalign ARGV``; once ``ready()`` returns a dict (a snapshot of what is written so far) send the process
    group SIGINT; returns (exit status, stderr before, stderr after the interrupt, the snapshot); the snapshot's
    "children" are the process ids the command had started (a notebook kernel: in a session of its own)."""
    err_path = tmp_path / "stderr.txt"
    with open(tmp_path / "stdout.txt", "w") as out, open(err_path, "w") as err:
        # SIGINT as a terminal leaves it: a test session started in the background by a non-interactive shell (as CI
        # may be) ignores SIGINT, the child would inherit that, and Python installs no KeyboardInterrupt handler
        p = subprocess.Popen([sys.executable, "-m", "qalign_lib.tools.cli", *argv], stdout=out, stderr=err,
                             start_new_session=True, env={**os.environ, **env},
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            start, snapshot = time.time(), None
            while snapshot is None:
                assert p.poll() is None, f"finished (exit {p.returncode}) before it could be interrupted: " + \
                    err_path.read_text()[-3000:]
                assert time.time() - start < within, "never got to work"
                time.sleep(0.2)
                snapshot = ready()
            mark = err_path.stat().st_size
            children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
            snapshot = {**snapshot, "children": [int(c) for c in children]}
            os.killpg(p.pid, signal.SIGINT)
            rc = p.wait(timeout=120)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    text = err_path.read_bytes()
    return rc, text[:mark].decode(errors="replace"), text[mark:].decode(errors="replace"), snapshot


def rows_so_far(folder: Path):
    """A callable: {file: its bytes} of the JSONL files in ``folder`` once one holds a whole row, else None."""
    def ready():
        found = {p: p.read_bytes() for p in sorted(folder.glob("*.jsonl"))}
        return found if any(data.endswith(b"\n") for data in found.values()) else None
    return ready


def assert_kept(snapshot: dict) -> None:
    for path, data in snapshot.items():  # rows kept (more may have been appended meanwhile)
        if path != "children":
            assert path.read_bytes().startswith(data), path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").is_file() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def assert_one_line(rc: int, before: str, after: str) -> None:
    assert rc == 130, before[-3000:] + after
    assert "Traceback" not in before + after and "KeyboardInterrupt" not in before + after, before[-3000:] + after
    # a progress bar may still redraw itself (tqdm: "\r" and no newline) between the signal and its handling: those
    # redraws are not messages; everything else printed after the interrupt must be the one line
    said = [PROGRESS.sub("", part).strip() for part in re.split(r"[\r\n]", after)]
    said = [part for part in said if part]
    assert said == [INTERRUPTED], after


PROGRESS = re.compile(r"^.*?\d+/\d+ \[[^\]]*\]")  # a tqdm bar up to its "2/108 [00:00<00:06, 16.80q/s]"


def test_progress_redraws_are_told_apart_from_messages():
    bar = "translate mgsm:   2%|▏         | 2/108 [00:00<00:06, 16.80q/s]"
    assert PROGRESS.sub("", bar) == "" and PROGRESS.sub("", INTERRUPTED) == INTERRUPTED
    assert_one_line(130, "", f"\r{bar}\r{bar}{INTERRUPTED}\n")
    with pytest.raises(AssertionError):
        assert_one_line(130, "", f"{bar}\nsomething else\n{INTERRUPTED}\n")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ctrl_c_during_a_study_is_one_line_releases_locks_and_keeps_rows(tiny_params, tmp_path, monkeypatch):
    """`qalign study` runs the evaluate notebook through papermill: Ctrl-C once the first rows are written. Three
    times, each in fresh runs/: where the kernel is when the signal comes varies, and papermill's graceful kernel
    shutdown printed the kernel's ZMQ traceback only some of the time."""
    for attempt in range(3):
        monkeypatch.setenv("QALIGN_RUNS_DIR", str(tmp_path / f"runs{attempt}"))
        rows = layout.eval_root("tiny", "x", "base").bench_dir("mgsm")
        rc, before, after, snapshot = interrupt_once(["study", "--study", "tiny", "--only", "Base", "--no-report"],
                                                     rows_so_far(rows), tmp_path)
        assert_one_line(rc, before, after)
        assert_kept(snapshot)
        for path in (layout.study_lock("tiny"), layout.eval_root("tiny", "x", "base").lock_file):
            with locks.lock(path, "after the interrupt"):  # released: a new writer takes it at once
                pass
        assert snapshot["children"], "no notebook kernel was running when interrupted"
        time.sleep(1)
        assert [pid for pid in snapshot["children"] if alive(pid)] == []  # no kernel left behind


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_during_analyze_translation_is_one_line_releases_the_lock_and_keeps_rows(synthetic_data, tiny_model,
                                                                                        tmp_path):
    out = tmp_path / "tr"
    argv = ["analyze", "translation", "--model", tiny_model, "--out", str(out), "--max-new-tokens", "64",
            "--batch-size", "1", "--engine", "hf"]
    rc, before, after, snapshot = interrupt_once(argv, rows_so_far(out), tmp_path)
    assert_one_line(rc, before, after)
    assert_kept(snapshot)
    with locks.lock(layout.TranslationDir(out).lock_file, "after the interrupt"):
        pass
