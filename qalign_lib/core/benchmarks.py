"""The benchmark registry: every fact about an evaluation benchmark, declared once.

Everything else (data paths, scoring averages, report captions, CLI choices, generation lengths) reads it. To add a
benchmark, add one entry here and put its files in the data directory in the same layout.
"""
from __future__ import annotations

from dataclasses import dataclass

from qalign_lib.core.errors import ConfigError
from qalign_lib.core.languages import LANGS


@dataclass(frozen=True)
class Benchmark:
    name: str                     # the key used everywhere (file names, parameters, metrics.json)
    display: str                  # how tables and figures name it
    langs: tuple[str, ...]        # languages it is evaluated in, in table column order
    averaged: tuple[str, ...]     # languages of the reported average (the paper's ten)
    path: str                     # file of one language, relative to the data directory
    max_new_tokens: int           # generation length of the reference evaluation scripts
    n_questions: int              # questions per language
    about: str
    question_field: str = "question"
    answer_field: str = "answer"  # gold number as a string
    table: str = ""               # the paper's table it reproduces

    @property
    def extra(self) -> tuple[str, ...]:
        """Languages reported as columns but never averaged (mGSM's Telugu)."""
        return tuple(lang for lang in self.langs if lang not in self.averaged)


REGISTRY: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("mgsm", "mGSM", LANGS + ("te",), LANGS, "mgsm/{lang}.jsonl", 600, 250,
                  "mGSM test (Shi et al. 2022): 250 GSM8K problems translated into 10 languages", table="Table 2"),
        Benchmark("msvamp", "mSVAMP", LANGS, LANGS, "msvamp/{lang}.jsonl", 300, 1000,
                  "mSVAMP test (Chen et al. 2023): 1000 SVAMP problems translated into 10 languages", table="Table 3"),
    )
}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> Benchmark:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown benchmark {name!r}; choose from {', '.join(NAMES)}") from None


def parse(value, what: str = "benchmarks") -> list[str]:
    """``"mgsm,msvamp"`` / ``["mgsm"]`` / ``"all"`` -> validated benchmark names."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return list(NAMES)
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    items = [v for v in items if v]
    if not items:
        raise ConfigError(f"{what}: empty list; choose from {', '.join(NAMES)}")
    bad = [v for v in items if v not in REGISTRY]
    if bad:
        raise ConfigError(f"{what}: unknown benchmark(s) {', '.join(map(repr, bad))}; choose from {', '.join(NAMES)}")
    return list(dict.fromkeys(items))


def all_langs() -> tuple[str, ...]:
    """Every language some benchmark is evaluated in (LANGS order, extras last)."""
    out = list(LANGS)
    for b in REGISTRY.values():
        out += [lang for lang in b.langs if lang not in out]
    return tuple(out)
