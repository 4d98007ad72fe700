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
    runs/<size>/.locks/            <run>.lock (training holds it exclusive, the run's evaluation and analysis
                                   shared; readers name themselves in <run>.lock.readers/) and study.lock
    runs/<size>/reports/<study>.json  the digest of what a study's last report was made from (a rerun skips it when equal)
    <eval root>/<benchmark>/<lang>.jsonl, <benchmark>/settings.json, metrics.json
    <analysis root>/translation/<benchmark>/<lang>.jsonl, settings.json, metrics.json       (TranslationDir)
    <analysis root>/representations/<benchmark>/similarity.csv, per_question.csv, settings.json  (RepresentationDir)
    figures/<size>/                the report of the size's own study (tiny for tiny, paper for 7b and 13b);
    figures/<size>/<study>/        the report of any other study of that size (e.g. figures/tiny/offline/)

Run names are plain names (letters, digits, ``._+-``, not starting with a dot); ``base``, ``models``,
``notebooks`` and ``reports`` are reserved. Every path built here resolves inside its root (a run inside runs/;
base/, models/, eval/, analysis/, .locks/, notebooks/ and reports/ inside their size: a folder linked elsewhere is
refused). Replacing a finished run or stale generations moves them aside (``<name>.replaced-<time>``), never deletes them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from qalign_lib.core.config import PROJECT_ROOT
from qalign_lib.core.errors import ConfigError, RunError
from qalign_lib.core.files import read_json

NAME_MAX = 128  # characters of a run name: it becomes a folder name (at most 255 bytes), with room for suffixes
NAME = re.compile(rf"^[A-Za-z0-9_+-][A-Za-z0-9._+-]{{0,{NAME_MAX - 1}}}$")
RESERVED = ("base", "models", "notebooks", "reports")


def check_name(name: str, what: str = "run_name") -> str:
    if isinstance(name, str) and len(name) > NAME_MAX:
        raise ConfigError(f"{what}={name[:40]!r}... ({len(name)} characters): a run name is at most {NAME_MAX} "
                          "characters (it becomes a folder name); choose a shorter one")
    if not isinstance(name, str) or not NAME.match(name) or name.endswith(".") or ".replaced-" in name:
        raise ConfigError(f"{what}={name!r}: a run name is a plain name of letters, digits and ._+- (not starting "
                          "with a dot, no slashes), e.g. s1-x2en_question")
    if name in RESERVED:
        raise ConfigError(f"{what}={name!r} is reserved ({', '.join(RESERVED)}); choose another name")
    return name


def _inside(path: Path, root: Path) -> Path:
    """``path``, if it resolves (symbolic links followed) inside ``root``; a folder linked elsewhere is refused."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise ConfigError(f"{path} resolves outside {root}; refusing to write there")
    return path


def size_root(size: str) -> Path:
    check_name(size, "size")
    return _inside(runs_dir() / size, runs_dir())


@dataclass(frozen=True)
class EvalRoot:
    """Where one system's generations and metrics live."""
    path: Path
    model: str  # the model reference it evaluates
    run_lock: Path | None = None  # the lock of the run it belongs to (held shared while evaluating), None if no run

    def bench_dir(self, benchmark: str) -> Path:
        return self.path / benchmark

    def generations(self, benchmark: str, lang: str) -> Path:
        return self.path / benchmark / f"{lang}.jsonl"

    def settings(self, benchmark: str) -> Path:
        return self.path / benchmark / "settings.json"

    def shards_dir(self, benchmark: str) -> Path:
        """Data-parallel generation: each engine appends to its own files here; they are folded into the
        per-language files when the engines are done (or, after a kill, when the evaluation is run again)."""
        return self.path / benchmark / "shards"

    def shard_generations(self, benchmark: str, lang: str, shard: int) -> Path:
        return self.shards_dir(benchmark) / f"{lang}.shard{shard}.jsonl"

    def shard_files(self, benchmark: str, lang: str) -> list[Path]:
        return sorted(self.shards_dir(benchmark).glob(f"{lang}.shard*.jsonl"))

    def shard_task(self, benchmark: str) -> Path:
        return self.shards_dir(benchmark) / "task.json"

    def shard_log(self, benchmark: str) -> Path:
        """The data-parallel workers' output (appended run after run; kept when the shards are folded in)."""
        return self.path / benchmark / "launch.log"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def read_metrics(self) -> dict | None:
        return read_json(self.metrics) if self.metrics.is_file() else None

    def read_settings(self, benchmark: str) -> dict | None:
        path = self.settings(benchmark)
        return read_json(path) if path.is_file() else None


