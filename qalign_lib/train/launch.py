"""How a prepared run is trained: in this process on one device, or as ``accelerate launch`` workers.

``launch: single`` with ``num_processes: 1`` trains in the calling process (the notebook). Anything else runs

    accelerate launch --config_file params/launch/<launch>.yaml --num_processes N --num_machines M \\
        [--machine_rank R --main_process_ip IP --main_process_port PORT] -m qalign_lib.train.training RUN_DIR

as a subprocess: its output streams into the notebook and into ``RUN_DIR/launch.log``, and a failed worker raises
:class:`LaunchError` carrying the worker's own error. ``num_processes`` counts the processes of all machines; on
several machines each one runs the same notebook with MACHINE_RANK, MAIN_PROCESS_IP and MAIN_PROCESS_PORT set
(accelerate's conventions, see docs/distributed.md). ACCELERATE_USE_CPU=true (tests) passes through to the workers.
"""
from __future__ import annotations

import codecs
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from qalign_lib.core import config, layout, log
from qalign_lib.core.config import Config
from qalign_lib.core.errors import ConfigError, LaunchError
from qalign_lib.train import training

logger = log.get(__name__)
NODE_ENV = {"MACHINE_RANK": "--machine_rank", "MAIN_PROCESS_IP": "--main_process_ip",
            "MAIN_PROCESS_PORT": "--main_process_port"}
LAUNCHER_ERRORS = ("ChildFailedError", "CalledProcessError")  # the launcher saying that a worker failed


def launch_configs() -> dict[str, Path]:
    """The accelerate config files a size's ``launch`` can name: params/launch/<name>.yaml."""
    return {p.stem: p for p in sorted((config.params_dir() / "launch").glob("*.yaml"))}


def mixed_precision(cfg: Config) -> str:
    """The Trainer's rule (:func:`training.bf16`), so that accelerate, DeepSpeed and the Trainer agree; the configs'
    own ``mixed_precision`` is the default for a hand-typed ``accelerate launch``."""
    return "bf16" if training.bf16(cfg) else "no"


def command(cfg: Config, run: Path, module: str = "qalign_lib.train.training") -> list[str]:
    name, n = cfg.launch, cfg.num_processes
    configs = launch_configs()
    if name not in configs:
        raise ConfigError(f"launch {name!r}: no file {config.params_dir() / 'launch' / name}.yaml; "
                                 f"choose one of {', '.join(configs)} (params/launch/*.yaml)")
    if name == "single" and n != 1:
        raise ConfigError(f"launch single runs one process, not num_processes={n}; use ddp, fsdp or zero3")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(configs[name]),
           "--num_processes", str(n), "--num_machines", str(cfg.num_machines),
           "--mixed_precision", mixed_precision(cfg)]
    for var, flag in NODE_ENV.items():
        if os.environ.get(var):
            cmd += [flag, os.environ[var]]
    return cmd + ["-m", module, str(run)]


def launch(cfg: Config, run: Path, module: str = "qalign_lib.train.training") -> None:
    """Train the prepared run ``run``. ``module`` is the workers' entry point (``python -m module RUN_DIR``); tests
    pass their own to look inside the ranks."""
    if cfg.launch == "single" and cfg.num_processes == 1:
        training.fit(run)
        return
    cmd, machine = command(cfg, run, module), int(os.environ.get("MACHINE_RANK") or 0)
    log_path = layout.RunDir(Path(run)).launch_log(machine)  # runs/ is shared: one log per machine
    logger.info("$ %s", shlex.join(cmd))
    decode = codecs.getincrementaldecoder("utf-8")("replace").decode
    with open(log_path, "wb") as log:
        # own process group: an interrupted notebook takes the launcher and all its workers down with it
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            while chunk := proc.stdout.read1(1 << 16):  # as it comes, so tqdm's \r updates show live
                log.write(chunk)
                print(decode(chunk), end="", flush=True)
            code = proc.wait()
        except BaseException:
            stop_groups([proc])
            raise
    if code:
        error = worker_error(log_path.read_text(encoding="utf-8", errors="replace"))
        raise LaunchError(f"{error}\n[training failed: exit code {code}; full log: {log_path}]")
    if machine:
        _await_done(Path(run))


def _await_done(run: Path, timeout: float = 3600) -> None:
    """On machines other than 0 the workers exit once the weights are gathered, while rank 0 may still be writing
    model/ to the shared runs/: wait for DONE so that this notebook goes on (next phase, report) with a finished run."""
    logger.info("machine %s: waiting for machine 0 to finish writing %s", os.environ["MACHINE_RANK"], run)
    deadline = time.time() + timeout
    while not layout.RunDir(Path(run)).is_done():
        if time.time() > deadline:
            raise LaunchError(f"{run}: the workers ended but machine 0 wrote no DONE within {timeout:.0f} s; see its "
                              "notebook and launch.log (runs/ must be a filesystem all machines share)")
        time.sleep(5)


def stop_groups(procs) -> None:
    """Stop the process group of each of ``procs`` (each started with ``start_new_session``: a launcher and its
    workers): SIGTERM, up to 30 s to exit, then SIGKILL, up to 10 s. A process that has already exited is skipped."""
    for proc in procs:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


_RANK = re.compile(r"^\[(?:rank)?(\d+)\]:\s?")                    # torch prefixes a worker's traceback: "[rank1]: "
_NOT_MESSAGE = re.compile(r"^(Traceback |During handling|The above exception|[EWI]\d{4} |\[\d{4}-\d\d-\d\d|=====)")


def worker_error(log: str) -> str:
    """The error a failed run died of: the exception line(s) ending the first worker traceback in the log (a chained
    traceback counts once, by its last exception), else the launcher's, else the log's last lines."""
    streams: dict[str | None, list[tuple[int, str]]] = {}   # one per rank: their lines can interleave
    for i, line in enumerate(log.replace("\r", "\n").splitlines()):
        m = _RANK.match(line)
        streams.setdefault(m and m.group(1), []).append((i, line[m.end():] if m else line))
    errors = []  # (line number, message)
    for lines in streams.values():
        found, chained = [], False
        for k, (i, line) in enumerate(lines):
            chained |= line.startswith(("During handling", "The above exception"))
            if not line.startswith("Traceback (most recent call last):"):
                continue
            j = k + 1
            while j < len(lines) and (lines[j][1][:1].isspace() or not lines[j][1].strip()):  # the frames
                j += 1
            message = []
            while j < len(lines) and lines[j][1].strip() and not _NOT_MESSAGE.match(lines[j][1]) and len(message) < 8:
                message.append(lines[j][1].rstrip())
                j += 1
            if message:
                if chained and found:
                    found.pop()  # "During handling ... another exception occurred": the one finally raised counts
                found.append((i, "\n".join(message)))
            chained = False
        errors += found
    errors.sort()
    workers = [e for _, e in errors if e.split(":", 1)[0].rsplit(".", 1)[-1] not in LAUNCHER_ERRORS]
    if workers:
        return workers[0]
    tail = [line for line in log.replace("\r", "\n").splitlines() if line.strip()][-15:]
    return "\n".join(tail) if tail else "(no output)"
