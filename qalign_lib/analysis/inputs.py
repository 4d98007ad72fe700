"""What an analysis reads: the languages it covers for a benchmark and the parallel questions (the same ``id`` in
every language; English, ``REF``, is the side everything is compared with).
"""
from __future__ import annotations

from qalign_lib.core import benchmarks as registry
from qalign_lib.core.errors import ConfigError, DataError
from qalign_lib.core.languages import parse_langs
from qalign_lib.data import corpora

REF = "en"


# ----------------------------------------------------------------------------------------------------------------
# Parallel questions


def analysis_langs(benchmark: str, langs) -> list[str]:
    """The non-English languages of ``langs`` that ``benchmark`` has parallel questions in; an error names any
    language without them (English is the reference, never analysed against itself)."""
    b = registry.get(benchmark)
    asked = parse_langs(langs, allowed=registry.all_langs(), what="langs")
    if REF in asked:
        raise ConfigError(f"langs: {REF} is the reference every language is compared with; leave it out")
    bad = [lang for lang in asked if lang not in b.langs]
    if bad:
        raise ConfigError(f"langs: {b.display} has no parallel questions in {', '.join(bad)}; it has "
                          f"{' '.join(x for x in b.langs if x != REF)}")
    return asked


def parallel_questions(benchmark: str, langs, limit: int | None = None, root=None) -> tuple[list, dict[str, dict]]:
    """(ids, {lang: {id: question}}) of the first ``limit`` English questions (file order) and the questions of
    the same ids in ``langs`` (aligned by id, never by line); English included under ``en``."""
    langs = analysis_langs(benchmark, langs)
    english = corpora.load_benchmark(benchmark, REF, root=root, limit=limit)
    ids = list(english["id"])
    out = {REF: dict(zip(english["id"], english["question"]))}
    for lang in langs:
        rows = corpora.load_benchmark(benchmark, lang, root=root)
        by_id = dict(zip(rows["id"], rows["question"]))
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DataError(f"{corpora.path_of(benchmark, lang, root=root)}: no question with id {missing[:5]} "
                            f"({len(missing)} of {len(ids)} ids of the English file); the benchmark must be parallel")
        out[lang] = {i: by_id[i] for i in ids}
    return ids, out


def _key(ident):
    return (type(ident).__name__, ident)
