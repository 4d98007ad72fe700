"""The run layout: the one module that knows where runs, evaluations and executed notebooks live.

::

    runs/<size>/<run>/             a training run (RunDir)
        run.json                   the resolved config, data, init and fingerprint
        train.jsonl                exactly the examples it is trained on
        lengths.json               per language: examples kept whole, cut at max_length, dropped
        checkpoints/               Trainer checkpoints (removed once the run is finished)
        train_log.jsonl, loss.png  loss and learning rate per optimizer step, and its curve
        tensorboard/               the experiment-tracking log (report_to: tensorboard)
        launch.log                 output of the accelerate workers (multi-process runs)
        model/                     the final model and tokenizer
        DONE                       written last, holding the fingerprint
        eval/                      its evaluation (EvalRoot)
        analysis/                  what stage 1 did to it (AnalysisRoot)
    runs/<size>/base/eval/         evaluation of the size's untrained base model
    runs/<size>/models/<id>/eval/  evaluation of any other model (a published checkpoint, a path)
    runs/<size>/base/analysis/, runs/<size>/models/<id>/analysis/   their analyses
    runs/<size>/notebooks/         notebooks executed by `qalign study`
    <eval root>/<benchmark>/<lang>.jsonl, <benchmark>/settings.json, metrics.json
    <analysis root>/translation/<benchmark>/<lang>.jsonl, settings.json, metrics.json       (TranslationDir)
    <analysis root>/representations/<benchmark>/similarity.csv, per_question.csv, settings.json  (RepresentationDir)
    figures/<size>/                the report of the size's own study (tiny for tiny, paper for 7b and 13b);
    figures/<size>/<study>/        the report of any other study of that size (e.g. figures/tiny/offline/)

Run names are plain names (letters, digits, ``._+-``, not starting with a dot); ``base``, ``models`` and
``notebooks`` are reserved. Every path built here resolves inside its root. Replacing a finished run or stale
generations moves them aside (``<name>.replaced-<time>``), never deletes them.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from qalign_lib.core.errors import RunError


@contextlib.contextmanager
def lock(path: Path, what: str):
    """Exclusive use of what the lock file ``path`` guards (a run, an eval root, a study) by this process.

    A non-blocking ``flock`` on ``path``, which holds the holder's PID: a second process fails at once with a
    RunError naming that PID instead of writing into the same files. The lock goes with the process, so a job killed
    with -9 leaves nothing to clean up. Re-entrant within one process. Lock files live outside what they guard
    when that can be moved aside (runs: ``runs/<size>/.locks/<run>.lock``).
    """
    import fcntl

    path = Path(path)
    key = str(path.resolve())
    if key in _HELD:  # this process holds it already (e.g. the phases of one stage 2)
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RunError(f"{what} ({path}): cannot create its lock file ({e.strerror}); is the runs folder writable?") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise RunError(f"{what} is in use by another process (PID {holder}); wait for it to finish, or stop it, "
                           f"then rerun (lock: {path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the lock


_HELD: set[str] = set()
