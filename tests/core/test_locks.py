"""Locks on shared state (qalign_lib.core.locks): one writer at a time, any number of readers but no writer
meanwhile, the holder named, released when its process is killed; lock files never followed through a symbolic
link and only regular files."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from qalign_lib.core import locks
from qalign_lib.core.errors import RunError
from tests.helpers import ROOT, held_lock

SHARED_HOLDER = """
import sys, time
from pathlib import Path
from qalign_lib.core import locks
with locks.lock(Path(sys.argv[1]), "a test reader", shared=True):
    print("locked", flush=True)
    time.sleep(600)
"""


def shared_holder(path):
    """Another process holding ``path`` shared (an evaluation of a run); returns its Popen once it holds it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SHARED_HOLDER, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if line.strip() != "locked":
        proc.kill()
        pytest.fail(f"the reader could not take the lock: {proc.stderr.read()[-2000:]}")
    return proc


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


@pytest.mark.timeout(120)
def test_readers_share_a_lock_and_a_writer_fails_naming_them(tmp_path):
    path = tmp_path / ".locks" / "x.lock"
    reader = shared_holder(path)
    try:
        with locks.lock(path, "a second reader", shared=True):  # readers at once: fine
            pass
        with pytest.raises(RunError) as e:
            with locks.lock(path, "run x"):
                pytest.fail("a writer took a lock that a reader holds")
        assert f"PID {reader.pid} on " in str(e.value) and "run x is in use" in str(e.value), str(e.value)
        reader.kill()  # a reader killed with -9 is no longer named, and its lock is gone
        reader.wait()
        assert locks.holders(path) == "PID unknown"
        with locks.lock(path, "run x"):
            assert (tmp_path / ".locks" / "x.lock.readers").is_dir()
            assert list((tmp_path / ".locks" / "x.lock.readers").iterdir()) == []
    finally:
        reader.kill()
        reader.wait()


@pytest.mark.timeout(120)
def test_a_writer_excludes_readers_naming_itself(tmp_path):
    path = tmp_path / ".locks" / "x.lock"
    with held_lock(path) as writer:
        with pytest.raises(RunError) as e:
            with locks.holding(path):
                pytest.fail("a reader took a lock that a writer holds")
        assert f"run x is in use by another process (PID {writer.pid} on " in str(e.value), str(e.value)


def test_holding_nothing_for_models_without_a_run(tmp_path):
    with locks.holding(None):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_shared_hold_cannot_become_exclusive_in_the_same_process(tmp_path):
    path = tmp_path / "x.lock"
    with locks.lock(path, "run x", shared=True):
        with locks.lock(path, "run x", shared=True):  # re-entrant
            pass
        with pytest.raises(RunError, match="cannot also replace it"):
            with locks.lock(path, "run x"):
                pytest.fail("upgraded a shared lock")
    with locks.lock(path, "run x"):
        with locks.lock(path, "run x", shared=True):  # an exclusive hold covers a read
            pass


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_left_intact(tmp_path):
    victim = tmp_path / "outside.txt"
    victim.write_text("someone else's file\n")
    link = tmp_path / "runs" / "eval" / ".lock"
    link.parent.mkdir(parents=True)
    link.symlink_to(victim)
    with pytest.raises(RunError) as e:
        with locks.lock(link, "the evaluation of m"):
            pytest.fail("locked through a symbolic link")
    assert "symbolic link" in str(e.value) and str(link) in str(e.value)
    assert victim.read_text() == "someone else's file\n"
    dangling = tmp_path / "runs" / "eval" / ".lock2"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(RunError, match="symbolic link"):
        with locks.lock(dangling, "m"):
            pass
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.timeout(30)
def test_a_lock_file_that_is_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "study.lock"
    os.mkfifo(fifo)
    with pytest.raises(RunError) as e:
        with locks.lock(fifo, "`qalign study` for size tiny"):
            pytest.fail("locked a FIFO")
    assert "not a regular file" in str(e.value) and str(fifo) in str(e.value)
