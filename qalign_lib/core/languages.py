"""The one language registry of the project: ISO 639-1 codes and their English names.

``NAMES`` spells the languages as people read them (tables, figures, file names of the Hub's per-language files).
``PROMPT_NAMES`` spells them as the stage-1 training instruction must, byte for byte as the reference does (see
:func:`prompt_name`). Which benchmark has which language is declared in :mod:`qalign_lib.core.benchmarks`.
"""
from __future__ import annotations

from qalign_lib.core.errors import ConfigError

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

# The names inside the stage-1 instruction ("Translate the following sentences from {source} to {target}. ...").
# The reference builds them with the `iso639` package, iso-639 0.4.5 (NJUNLP/QAlign@a65ee63 requirements.txt:68),
# as `languages.get(alpha2=code).name` (data/gsmtrans/gsmtrans.py:74, 78, 99, 103, 124 for the question files and
# 143, 147, 170, 174, 197 for the answer files). That package's table (iso639/iso-639-3.tab, row "swa") names
# Swahili "Swahili (macrolanguage)"; for the other nine codes it gives exactly the names of NAMES (checked against
# iso-639 0.4.5 for bn th sw ja zh de fr ru es en, and te). Only the differences are listed here.
_PROMPT_OVERRIDES: dict[str, str] = {"sw": "Swahili (macrolanguage)"}
PROMPT_NAMES: dict[str, str] = {**NAMES, **_PROMPT_OVERRIDES}

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


def prompt_name(code: str) -> str:
    """The name of a language inside a training prompt, the reference's bytes: ``prompt_name("sw") ==
    "Swahili (macrolanguage)"`` while ``name("sw") == "Swahili"`` (tables, figures)."""
    name(code)  # the same error for an unknown code
    return PROMPT_NAMES[code]


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


# The label of an average over languages, wherever a language would stand (a table's column, the lang field of
# a long table, an analysis file); over the benchmark's averaged languages, or over those without English.
AVG, AVG_NON_EN = "Avg", "Avg non-En"
