"""Studies as data: a study file (``params/study.yaml``, the paper's; ``params/study-<name>.yaml``, any other,
e.g. ``study-tiny.yaml``) declares training runs (a DAG: each run starts from the base
model or from another run) and the systems to evaluate. This module resolves a study against its size, derives
the data it needs, and orders the runs so that one stage-1 model serves every stage 2 that starts from it.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Literal

import pydantic

from qalign_lib.core import benchmarks as registry
from qalign_lib.core import config, layout
from qalign_lib.core.config import Config
from qalign_lib.core.errors import ConfigError
from qalign_lib.data import corpora, training_data

# The parameters a run of a study file may set for itself (seeds, controls, LoRA vs full fine-tuning, dose), over
# the size's values; the stage-1 ones only on stage-1 runs. Each is part of the run's fingerprint: a learned
# parameter through the config, a data parameter through the examples it selects.
RUN_OVERRIDES = ("stage1_limit", "stage1_seed", "stage1_match_tokens", "lora_r", "lora_alpha", "lr")
STAGE1_ONLY = ("stage1_limit", "stage1_seed", "stage1_match_tokens")
RUN_KEYS = ("stage", "init", "task", "stage2_data", "langs")  # the structure of a run


@dataclass
class Run:
    name: str
    stage: int
    init: str = "base"  # "base" or the name of another run
    task: str = ""  # stage 1: the stage-1 task (x2en_question, ...)
    stage2_data: list[str] = field(default_factory=list)  # stage 2: the datasets, trained one after another
    langs: list[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)  # RUN_OVERRIDES this run sets (validated values)

    def config(self, cfg: Config) -> Config:
        """The size's config with this run's overrides."""
        return cfg.replace(**self.overrides) if self.overrides else cfg

    def trained_on(self) -> list[str]:
        """The training data in order: the stage-1 task, or the stage-2 sequence."""
        return [self.task] if self.stage == 1 else list(self.stage2_data)


@dataclass
class Study:
    name: str
    size: str
    cfg: Config
    runs: dict[str, Run]
    systems: dict[str, str]  # display name -> run name ("base" = the untrained model)
    benchmarks: list[str]
    caption: str = ""
    groups: dict[str, list[str]] = field(default_factory=dict)  # e.g. table -> systems
    source: str = ""
    # display name -> its run refs (each a run, "base" or "model:<id>"): one per seed, a single ref a list of one
    analyses: dict[str, list[str]] = field(default_factory=dict)
    effects: list[tuple[str, str]] = field(default_factory=list)  # (a, b) pairs of analyses: the stage-1 effects b - a
    # (a, b) -> {"tests": what the effect tests, "not_shown": what it does not show}, declared in the study file
    # beside the pair (before any result) and printed by the report beside the effect's numbers and verdict
    effect_notes: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# The schema of a study file: types checked, unknown keys refused with the closest valid one (pydantic); the
# references between runs, systems, groups and effects are checked by ``load``.


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)


class _RunStructure(_Strict):
    """The structure keys of a run (RUN_KEYS); its parameter overrides are validated by ``_overrides``."""
    stage: Literal[1, 2]
    init: str = "base"
    task: str | None = None
    stage2_data: str | list[str] | None = None
    langs: str | list[str] | None = None


class _Effect(_Strict):
    """A declared effect with its reading: ``compare: [a, b]`` (b - a), what it ``tests`` and what it does not show
    (``not_shown``), both written before the data, printed by the report beside the measured effect and its verdict."""
    compare: list[str]
    tests: str
    not_shown: str


class _Analysis(_Strict):
    systems: dict[str, str | list[str]]
    effects: list[list[str] | _Effect] | None = None


class _StudyFile(_Strict):
    size: str | None = None
    caption: str | None = None
    benchmarks: str | list[str] | None = None
    runs: dict[str, dict] | None = None
    systems: dict[str, str] | None = None
    groups: dict[str, list[str]] | None = None
    released: dict[str, dict[str, str] | None] | None = None
    analysis: _Analysis | None = None


_TYPE_TAGS = ("str", "int", "list", "dict", "none")


def _schema_error(e: pydantic.ValidationError, model: type[pydantic.BaseModel], where: str) -> ConfigError:
    """The first error of a schema check as one line naming the file, the key path and the fix."""
    # the most specific error: of a union's members, the one that got furthest into the value (a mapping where a
    # pair or a mapping may stand: the mapping's own key error, not "expected a list")
    err = max(e.errors(), key=lambda x: (len(x["loc"]), x["type"] == "extra_forbidden"))  # a misspelt key: its fix
    tags = [part for part in err["loc"] if isinstance(part, str) and part != "[key]"
            and ("[" in part or part in _TYPE_TAGS or part.startswith("_"))]
    parts = [part for part in err["loc"] if part not in tags]  # a union's member names are not keys of the file
    if parts and parts[-1] == "[key]":
        return ConfigError(f"{where}: {'.'.join(map(str, parts[:-2]))}: the name {parts[-2]!r} must be a string "
                           f"(quote it: '{parts[-2]}')")
    loc = ".".join(str(part) for part in parts)
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        fields = list(model.model_fields) if len(err["loc"]) == 1 else []
        if not fields and err["loc"][0] == "analysis":
            fields = list((_Effect if "effects" in err["loc"] else _Analysis).model_fields)
        close = difflib.get_close_matches(key, fields, n=1)
        return ConfigError(f"{where}: unknown key {loc!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                           + (f" The keys are: {', '.join(fields)}" if fields else ""))
    if err["type"] == "missing":
        return ConfigError(f"{where}: {loc}: missing")
    value = err.get("input")
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    if {"str", "list[str]"} & set(tags) and err["type"] in ("string_type", "list_type"):
        return ConfigError(f"{where}: {loc}: expected a name or a list of names, got {shown}")
    expected = {"dict_type": "a mapping", "list_type": "a list", "string_type": "a string",
                "literal_error": err.get("ctx", {}).get("expected", "")}.get(err["type"], err["msg"])
    return ConfigError(f"{where}: {loc}: expected {expected}, got {shown}")


def _parse(model: type[pydantic.BaseModel], raw, where: str):
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as e:
        raise _schema_error(e, model, where) from None


# Display names (systems, groups, analysis systems) appear in tables, figure titles and file names: printable, no
# slashes, no surrounding spaces, at most DISPLAY_MAX characters.
DISPLAY_MAX = 80
_DISPLAY = re.compile(r"^[^\s/\\\x00-\x1f\x7f](?:[^/\\\x00-\x1f\x7f]*[^\s/\\\x00-\x1f\x7f])?$")


def check_display_name(name: str, what: str) -> str:
    if not _DISPLAY.match(name) or len(name) > DISPLAY_MAX:
        shown = repr(name) if len(name) <= 40 else repr(name[:40]) + f"... ({len(name)} characters)"
        raise ConfigError(f"{what} {shown}: a display name is 1 to {DISPLAY_MAX} printable characters, no slashes "
                          "or backslashes, no leading or trailing spaces, e.g. 'QAlign+MonoReason'")
    return name


def _overrides(spec: dict, where: str, cfg: Config) -> dict:
    """A run's parameter overrides (RUN_OVERRIDES), each validated; any other key is an error naming the closest."""
    out = {}
    for key, value in spec.items():
        if key in RUN_KEYS:
            continue
        if key not in RUN_OVERRIDES:
            close = difflib.get_close_matches(str(key), [*RUN_KEYS, *RUN_OVERRIDES], n=1)
            raise ConfigError(f"{where}: unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                              + f" A run takes {', '.join(RUN_KEYS)} and may override {', '.join(RUN_OVERRIDES)}")
        if key in STAGE1_ONLY and spec["stage"] != 1:
            raise ConfigError(f"{where}: {key} is a stage-1 parameter; set it on the stage-1 run this run starts from")
        out[key] = config.validate(key, value, where)
    match = out.get("stage1_match_tokens")
    if match is not None and match not in training_data.STAGE1_TASKS:
        raise ConfigError(f"{where}: stage1_match_tokens={match!r}: name a stage-1 task ({', '.join(training_data.STAGE1_TASKS)})")
    if out:
        cfg.replace(**out)  # the combination is valid for the size (e.g. lora_alpha with lora_r)
    return out


def study_file(name: str):
    path = config.params_dir() / ("study.yaml" if name in ("paper", "study") else f"study-{name}.yaml")
    if not path.is_file():
        known = sorted(p.stem.removeprefix("study-") for p in config.params_dir().glob("study*.yaml"))
        raise ConfigError(f"unknown study {name!r}: no file {path}; known studies: {', '.join(known)}")
    return path


def load(name: str, size: str | None = None, **overrides) -> Study:
    """Read a study and resolve every run's languages and data against the size's defaults."""
    path = study_file(name)
    raw = config.read_yaml(path)
    _parse(_StudyFile, raw, str(path))
    size = size or raw.get("size") or "tiny"
    cfg = config.resolve(size, **overrides)
    runs: dict[str, Run] = {}
    for run_name, spec in (raw.get("runs") or {}).items():
        where = f"{path}: run {run_name!r}"
        if not isinstance(spec, dict) or spec.get("stage") not in (1, 2):
            raise ConfigError(f"{where}: needs 'stage: 1' or 'stage: 2'")
        layout.check_name(run_name, f"{path}: run name")
        if "data" in spec and spec["stage"] == 2:
            raise ConfigError(f"{where}: 'data' is now 'stage2_data' (the parameter of that name); rename the key")
        run_overrides = _overrides(spec, where, cfg)  # unknown keys first, with the closest valid one
        _parse(_RunStructure, {k: v for k, v in spec.items() if k in RUN_KEYS}, where)
        if spec["stage"] == 1 and spec.get("init", "base") != "base":
            raise ConfigError(f"{where}: init={spec['init']!r}: a stage-1 run always starts from the base model; "
                              "leave out init (stage 2 runs start from a stage-1 run)")
        if spec["stage"] == 1 and "stage2_data" in spec:
            raise ConfigError(f"{where}: stage2_data is a stage-2 key; a stage-1 run takes task")
        if spec["stage"] == 2 and "task" in spec:
            raise ConfigError(f"{where}: task is a stage-1 key; a stage-2 run takes stage2_data")
        if spec["stage"] == 1:
            tasks = [spec.get("task", "x2en_question")]
            if tasks[0] not in training_data.STAGE1_TASKS:
                raise ConfigError(f"{where}: unknown stage-1 task {tasks[0]!r}; choose one of {', '.join(training_data.STAGE1_TASKS)}")
            langs = training_data.task_langs(tasks[0], spec.get("langs", cfg.stage1_langs))
        else:
            tasks = spec.get("stage2_data", cfg.stage2_data)
            tasks = [tasks] if isinstance(tasks, str) else list(tasks)
            bad = [t for t in tasks if t not in training_data.STAGE2_DATA]
            if bad:
                raise ConfigError(f"{where}: unknown stage-2 data {bad}; choose from {', '.join(training_data.STAGE2_DATA)}")
            langs = training_data.task_langs("gsm8kinstruct", spec.get("langs", "all")) if "gsm8kinstruct" in tasks else ["en"]
        runs[run_name] = Run(run_name, spec["stage"], spec.get("init", "base"), task=tasks[0] if spec["stage"] == 1 else "",
                             stage2_data=tasks if spec["stage"] == 2 else [], langs=langs,
                             overrides=run_overrides)
    for run in runs.values():
        if run.init != "base" and run.init not in runs:
            raise ConfigError(f"{path}: run {run.name!r} starts from unknown run {run.init!r}")
    systems = dict(raw.get("systems") or {})
    released = raw.get("released") or {}
    if not isinstance(released, dict) or not all(isinstance(v, dict) for v in released.values()):
        raise ConfigError(f"{path}: released: expected a mapping size -> {{system name: Hub id}}")
    groups = dict(raw.get("groups") or {})
    for system, model_id in (released.get(size) or {}).items():  # published checkpoints, evaluated as they are
        if system in systems:
            raise ConfigError(f"{path}: released system {system!r} is also a system of the study; rename one")
        systems[system] = layout.model_ref(model_id)
        groups.setdefault("released", []).append(system)
        if "main" in groups:  # first-class rows of Tables 2-3, beside our own runs of the same methods
            groups["main"] = [*groups["main"], system]
    for system, run_name in systems.items():
        check_display_name(system, f"{path}: system")
        if run_name != "base" and run_name not in runs and not layout.is_model_ref(run_name):
            raise ConfigError(f"{path}: system {system!r} names unknown run {run_name!r}" + _closest(run_name, runs))
    for group, members in groups.items():
        check_display_name(group, f"{path}: group")
        for system in members:
            if system not in systems:
                raise ConfigError(f"{path}: group {group!r} names unknown system {system!r}" + _closest(system, systems))
        if len(set(members)) < len(members):
            raise ConfigError(f"{path}: group {group!r} lists a system twice: {members}")
    benchmarks = registry.parse(raw.get("benchmarks"), what=f"{path}: benchmarks")
    analyses, effects, notes = _analysis(raw.get("analysis"), runs, systems, groups, path)
    study = Study(name, size, cfg, runs, systems, benchmarks, raw.get("caption", ""), groups, str(path), analyses, effects,
                  notes)
    order(study)  # validates that there is no cycle
    if not systems and not raw.get("analysis"):
        raise ConfigError(f"{path}: declares no systems and no analysis; a study evaluates `systems:` (display name "
                          "-> run) and/or analyses `analysis: {systems: ...}` (see params/study-tiny.yaml)")
    return study


def _closest(name: str, known) -> str:
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(map(str, known)) or 'none'}"


