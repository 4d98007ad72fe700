"""The two stages of QAlign as thin entries, one per notebook: prepare a run, train it (here or through
``accelerate launch``), return its directory. Read top to bottom, this is the recipe:

* :func:`stage1` question alignment (X->En questions), one of its Table 4 ablations or the shuffled-pairs control,
  from the base model (which examples: ``stage1_limit``, ``stage1_seed``, ``stage1_match_tokens``);
* :func:`stage2` response alignment from the base model or a finished run; a sequence of datasets (the mixed
  setting: gsm8kinstruct, then metamathqa) is trained one after another, each phase a run of its own.
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

from qalign_lib.core import layout, locks, log
from qalign_lib.core.config import Config
from qalign_lib.core.errors import ConfigError
from qalign_lib.data import training_data
from qalign_lib.models import modeling
from qalign_lib.train import training
from qalign_lib.train.launch import launch

logger = log.get(__name__)


def train(cfg: Config, name: str, tasks: list[str], langs=None, init: str = "base", stage: int = 1) -> Path:
    """Prepare and train one run unless it is already finished; returns its directory."""
    modeling.preflight(cfg)
    run = layout.run(cfg.size, name)
    # machine 0 holds the lock of a multi-machine run; the other machines' notebooks train the same run with it
    guard = locks.lock(run.lock_file, f"run {name}") if not int(os.environ.get("MACHINE_RANK") or 0) else nullcontext()
    with holding_init(cfg, init, name), guard:
        out = training.prepare(cfg, name, tasks, langs, init, stage)
        if out is None:
            return run.path
        logger.info("run %s: training on %s (%s) from %s", name, "+".join(tasks), ",".join(training.data_langs(tasks, langs)), init)
        launch(cfg, out)
    return out


def holding_init(cfg: Config, init: str, name: str):
    """The run ``init`` that run ``name`` starts from, held shared while ``name`` is prepared and trained (its model
    is read by every process of the job): retraining ``init`` meanwhile (which moves it aside) fails naming this
    job, and a job that finds ``init`` being retrained fails naming the trainer before anything is read. Taken once
    per job by the process that launches it (on each machine: shared holders do not exclude one another); once
    held, ``init`` must still be finished. Nothing to hold for ``base``."""
    if init == "base":
        return nullcontext()
    return _held_finished(layout.run(cfg.size, init), name)


@contextmanager
def _held_finished(init: layout.RunDir, name: str):
    with locks.lock(init.lock_file, f"run {init.name} (the init of run {name})", shared=True):
        init.require_done()  # still finished now that it is held (not retrained since it was found)
        yield


def stage1(cfg: Config, task: str = "x2en_question", langs=None, name: str | None = None) -> Path:
    """Question alignment (or one of its ablations) from the base model."""
    if task not in training_data.STAGE1_TASKS:
        raise ConfigError(f"stage-1 task {task!r}: choose one of {', '.join(training_data.STAGE1_TASKS)}")
    match = cfg.stage1_match_tokens
    if match is not None and match not in training_data.STAGE1_TASKS:
        raise ConfigError(f"stage1_match_tokens={match!r}: name the stage-1 task whose English target tokens to match "
                          f"({', '.join(training_data.STAGE1_TASKS)})")
    langs = cfg.stage1_langs if langs is None else langs
    return train(cfg, name or stage1_name(task), [task], langs, "base", 1)


def stage1_name(task: str) -> str:
    """The default name of a stage-1 run (the one the studies and the README use): ``s1-<task>``."""
    return f"s1-{task}"


def phases(cfg: Config, init: str = "base", stage2_data=None, name: str | None = None) -> list[tuple[str, str, str]]:
    """(run name, dataset, init) of each phase of a stage 2 trained on the sequence ``stage2_data`` (default: the
    parameter of that name); the last phase is named ``name``."""
    seq = cfg.stage2_data if stage2_data is None else stage2_data
    seq = [s.strip() for s in seq.split(",")] if isinstance(seq, str) else list(seq)
    bad = [d for d in seq if d not in training_data.STAGE2_DATA]
    if not seq or bad:
        raise ConfigError(f"stage-2 data {bad or seq!r}: choose from {', '.join(training_data.STAGE2_DATA)} (a sequence: "
                          "gsm8kinstruct,metamathqa)")
    name = name or f"{init}__{'+'.join(seq)}"
    out, current = [], init
    for i, dataset in enumerate(seq):
        phase = name if i == len(seq) - 1 else f"{name}.phase{i + 1}-{dataset}"
        # every phase's name checked now, before the first phase trains (a long name that only the suffix of an
        # earlier phase pushes over the limit used to fail after the phases before it had trained)
        layout.check_name(phase, "run_name" if phase == name else f"phase {i + 1} of run_name")
        out.append((phase, dataset, current))
        current = phase
    return out


def stage2(cfg: Config, init: str = "base", stage2_data=None, langs="all", name: str | None = None) -> Path:
    """Response alignment from ``init``."""
    last = None
    for phase, dataset, start in phases(cfg, init, stage2_data, name):
        last = train(cfg, phase, [dataset], langs if dataset == "gsm8kinstruct" else None, start, 2)
    return last