OUT_MARKER = ".qalign-out"  # in a `qalign analyze --out` folder: qalign owns it (names what wrote it)


@dataclass(frozen=True)
class TranslationDir:
    """One model's English translations of one benchmark's non-English questions (``qalign analyze translation``
    writes here, or into any ``--out`` folder): ``<lang>.jsonl`` rows {id, source, hypothesis, reference}, the
    settings they were generated with, and their chrF/BLEU."""
    path: Path

    def hypotheses(self, lang: str) -> Path:
        return self.path / f"{lang}.jsonl"

    settings = property(lambda self: self.path / "settings.json")
    metrics = property(lambda self: self.path / "metrics.json")
    lock_file = property(lambda self: self.path / ".lock")  # held by `qalign analyze translation --out`


@dataclass(frozen=True)
class RepresentationDir:
    """One model's representation alignment on one benchmark (``qalign analyze representations``):
    ``similarity.csv`` (per language and layer, with CIs), ``per_question.csv`` (the values the CIs and the
    report's paired tests resample) and the settings."""
    path: Path

    similarity = property(lambda self: self.path / "similarity.csv")
    per_question = property(lambda self: self.path / "per_question.csv")
    settings = property(lambda self: self.path / "settings.json")
    lock_file = property(lambda self: self.path / ".lock")  # held by `qalign analyze representations --out`


@dataclass(frozen=True)
class AnalysisRoot:
    """Where one model's analyses live (a run's, the base model's, or any model's)."""
    path: Path
    model: str  # the model reference it analyses
    run_lock: Path | None = None  # the lock of the run it belongs to (held shared while analysing), None if no run

    def translation(self, benchmark: str) -> TranslationDir:
        return TranslationDir(self.path / "translation" / benchmark)

    def representations(self, benchmark: str) -> RepresentationDir:
        return RepresentationDir(self.path / "representations" / benchmark)

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"


@dataclass(frozen=True)
class RunDir:
    """One training run's directory."""
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    model = property(lambda self: self.path / "model")
    model_tmp = property(lambda self: self.path / ".model-tmp")
    run_json = property(lambda self: self.path / "run.json")
    train_jsonl = property(lambda self: self.path / "train.jsonl")
    train_log = property(lambda self: self.path / "train_log.jsonl")
    lengths = property(lambda self: self.path / "lengths.json")  # examples per language: kept whole, cut, dropped
    loss_png = property(lambda self: self.path / "loss.png")
    checkpoints = property(lambda self: self.path / "checkpoints")
    tensorboard = property(lambda self: self.path / "tensorboard")
    done_marker = property(lambda self: self.path / "DONE")

    @property
    def lock_file(self) -> Path:
        """Beside the run, not in it: a run moved aside must not take its lock along. Training holds it exclusive,
        the run's evaluation and analysis shared."""
        return _inside(self.path.parent / ".locks", self.path.parent) / f"{self.name}.lock"

    def launch_log(self, machine: int = 0) -> Path:
        return self.path / (f"launch.machine{machine}.log" if machine else "launch.log")

    @property
    def eval(self) -> EvalRoot:
        return EvalRoot(self.path / "eval", str(self.path), self.lock_file)

    @property
    def analysis(self) -> AnalysisRoot:
        return AnalysisRoot(self.path / "analysis", str(self.path), self.lock_file)

    def is_done(self) -> bool:
        return self.done_marker.is_file() and (self.model / "config.json").is_file()

    def meta(self) -> dict:
        """run.json; errors name the file."""
        if not self.run_json.is_file():
            raise RunError(f"run {self.name!r} ({self.path}) has no run.json: it was never prepared; train it first")
        return read_json(self.run_json)

    def fingerprint(self) -> str | None:
        return self.meta().get("fingerprint") if self.run_json.is_file() else None

    def mark_done(self) -> None:
        from qalign_lib.core.files import atomic_write

        with atomic_write(self.done_marker) as f:
            f.write(self.meta()["fingerprint"] + "\n")

    def require_done(self) -> "RunDir":
        if not self.is_done():
            raise RunError(f"run {self.name!r} ({self.path}) is not finished; train it first (its notebook or `qalign study`)")
        return self


def run(size: str, name: str) -> RunDir:
    check_name(name)
    return RunDir(_inside(size_root(size) / name, runs_dir()))