def _analysis(raw, runs: dict[str, Run], systems: dict[str, str], groups: dict, path) -> tuple[dict, list, dict]:
    """The study's ``analysis`` section: ``systems`` (display name -> a run, base or model:<id>, or a list of runs,
    one per seed; always read as a list) whose translation quality and representation alignment are measured, and
    ``effects``, pairs [a, b] of them whose difference b - a the report tests, each either a bare pair or a mapping
    ``{compare: [a, b], tests: ..., not_shown: ...}`` (returned as notes: (a, b) -> {tests, not_shown}). Without the
    section: the base model and every stage-1 run, plus the consistency pair, with the effects of each stage-1 run
    over the base and of the consistency pair's second system over its first."""
    if raw is None:
        analyses = {"Base": ["base"], **{f"Stage 1: {name}": [name] for name, run in runs.items() if run.stage == 1}}
        pair = list(groups.get("consistency") or [])
        analyses.update({x: [systems[x]] for x in pair if x in systems})
        effects = [("Base", x) for x in analyses if x.startswith("Stage 1: ")]
        effects += [tuple(pair)] if len(pair) == 2 and all(x in analyses for x in pair) else []
        return analyses, effects, {}
    if not isinstance(raw, dict) or not isinstance(raw.get("systems"), dict) or not raw["systems"]:
        raise ConfigError(f"{path}: analysis: expected a mapping with 'systems' (display name -> run, base or "
                          "model:<id>) and optionally 'effects' (a list of [a, b] pairs or {compare: [a, b], tests, "
                          "not_shown} mappings)")
    analyses = {}
    for system, refs in raw["systems"].items():
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs) or len(set(refs)) < len(refs):
            raise ConfigError(f"{path}: analysis system {system!r}: expected a run (base, model:<id>) or a list of "
                              f"distinct runs (one per seed), got {refs!r}")
        check_display_name(str(system), f"{path}: analysis system")
        for ref in refs:
            if ref != "base" and ref not in runs and not layout.is_model_ref(ref):
                raise ConfigError(f"{path}: analysis system {system!r} names unknown run {ref!r}" + _closest(ref, runs))
        analyses[str(system)] = list(refs)
    effects, notes = [], {}
    for entry in raw.get("effects") or []:
        pair = entry.get("compare") if isinstance(entry, dict) else entry
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or any(x not in analyses for x in pair):
            raise ConfigError(f"{path}: analysis effects: {pair!r} is not a pair [a, b] of analysis systems "
                              f"({', '.join(analyses)})")
        if pair[0] == pair[1] or (str(pair[0]), str(pair[1])) in effects:
            raise ConfigError(f"{path}: analysis effects: {pair!r} compares a system with itself or is listed twice")
        effects.append((str(pair[0]), str(pair[1])))
        if isinstance(entry, dict):
            for key in ("tests", "not_shown"):
                if not str(entry.get(key) or "").strip():
                    raise ConfigError(f"{path}: analysis effects: {pair!r}: '{key}' is empty; say in a sentence what "
                                      "the effect " + ("tests" if key == "tests" else "does not show"))
            notes[effects[-1]] = {"tests": " ".join(str(entry["tests"]).split()),
                                  "not_shown": " ".join(str(entry["not_shown"]).split())}
    return analyses, effects, notes


