"""Evaluation of one system: generations per benchmark and language, then scores with every registered scorer.

Where the files live is :mod:`qalign_lib.core.layout`'s business (an eval root per run, per base model, per published
model). Generations are appended per language as they are produced; a rerun resumes at the first missing id. The
generation settings (model, template, decoding and every parameter declared as ``generated``) are kept beside the
generations; when they change, the old generations are moved aside.

Every result records what it was computed from, by content (:func:`model_identity`, :func:`question_hashes`): the
model as a path relative to the runs root plus its fingerprint (a retrained run is another model; a copied or
moved ``runs/`` is the same one), a hash of each language's questions (an edited question regenerates that
language's answers) and, in metrics.json, a hash of the settings and of the gold answers scored against
(an edited gold answer rescores). :func:`incomplete` says why a stored evaluation cannot be trusted.
"""
from __future__ import annotations

import functools
import time

from qalign_lib.core import benchmarks as registry
from qalign_lib.core import config, files, layout, locks, log, versions
from qalign_lib.core.config import Config
from qalign_lib.core.errors import ConfigError, ResultsError, RunError
from qalign_lib.core.files import read_results, valid_id, write_json
from qalign_lib.core.languages import parse_langs
from qalign_lib.data import corpora, prompts
from qalign_lib.evaluation import scoring, sharding
from qalign_lib.models import engines, modeling
from qalign_lib.models.generation import done_ids, generate_to_files

logger = log.get(__name__)


def target(cfg: Config, run: str | None = None, model: str | None = None) -> layout.EvalRoot:
    """The eval root (and the model it evaluates) of a run name, ``base``, or an explicit model."""
    if model is not None and not str(model).strip():
        raise ConfigError("model='': give a Hub id or a local path to evaluate, or leave model unset (None) to "
                          "evaluate `run`")
    return layout.eval_root(cfg.size, cfg.model, run, model)


def model_identity(model_ref: str) -> dict:
    """What a result records of the model it was computed with: ``model``, the reference (a path inside the runs
    root as ``runs:<path relative to it>``, so that copying or moving ``runs/`` changes nothing), and
    ``model_fingerprint``: a run's training fingerprint (run.json; a retrained run is a different model), a model
    directory's :func:`modeling.fingerprint` (its config files and weight sizes), else None (Hub ids and
    embedded models are named by their reference)."""
    from pathlib import Path

    ref = str(model_ref)
    path = Path(ref).expanduser()
    if ref.startswith("embedded:") or not path.is_dir():
        return {"model": ref, "model_fingerprint": None}
    path = path.resolve()
    runs = layout.runs_dir()
    name = f"runs:{path.relative_to(runs).as_posix()}" if path.is_relative_to(runs) else str(path)
    run = layout.RunDir(path)
    if run.run_json.is_file():
        return {"model": name, "model_fingerprint": run.fingerprint()}
    if (path / "config.json").is_file() or (path / "model" / "config.json").is_file():
        return {"model": name, "model_fingerprint": modeling.fingerprint(str(path))}
    return {"model": name, "model_fingerprint": None}


def question_hashes(benchmark: str, langs=None) -> dict[str, str]:
    """{lang: content hash of the language's (id, question) rows, in file order} for ``langs`` (default: every
    language of the benchmark) whose file is there; a file is hashed again only when its size or modification
    time changed."""
    langs = registry.get(benchmark).langs if langs is None else langs
    out = {}
    for lang in langs:
        path = corpora.path_of(benchmark, lang)
        try:
            st = path.stat()
        except OSError:
            continue  # not downloaded: nothing was generated from it (a requested one is an error elsewhere)
        out[lang] = _question_hash(benchmark, lang, str(path), st.st_mtime_ns, st.st_size)
    return out


@functools.lru_cache(maxsize=256)
def _question_hash(benchmark: str, lang: str, path: str, mtime_ns, size) -> str:
    rows = corpora.load_benchmark(benchmark, lang)
    return files.content_hash([[i, q] for i, q in zip(rows["id"], rows["question"])])


def gold_hashes(benchmark: str, langs, limit: int | None) -> dict[str, str]:
    """{lang: content hash of the gold answers of the first ``limit`` questions} (what a score is scored against)."""
    out = {}
    for lang in langs:
        ids = corpora.load_benchmark(benchmark, lang, limit=limit)["id"]
        gold = corpora.gold_answers(benchmark, lang)
        out[lang] = files.content_hash([[i, gold[i]] for i in ids])
    return out


