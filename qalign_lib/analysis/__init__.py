"""What stage 1 did, measured where a small model can show it: translation quality and representation alignment.

QAlign's claim is that question alignment (stage 1) maps non-English questions onto their English counterparts.
mGSM (250 questions) and mSVAMP (1,000) are parallel: question ``id`` is the same problem in every language, so
each non-English question has its English translation in the same benchmark. For any model (the base, a stage-1
run, a final system) this package measures

* **translation quality** (:func:`translation.translate`): the stage-1 task itself. Each non-English question is translated
  into English with the stage-1 prompt, byte-identical to training (:func:`prompts.translate` inside
  :func:`prompts.alpaca`), greedy, and the hypotheses are scored against the English question of the same id with
  sacrebleu's default chrF and BLEU (13a tokenizer). Rows are appended per language as they are produced (a rerun
  resumes); changed settings move old translations aside.
* **representation alignment** (:func:`representations.represent`): the hidden states of every layer (0 = embeddings; the last is
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
question ids in every language (the benchmarks are parallel). :func:`effects.effects` compares two models on the same
questions (bootstrap CIs, paired permutation tests, Holm over declared families, MDEs): the report's stage-1 effects.

Where files go is :mod:`qalign_lib.core.layout`'s business (:class:`~qalign_lib.core.layout.AnalysisRoot`); the study runs
:func:`pipeline.analyze` for the systems its ``analysis`` section names (``notebooks/analyze.ipynb``).

Modules, in the order a reader meets them:

* ``inputs``: the parallel questions an analysis reads (languages, ids, the English side).
* ``mt_metrics``: sacrebleu's chrF and BLEU from per-sentence sufficient statistics, so that a bootstrap over
  questions resums statistics instead of rescoring text.
* ``translation``: translating the questions into English and scoring the hypotheses.
* ``representations``: pooled hidden states and their cross-lingual similarity per layer.
* ``pipeline``: one model's analysis end to end (what is done, what to compute, where it goes).
* ``effects``: the study-level comparison of two models on the same questions: the code that tests the claim.
* ``inference``: bootstrap confidence intervals and paired tests (shared with the report's accuracy tables).
"""
