"""Evaluation of one system: generations per benchmark and language, then scores with both scorers.

Layout: ``<eval root>/<benchmark>/<lang>.jsonl`` (appended while generating; a rerun resumes at the first missing
id), ``<eval root>/<benchmark>/settings.json`` and ``<eval root>/metrics.json``. The eval root of a run is
``runs/<size>/<run>/eval``; of the base model ``runs/<size>/base/eval``; of any other model (Hub id or path)
``runs/<size>/models/<name>/eval``.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from . import config, data, modeling, prompts, scoring
from .generation import done_ids, generate_to_files
from .io import read_jsonl, write_json
from .languages import BENCHMARK_LANGS, MGSM_LANGS, parse_langs
from .training import is_done, run_dir


def target(cfg: dict, run: str | None = None, model: str | None = None) -> tuple[str, Path]:
    """(model reference, eval root) for a run name, ``base``, or an explicit model."""
    if model:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/")).strip("_")
        return model, config.runs_dir() / cfg["size"] / "models" / safe / "eval"
    run = run or "base"
    if run == "base":
        return cfg["model"], run_dir(cfg["size"], "base") / "eval"
    path = run_dir(cfg["size"], run)
    if not is_done(path):
        raise modeling.ModelError(f"run {run!r} ({path}) is not finished; train it first")
    return str(path), path / "eval"


def _settings(cfg: dict, benchmark: str, model_ref: str) -> dict:
    return {"model": model_ref, "max_new_tokens": _max_new(cfg, benchmark), "template": prompts.ALPACA_TEMPLATE,
            "decoding": "greedy"}


def _max_new(cfg: dict, benchmark: str) -> int:
    m = cfg["max_new_tokens"]
    return int(m[benchmark]) if isinstance(m, dict) else int(m)


def evaluate(cfg: dict, run: str | None = None, model: str | None = None, benchmarks=("mgsm", "msvamp"),
             langs=None, limit: int | None = None) -> dict:
    """Generate what is missing and score everything; returns and writes metrics.json."""
    modeling.preflight(cfg)
    model_ref, root = target(cfg, run, model)
    limit = cfg.get("eval_limit") if limit is None else limit
    langs = cfg["eval_langs"] if langs is None else langs
    requested = parse_langs(langs, allowed=MGSM_LANGS, what="langs")
    loaded = None
    metrics = {"model": model_ref, "size": cfg["size"], "limit": limit, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    for benchmark in benchmarks:
        bench_langs = [lang for lang in requested if lang in BENCHMARK_LANGS[benchmark]]  # te: mGSM only
        settings = _settings(cfg, benchmark, model_ref)
        settings_path = root / benchmark / "settings.json"
        if settings_path.is_file():
            old = json.loads(settings_path.read_text())
            if old != settings:
                aside = root / f"{benchmark}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
                print(f"{benchmark}: generation settings changed; moving the old generations to {aside}")
                os.replace(root / benchmark, aside)
        write_json(settings_path, settings)
        questions = {lang: data.load_benchmark(benchmark, lang, limit=limit) for lang in bench_langs}
        todo = []  # every missing question of this benchmark, all languages together: fuller batches
        for lang in bench_langs:
            have = done_ids(root / benchmark / f"{lang}.jsonl")
            todo += [{"id": q["id"], "lang": lang, "prompt": prompts.alpaca(q["question"])}
                     for q in questions[lang] if q["id"] not in have]
        if todo:
            if loaded is None:
                loaded = _load(cfg, model_ref)
            print(f"{benchmark}: generating {len(todo)} responses ({len(bench_langs)} languages) with {model_ref}")
            generate_to_files(*loaded, todo, root / benchmark, settings["max_new_tokens"], cfg["eval_batch_size"],
                              cfg.get("eval_token_budget"), desc=benchmark)
        rows = [r for lang in bench_langs for r in _rows(root / benchmark / f"{lang}.jsonl", set(questions[lang]["id"]))]
        gold = {lang: data.gold_answers(benchmark, lang) for lang in bench_langs}
        metrics[benchmark] = {s: _public(scoring.score_rows(rows, gold, benchmark, s)) for s in scoring.SCORERS}
    write_json(root / "metrics.json", metrics)
    return metrics


def is_complete(cfg: dict, run: str | None = None, model: str | None = None, benchmarks=("mgsm", "msvamp"),
                langs=None, limit: int | None = None) -> bool:
    """True when metrics.json covers every requested question with the current generation settings."""
    try:
        model_ref, root = target(cfg, run, model)
    except modeling.ModelError:
        return False
    if not (root / "metrics.json").is_file():
        return False
    metrics = json.loads((root / "metrics.json").read_text())
    limit = cfg.get("eval_limit") if limit is None else limit
    requested = parse_langs(cfg["eval_langs"] if langs is None else langs, allowed=MGSM_LANGS, what="langs")
    for benchmark in benchmarks:
        settings = root / benchmark / "settings.json"
        if benchmark not in metrics or not settings.is_file() or json.loads(settings.read_text()) != _settings(cfg, benchmark, model_ref):
            return False
        want = {lang: len(data.load_benchmark(benchmark, lang, limit=limit)) for lang in requested if lang in BENCHMARK_LANGS[benchmark]}
        if metrics[benchmark]["reference"]["n"] != want:
            return False
    return True


def _rows(path: Path, wanted: set) -> list[dict]:
    """The generation rows of ``path`` whose id is among ``wanted`` (the evaluated subset)."""
    return [r for r in read_jsonl(path, ("lang", "id", "response")) if r["id"] in wanted]


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "per_question"}


def _load(cfg: dict, model_ref: str):
    import torch

    dtype = cfg["dtype"] if torch.cuda.is_available() else "float32"
    tokenizer = modeling.load_tokenizer(model_ref, padding_side="left")
    model = modeling.load_model(model_ref, dtype).to(modeling.device())
    return model, tokenizer


def load_generations(root: Path, benchmark: str, langs, limit=None) -> dict[str, list[dict]]:
    """lang -> generation rows of one eval root (for reports)."""
    return {lang: _rows(root / benchmark / f"{lang}.jsonl", set(data.load_benchmark(benchmark, lang, limit=limit)["id"]))
            for lang in langs if (root / benchmark / f"{lang}.jsonl").is_file()}