def settings(cfg: Config, benchmark: str, model_ref: str) -> dict:
    """What determines a benchmark's generations: derived from the parameters declared ``generated`` (the engine as
    the one it resolves to here, with its version), the model (:func:`model_identity`) and the questions
    (:func:`question_hashes`, every language of the benchmark)."""
    out = {**model_identity(model_ref), "template": prompts.ALPACA_TEMPLATE, "decoding": "greedy",
           "questions": question_hashes(benchmark)}
    for key in config.params("generated", group="eval"):  # the analyses' own are in analysis.settings
        if key == "engine":
            out.update(engines.describe(cfg.engine))
        else:
            out[key] = cfg.max_new(benchmark) if key == "max_new_tokens" else getattr(cfg, key)
    return out


def requested(cfg: Config, benchmark: str, langs=None) -> list[str]:
    """The languages of ``benchmark`` among those asked for (each benchmark takes those it has)."""
    asked = parse_langs(cfg.eval_langs if langs is None else langs, allowed=registry.all_langs(), what="langs")
    return [lang for lang in asked if lang in registry.get(benchmark).langs]


def evaluate(cfg: Config, run: str | None = None, model: str | None = None, benchmarks=None,
             langs=None, limit: int | None = None) -> dict:
    """Generate what is missing and score everything; returns and writes metrics.json. Holds the eval root's lock,
    and its run's lock shared (the run cannot be retrained meanwhile)."""
    modeling.preflight(cfg)
    engines.require(cfg.engine)  # engine=vllm without vLLM stops here, before anything is moved aside
    root = target(cfg, run, model)
    names = registry.parse(benchmarks)
    limit = cfg.eval_limit if limit is None else config.validate("eval_limit", limit, "evaluate(limit=...)")
    for name in names:
        requested(cfg, name, langs)  # bad languages stop here, before any model is loaded
    with locks.holding(root.run_lock), \
            locks.lock(root.lock_file, f"the evaluation of {root.model} ({root.path})"):
        if root.run_lock is not None:  # still finished now that it is held (not retrained since it was found)
            layout.RunDir(root.path.parent).require_done()
        return _evaluate(cfg, root, names, langs, limit)


def _evaluate(cfg: Config, root: layout.EvalRoot, names: list[str], langs, limit) -> dict:
    loaded = None
    metrics = {"model": model_identity(root.model)["model"], "size": cfg.size, "limit": limit, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
               "versions": versions.stack()}  # the software that generated and scored
    for name in names:
        bench_langs = requested(cfg, name, langs)
        want = settings(cfg, name, root.model)
        _retire(root, name, want)
        write_json(root.settings(name), want)
        sharding.fold(root, name, bench_langs)  # rows of data-parallel engines that a kill left in their own files
        questions = {lang: corpora.load_benchmark(name, lang, limit=limit) for lang in bench_langs}
        todo = []  # every missing question of this benchmark, all languages together: fuller batches
        for lang in bench_langs:
            have = done_ids(root.generations(name, lang))
            todo += [{"id": q["id"], "lang": lang, "prompt": prompts.alpaca(q["question"])}
                     for q in questions[lang] if q["id"] not in have]
        shards = sharding.n_engines(cfg.data_parallel_size, cfg.tensor_parallel_size) if todo else 1
        if todo and shards > 1:  # several engines at once, each in its own process(es)
            sharding.generate(cfg, root, name, todo, want["max_new_tokens"], min(shards, len(todo)), bench_langs)
        elif todo:
            if loaded is None:
                loaded = _load(cfg, root.model)
            logger.info("%s: generating %d responses (%d languages) with %s (%s)", name, len(todo), len(bench_langs),
                        root.model, loaded.name)
            generate_to_files(loaded, todo, root.bench_dir(name), want["max_new_tokens"], cfg.eval_batch_size,
                              cfg.eval_token_budget, desc=name)
        rows = [r for lang in bench_langs for r in generations(root, name, lang, set(questions[lang]["id"]))]
        gold = {lang: corpora.gold_answers(name, lang) for lang in bench_langs}
        metrics[name] = {s: scoring.public(scoring.score_rows(rows, gold, name, s, source=str(root.bench_dir(name))))
                         for s in scoring.SCORERS}
        metrics[name]["inputs"] = inputs(want, name, bench_langs, limit)
    write_json(root.metrics, metrics)
    return metrics


