"""Locks on shared state (qalign_lib.core.locks): one writer at a time, the holder named, released when its process
is killed."""
from __future__ import annotations

import pytest

from qalign_lib.core import locks
from qalign_lib.core.errors import RunError
from tests.helpers import held_lock


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
