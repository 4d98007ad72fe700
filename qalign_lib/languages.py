"""The one language registry of the project: ISO 639-1 codes and their English names.

``NAMES`` spells the languages as people read them (tables, figures, prompts of the stage-1 instruction).
Which benchmark has which language is declared in :mod:`qalign_lib.benchmarks`.
"""
from __future__ import annotations

from .errors import ConfigError

NAMES: dict[str, str] = {
    "bn": "Bengali",
    "th": "Thai",
    "sw": "Swahili",
    "ja": "Japanese",
    "zh": "Chinese",
    "de": "German",
    "fr": "French",
    "ru": "Russian",
    "es": "Spanish",
    "en": "English",
    "te": "Telugu",
}

# The paper's ten evaluation languages, in the column order of its tables (low-resource first, English last).
LANGS: tuple[str, ...] = ("bn", "th", "sw", "ja", "zh", "de", "fr", "ru", "es", "en")
# The nine non-English languages of question alignment (stage 1).
NON_EN: tuple[str, ...] = tuple(lang for lang in LANGS if lang != "en")
KNOWN: tuple[str, ...] = tuple(NAMES)


def name(code: str) -> str:
    """English name of a language code, e.g. ``name("de") == "German"``."""
    try:
        return NAMES[code]
    except KeyError:
        raise ConfigError(f"unknown language code {code!r}: known codes are {' '.join(NAMES)}") from None


def parse_langs(value, allowed=KNOWN, what: str = "langs") -> list[str]:
    """Parse ``"de,zh"`` / ``["de", "zh"]`` / ``"all"`` / ``"non_en"`` into a list of known codes.

    Raises ConfigError naming the parameter and the allowed codes for anything unknown.
    """
    if value is None:
        raise ConfigError(f"{what}: no languages given; use a comma-separated list such as 'de,zh', 'all' or 'non_en'")
    if isinstance(value, str):
        key = value.strip().lower()
        if key == "all":
            return [lang for lang in (*LANGS, *[a for a in allowed if a not in LANGS]) if lang in allowed]
        if key in ("non_en", "non-en", "x"):
            return [lang for lang in NON_EN if lang in allowed]
        items = [v.strip() for v in value.split(",") if v.strip()]
    else:
        items = [str(v).strip() for v in value]
    if not items:
        raise ConfigError(f"{what}: empty language list")
    bad = [v for v in items if v not in allowed]
    if bad:
        raise ConfigError(f"{what}: unknown or unsupported language code(s) {', '.join(bad)}; allowed: {' '.join(allowed)}")
    return list(dict.fromkeys(items))