def _retire(root: layout.EvalRoot, benchmark: str, want: dict) -> None:
    """Move aside what was generated from other inputs: the whole benchmark when the settings changed (or when
    generations lie there without settings, e.g. appended by an evaluation of a run that was retrained meanwhile:
    nothing says what produced them), only a language's generations when only its questions changed."""
    old = root.read_settings(benchmark)
    bench = root.bench_dir(benchmark)
    if old is None:
        if bench.is_dir() and any(bench.glob("*.jsonl")):
            files.move_aside(bench, "generations without settings.json (what produced them is unknown)")
        return
    strip = lambda d: {k: v for k, v in d.items() if k != "questions"}  # noqa: E731
    if strip(old) != strip(want) or not isinstance(old.get("questions"), dict):
        files.move_aside(bench, "generation settings changed")
        return
    for lang, digest in want["questions"].items():
        path = root.generations(benchmark, lang)
        if old["questions"].get(lang) != digest and path.exists():
            files.move_aside(path, f"the {lang} questions changed")


def inputs(want: dict, benchmark: str, langs, limit: int | None) -> dict:
    """What a benchmark's scores in metrics.json were computed from: the hash of the generation settings (model
    fingerprint and questions included) and of the gold answers per language."""
    return {"settings": files.content_hash(want), "gold": gold_hashes(benchmark, langs, limit)}


def incomplete(cfg: Config, run: str | None = None, model: str | None = None, benchmarks=None,
               langs=None, limit: int | None = None) -> str | None:
    """Why the stored evaluation cannot be trusted as it is (one line), or None when metrics.json covers every
    requested question, computed with the current settings, model, questions and gold answers."""
    try:
        root = target(cfg, run, model)
    except RunError as e:
        return str(e).split(";")[0]
    metrics = root.read_metrics()
    if metrics is None:
        return "not evaluated yet"
    limit = cfg.eval_limit if limit is None else limit
    for name in registry.parse(benchmarks):
        if not isinstance(metrics.get(name), dict):
            return f"{name}: not in metrics.json"
        want = settings(cfg, name, root.model)
        old = root.read_settings(name)
        if old != want:
            changed = sorted(k for k in set(want) | set(old or {}) if (old or {}).get(k) != want.get(k))
            return f"{name}: " + ("no settings.json" if old is None else f"changed since: {', '.join(changed)}")
        bench_langs = requested(cfg, name, langs)
        if metrics[name].get("inputs") != inputs(want, name, bench_langs, limit):
            return f"{name}: metrics.json was not scored from these generations settings and gold answers"
        n = {lang: len(corpora.load_benchmark(name, lang, limit=limit)) for lang in bench_langs}
        if metrics[name].get(scoring.DEFAULT, {}).get("n") != n:
            return f"{name}: metrics.json does not cover every requested question"
    return None


def is_complete(cfg: Config, run: str | None = None, model: str | None = None, benchmarks=None,
                langs=None, limit: int | None = None) -> bool:
    """True when metrics.json covers every requested question with the current generation settings, model,
    questions and gold answers (:func:`incomplete` says why not)."""
    return incomplete(cfg, run, model, benchmarks, langs, limit) is None


def generations(root: layout.EvalRoot, benchmark: str, lang: str, wanted: set | None = None) -> list[dict]:
    """The generation rows of one language whose id is among ``wanted`` (the evaluated subset); [] if none yet.

    The same id twice with the same response (two writers before locks existed) keeps one; with different
    responses it is an error naming the file and the lines."""
    path = root.generations(benchmark, lang)
    rows = read_results(path, ("lang", "id", "response"), "delete the file to regenerate it")
    seen: dict = {}
    out = []
    for k, row in enumerate(rows, 1):
        ident = row["id"]
        if not valid_id(ident):
            raise ResultsError(f"{path}: row {k}: id {ident!r} must be an integer or a string; delete the file to regenerate it")
        if ident in seen:
            first = seen[ident]
            if rows[first - 1]["response"] != row["response"]:
                raise ResultsError(f"{path}: rows {first} and {k} both answer id {ident!r} with different responses; "
                                   "delete one of them (or the file, to regenerate it)")
            logger.warning("%s: row %d repeats id %r (same response as row %d); counted once", path, k, ident, first)
            continue
        seen[ident] = k
        if not isinstance(row["response"], str):
            raise ResultsError(f"{path}: row {k}: field 'response' must be a string, got "
                               f"{type(row['response']).__name__}; delete the file to regenerate it")
        if wanted is None or ident in wanted:
            out.append(row)
    return out


def load_generations(root: layout.EvalRoot, benchmark: str, langs, limit=None) -> dict[str, list[dict]]:
    """lang -> generation rows of one eval root (for reports), restricted to the first ``limit`` questions."""
    out = {}
    for lang in langs:
        if root.generations(benchmark, lang).is_file():
            out[lang] = generations(root, benchmark, lang, set(corpora.load_benchmark(benchmark, lang, limit=limit)["id"]))
    return out


def _load(cfg: Config, model_ref: str) -> engines.Engine:
    return engines.for_config(cfg, model_ref)
