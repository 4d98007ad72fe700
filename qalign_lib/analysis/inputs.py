"""What stage 1 did, measured where a small model can show it: translation quality and representation alignment.

QAlign's claim is that question alignment (stage 1) maps non-English questions onto their English counterparts.
mGSM (250 questions) and mSVAMP (1,000) are parallel: question ``id`` is the same problem in every language, so
each non-English question has its English translation in the same benchmark. For any model (the base, a stage-1
run, a final system) this module measures

* **translation quality** (:func:`translate`): the stage-1 task itself. Each non-English question is translated
  into English with the stage-1 prompt, byte-identical to training (:func:`prompts.translate` inside
  :func:`prompts.alpaca`), greedy, and the hypotheses are scored against the English question of the same id with
  sacrebleu's default chrF and BLEU (13a tokenizer). Rows are appended per language as they are produced (a rerun
  resumes); changed settings move old translations aside.
* **representation alignment** (:func:`represent`): the hidden states of every layer (0 = embeddings; the last is
  after the final norm, as transformers returns it), mean-pooled over the question's own tokens (the raw question
  text: no template, no padding, no special tokens; ``representation_pooling: template`` feeds the Alpaca prompt
  and pools over the question's tokens inside it). Per language and layer: the mean cosine similarity of a
  question with its English counterpart, and cross-lingual retrieval top-1 (the English question nearest to each
  non-English one is its translation; chance = 1 / n). Mean-pooled states are strongly anisotropic (every pair
  looks similar), so both are also given after mean-centring each language's vectors (subtracting that language's
  mean vector at that layer over the questions analysed), the convention of the cross-lingual representation
  literature (e.g. Libovický et al. 2020, "On the language neutrality of pre-trained multilingual
  representations").

Every number comes with a 95% percentile-bootstrap CI over questions; averages over languages resample the same
question ids in every language (the benchmarks are parallel). :func:`effects` compares two models on the same
questions (paired bootstrap): the report's stage-1 effects.

Where files go is :mod:`qalign_lib.layout`'s business (:class:`~qalign_lib.layout.AnalysisRoot`); the study runs
:func:`analyze` for the systems its ``analysis`` section names (``notebooks/analyze.ipynb``).
"""
from __future__ import annotations

from qalign_lib.core import benchmarks as registry
from qalign_lib.core.errors import ConfigError, DataError
from qalign_lib.core.languages import parse_langs
from qalign_lib.data import corpora

REF = "en"
AVG = "avg"  # the language label of averages over languages


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