def _model_dir(size: str, model: str) -> Path:
    """runs/<size>/models/<sanitised id> of a model given by Hub id or path."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(model).strip("/")).strip("_.")
    if not safe:
        raise ConfigError(f"model={model!r}: give a Hub id (owner/name) or a local path")
    return _inside(size_root(size) / "models" / safe, size_root(size))


MODEL_PREFIX = "model:"  # a study's reference to a model it did not train: model:<Hub id or path>


def model_ref(model: str) -> str:
    """The reference a study gives a model it did not train (a released checkpoint, a path): ``model:<id>``."""
    return f"{MODEL_PREFIX}{model}"


def target_of(ref: str) -> dict[str, str | None]:
    """What a study's system reference names, as the keyword arguments of the functions that find its eval and
    analysis roots: ``{"run": name, "model": None}`` for a run (or ``base``), ``{"run": None, "model": id}`` for
    ``model:<id>``."""
    ref = str(ref)
    if ref.startswith(MODEL_PREFIX):
        return {"run": None, "model": ref[len(MODEL_PREFIX):]}
    return {"run": ref, "model": None}


def is_model_ref(ref) -> bool:
    return str(ref).startswith(MODEL_PREFIX)


def model_home(size: str, base_model: str, run_name: str | None = None, model: str | None = None) -> tuple[Path, str]:
    """The directory that holds a model's ``eval/`` and ``analysis/``, and the model reference they are of: an explicit
    model (Hub id or path) at runs/<size>/models/<id>, ``base`` (or no run) the size's model at runs/<size>/base, else
    the run's own directory (the run must be finished)."""
    if model:
        return _model_dir(size, model), str(model)
    if run_name in (None, "base"):
        return _inside(size_root(size) / "base", size_root(size)), base_model
    done = run(size, run_name).require_done()
    return done.path, str(done.path)


def _run_lock(size: str, run_name: str | None, model: str | None) -> Path | None:
    """The lock of the run whose eval/ or analysis/ is written (None for base and explicit models)."""
    return None if model or run_name in (None, "base") else run(size, run_name).lock_file


def eval_root(size: str, base_model: str, run_name: str | None = None, model: str | None = None) -> EvalRoot:
    """The eval root of a run name, ``base`` (the size's model) or an explicit model (see :func:`model_home`);
    ``run_lock`` is the run's lock, which the evaluation holds shared."""
    home, ref = model_home(size, base_model, run_name, model)
    return EvalRoot(_inside(home / "eval", size_root(size)), ref, _run_lock(size, run_name, model))


def analysis_root(size: str, base_model: str, run_name: str | None = None, model: str | None = None) -> AnalysisRoot:
    """The analysis root of a run name, ``base`` or an explicit model (see :func:`model_home`); ``run_lock`` is the
    run's lock, which the analysis holds shared."""
    home, ref = model_home(size, base_model, run_name, model)
    return AnalysisRoot(_inside(home / "analysis", size_root(size)), ref, _run_lock(size, run_name, model))


def locks_dir(size: str) -> Path:
    """runs/<size>/.locks: the lock files of the size's runs and of its study."""
    return _inside(size_root(size) / ".locks", size_root(size))


def study_lock(size: str) -> Path:
    return locks_dir(size) / "study.lock"


def report_stamp(size: str, study: str) -> Path:
    """What a study's last report was made from (runner.report_inputs), written by ``qalign study`` after the report."""
    return _inside(size_root(size) / "reports", size_root(size)) / f"{check_name(study, 'study')}.json"


def notebooks_dir(size: str) -> Path:
    return _inside(size_root(size) / "notebooks", size_root(size))


def report_dir(size: str, study: str | None = None) -> Path:
    """figures/<size>/ for the size's own study (``study`` None, the size's name, or ``paper``), else
    figures/<size>/<study>/: another study of the same size (e.g. offline at tiny) never overwrites its report."""
    check_name(size, "size")
    if study in (None, size, "paper", "study"):
        return figures_dir() / size
    return figures_dir() / size / check_name(study, "study")


def runs_dir() -> Path:
    """Where runs are written: $QALIGN_RUNS_DIR, else runs/ in the project (layout.py builds every path below it)."""
    return Path(os.environ.get("QALIGN_RUNS_DIR") or PROJECT_ROOT / "runs").resolve()


def figures_dir() -> Path:
    return Path(os.environ.get("QALIGN_FIGURES_DIR") or PROJECT_ROOT / "figures").resolve()