def chain(study: Study, run_name: str) -> list[str]:
    """The runs that ``run_name`` depends on, itself last."""
    out: list[str] = []
    while run_name != "base":
        if run_name in out:
            raise ConfigError(f"{study.source}: runs form a cycle through {run_name!r}")
        out.insert(0, run_name)
        run_name = study.runs[run_name].init
    return out


def order(study: Study, only: list[str] | None = None) -> list[str]:
    """Runs in dependency order, each once; ``only`` restricts to the chains of these systems or runs."""
    targets = []
    for name in only or list(study.runs):
        # a name can be an accuracy system and an analysis system at once (the offline study's "Stage 1: En->X
        # questions" is an ablation's stage 2 and three stage-1 seeds): both are meant
        if name in study.systems:
            targets.append(study.systems[name])
        if name in study.analyses:
            targets += analysis_refs(study, name)
        if name not in study.systems and name not in study.analyses:
            if name not in study.runs:
                raise ConfigError(f"--only {name!r}: not a system ({', '.join(study.systems)}) nor a run "
                                  f"({', '.join(study.runs)}) of {study.source}")
            targets.append(name)
    seen: list[str] = []
    for target in targets:
        for run_name in chain(study, target) if target != "base" and not layout.is_model_ref(target) else []:
            if run_name not in seen:
                seen.append(run_name)
    return seen


def analysis_refs(study: Study, system: str) -> list[str]:
    """The run refs of one analysis system (a list; a study built by hand with a plain ref gives a list of one)."""
    refs = study.analyses[system]
    return [refs] if isinstance(refs, str) else list(refs)


def run_requirements(run: Run) -> dict[str, list[str]]:
    need: dict[str, list[str]] = {}
    for task in run.trained_on():
        for key, langs in training_data.NEEDS[task](run.langs).items():
            need.setdefault(key, [])
            need[key] += [lang for lang in langs if lang not in need[key]]
    return need


def requirements(study: Study, runs: list[str] | None = None) -> dict[str, list[str]]:
    """dataset[:split] -> languages that the study's runs and evaluations read."""
    need: dict[str, list[str]] = {}
    for name in runs if runs is not None else list(study.runs):
        for key, langs in run_requirements(study.runs[name]).items():
            need.setdefault(key, [])
            need[key] += [lang for lang in langs if lang not in need[key]]
    for b in study.benchmarks:
        need[b] = [lang for lang in study.cfg.eval_langs if lang in registry.get(b).langs]
    for b, langs in analysis_requirements(study).items():
        need[b] = list(dict.fromkeys([*need.get(b, []), *langs]))
    return need


def analysis_requirements(study: Study) -> dict[str, list[str]]:
    """benchmark -> languages the study's analyses read (English, the reference, included); empty without analyses."""
    if not study.analyses:
        return {}
    return {b: ["en", *[lang for lang in study.cfg.analysis_langs if lang in registry.get(b).langs]]
            for b in registry.parse(study.cfg.analysis_benchmarks)}


def missing_analysis_data(study: Study, root=None) -> list[str]:
    """The benchmark files the study's analyses read and that are absent (empty when all are there)."""
    return [f"{b} [{lang}] ({corpora.path_of(b, lang, None, root)})" for b, langs in analysis_requirements(study).items()
            for lang in langs if corpora.available(b, lang, None, root) is None]


def missing(study: Study, run_name: str, root=None) -> list[str]:
    """Missing data files of one run's chain (empty when it can run)."""
    out = []
    for name in chain(study, run_name):
        for key, langs in run_requirements(study.runs[name]).items():
            dataset, _, split = key.partition(":")
            for lang in langs:
                if corpora.available(dataset, lang, split or None, root) is None:
                    out.append(f"{key} [{lang}] ({corpora.path_of(dataset, lang, split or None, root)})")
    return out


def missing_benchmarks(study: Study, root=None) -> list[str]:
    """The benchmark files that the study's evaluations read and that are absent (empty when all are there)."""
    out = []
    for b in study.benchmarks:
        for lang in study.cfg.eval_langs:
            if lang in registry.get(b).langs and corpora.available(b, lang, None, root) is None:
                out.append(f"{b} [{lang}] ({corpora.path_of(b, lang, None, root)})")
    return out
