"""The study report: every table and figure of a study, written to ``figures/<size>/`` with an index README.md.

What the report contains is declared data, :data:`ITEMS`: each item names its files, the group of the study whose
systems it shows (``params/study*.yaml``: ``groups``), the table builder (:mod:`qalign_lib.report.tables`), its caption and
optionally a figure (:mod:`qalign_lib.report.figures`). An item whose name holds ``{bench}`` is written once per benchmark
of the study. This module only decides file names and writes: tables as CSV and Markdown through an atomic write,
figures through :func:`qalign_lib.core.files.save_figure`. The folder is written whole or marked incomplete: an
``INCOMPLETE.md`` stays in it from the first file until the index README.md, written last
(:mod:`qalign_lib.core.reportdir`).

Outputs (``<table_id>`` is the benchmark registry's ``table`` without spaces, e.g. "Table 2" -> ``table2``):

* ``<table_id>_<bench>.{csv,md,png}``  accuracy per language with the averages (group ``main``)
* ``<table_id>_<bench>_ci.{csv,md}``, ``accuracy_<bench>.png``  the same with 95% bootstrap CIs, as bars
* ``paired_<bench>.{csv,md}``  the second system of group ``consistency`` against the first, per language
* ``table4_ablation.{csv,md}``  stage-1 ablations, averages with CIs (group ``ablation``)
* ``figure2_mixed.{csv,md,png}``  mixed supervision, averages with CIs (group ``mixed``)
* ``figure3_consistency.{csv,md,png}``  cross-lingual consistency with English (group ``consistency``)
* ``paper_vs_us.{csv,md}``  our averages beside the paper's (params/paper.yaml)

What stage 1 did, for the systems of the study's ``analysis`` section (:mod:`qalign_lib.analysis`), per benchmark of
``analysis_benchmarks``:

* ``translation_<bench>.{csv,md,png}``  chrF and BLEU of the translations into English, per language, 95% CIs
* ``representations_<bench>.{csv,md,png}``  cosine with English and retrieval top-1 against layer (mean over languages)
* ``representations_<bench>_langs.{csv,md,png}``  the same per language (the table: means over layers)
* ``stage1_effects_<bench>.{csv,md,png}``  the declared effects b - a with 95% paired-bootstrap CIs, paired
  permutation p, Holm-adjusted p over the declared family, MDE and verdict (:mod:`qalign_lib.analysis.effects`); the
  index README.md opens with them and shows their figure
* ``stage1_layers_<bench>.{csv,md,png}``  the primary representation effects per layer, Holm across layers
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from qalign_lib.analysis import effects
from qalign_lib.analysis.mt_metrics import signature
from qalign_lib.core import benchmarks as registry
from qalign_lib.core import files, layout, log, reportdir
from qalign_lib.core.errors import RunError
from qalign_lib.core.files import atomic_write
from qalign_lib.core.languages import AVG
from qalign_lib.core.languages import name as language_name
from qalign_lib.evaluation import scoring
from qalign_lib.report import figures, tables
from qalign_lib.report import results as collected_results
from qalign_lib.study.studies import Study

logger = log.get(__name__)

MAIN = "main"  # the group of Tables 2-3; a study without groups shows every system there


@dataclass(frozen=True)
class Figure:
    name: str                                   # file stem (a template, like Item.name)
    draw: Callable[[pd.DataFrame, str], object]  # (the item's table, title) -> matplotlib Figure
    title: str                                  # template


@dataclass(frozen=True)
class Item:
    """One table of the report (CSV + Markdown), and optionally a figure drawn from it.

    ``name``, ``caption`` and the figure's name and title are templates filled with :meth:`Context.fields` and the
    table's ``attrs``. ``build(ctx, benchmark)`` returns the table, or None where the item does not apply to the
    study. An empty table is written as "_no results_" unless ``keep_empty`` is False (then nothing is written).
    """
    name: str
    group: str | None  # the study group whose systems it shows; None: not tied to a group (always written)
    build: Callable[["Context", str | None], pd.DataFrame | None]
    caption: str
    digits: int = 1
    keep_empty: bool = True
    figure: Figure | None = None
    over: str = "benchmarks"  # what {bench} runs over: the study's benchmarks, or "analysis": analysis_benchmarks

    @property
    def per_benchmark(self) -> bool:
        return "{bench}" in self.name


@dataclass
class Context:
    """What the builders read: the study, its rescored results, and the accuracy tables of every system."""
    study: Study
    results: dict
    absent: dict
    extra_models: tuple = ()
    n_boot: int = 10_000
    scorer: str = scoring.DEFAULT
    wide: dict = field(default_factory=dict)  # benchmark -> wide accuracy table of every system with results
    long: dict = field(default_factory=dict)  # benchmark -> the same with CIs (long format)
    analyses: dict = field(default_factory=dict)  # analysis.collect: system -> benchmark -> translation, representations
    analysis_absent: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)

    def representations(self, benchmark: str) -> pd.DataFrame:
        """Every analysed system's similarity table (per language, avg and layer), computed once."""
        key = ("representations", benchmark)
        if key not in self._cache:
            self._cache[key] = effects.representation_table(self.analyses, list(self.study.analyses), benchmark, self.n_boot)
        return self._cache[key]

    def effects(self, benchmark: str) -> pd.DataFrame:
        key = ("effects", benchmark)
        if key not in self._cache:
            self._cache[key] = effects.effects(self.analyses, self.study.effects, benchmark, self.n_boot,
                                                   length_cap=self.study.cfg.translation_length_cap)
        return self._cache[key]

    def layer_effects(self, benchmark: str) -> pd.DataFrame:
        key = ("layer_effects", benchmark)
        if key not in self._cache:
            self._cache[key] = effects.layer_effects(self.analyses, self.study.effects, benchmark, self.n_boot)
        return self._cache[key]

    def __post_init__(self):
        for b in self.study.benchmarks:  # CIs once per system and benchmark; each table takes its rows
            self.wide[b], self.long[b] = tables.accuracy_table(self.results, list(self.results), b, self.n_boot)

    def applies(self, item: Item) -> bool:
        return item.group in (None, MAIN) or item.group in (self.study.groups or {})

    def members(self, group: str | None) -> list[str]:
        """The systems a group declares (``main`` also takes the extra models); None: every system."""
        return members(self.study, group, self.extra_models)

    def present(self, group: str | None) -> list[str]:
        return [x for x in self.members(group) if x in self.results]

    def note(self, group: str | None) -> str:
        if group is None:
            return ""
        lines = "".join(f"\n- {x}: {self.absent[x]}" for x in self.members(group) if x in self.absent)
        return f"\n\nNot in the table:{lines}" if lines else ""

    def fields(self, benchmark: str | None) -> dict:
        s = self.study
        n_avg = {len(registry.get(b).averaged) for b in s.benchmarks}
        out = {"size": s.size, "scorer": self.scorer,
               "n_avg": f"{n_avg.pop()}-language" if len(n_avg) == 1 else "averaged-language"}
        if benchmark is not None:
            b = registry.get(benchmark)
            out.update(bench=b.name, display=b.display, table=b.table or f"{b.display} table",
                       table_id=b.table.lower().replace(" ", "") or "table", averaged=_averaged_note(b))
        return out


def members(study: Study, group: str | None, extra_models=()) -> list[str]:
    """The systems of one group of a study, in the order declared: ``main`` (every system where the study declares
    no groups) also takes the extra models; None: every system and extra model."""
    every = list(collected_results.systems(study, extra_models))
    if group is None:
        return every
    groups = study.groups or {}
    if group == MAIN:
        return list(groups.get(MAIN, study.systems)) + [collected_results.extra_system(m) for m in extra_models]
    return list(groups.get(group, []))


def _averaged_note(b: registry.Benchmark) -> str:
    text = f"{AVG} = mean over the {len(b.averaged)} languages" + (" (English included)" if "en" in b.averaged else "")
    if b.extra:
        text += ", " + " and ".join(language_name(lang) for lang in b.extra) + " not averaged"
    return text + "; Avg non-En = the same without English"


# ----------------------------------------------------------------------------------------------------------------
# Builders: the rows of each item, from the context


def _accuracy(ctx: Context, b: str) -> pd.DataFrame:
    wide = ctx.wide[b]
    return wide.loc[[x for x in ctx.present(MAIN) if x in wide.index]]


def _accuracy_ci(ctx: Context, b: str) -> pd.DataFrame:
    long = ctx.long[b]
    return long[long["system"].isin(ctx.present(MAIN))].set_index(["system", "lang"])


def _paired(ctx: Context, b: str) -> pd.DataFrame | None:
    pair = ctx.members("consistency")
    if len(pair) != 2:  # the paired tests compare exactly two systems
        return None
    tests = tables.paired_tests(ctx.results, pair[0], pair[1], b, ctx.n_boot)
    tests = tests.set_index("lang") if len(tests) else tests
    tests.attrs.update(a=pair[0], b=pair[1])
    return tests


def _ablation(ctx: Context, _) -> pd.DataFrame:
    return tables.average_table(ctx.long, ctx.present("ablation"))


def _mixed(ctx: Context, _) -> pd.DataFrame:
    return tables.averages(ctx.long, ctx.present("mixed")).set_index(["benchmark", "system"])


def _consistency(ctx: Context, _) -> pd.DataFrame:
    frames = [tables.consistency(ctx.results, ctx.present("consistency"), b).assign(benchmark=registry.get(b).display)
              for b in ctx.study.benchmarks]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).set_index(["benchmark", "system", "lang"])


def _paper_vs_us(ctx: Context, _) -> pd.DataFrame:
    released = {layout.target_of(ref)["model"]: system for system, ref in ctx.study.systems.items()
                if layout.is_model_ref(ref)}
    pvu = tables.paper_vs_us(ctx.long, ctx.study.size, released=released)
    source = pvu.attrs["source"]
    pvu = pvu.set_index("system") if len(pvu) else pvu
    pvu.attrs["source"] = source
    return pvu


def _translation(ctx: Context, b: str) -> pd.DataFrame | None:
    if not ctx.analyses:
        return None
    table = effects.translation_table(ctx.analyses, list(ctx.study.analyses), b, ctx.n_boot,
                                      ctx.study.cfg.translation_length_cap)
    return table.set_index(["system", "lang", "metric"]) if len(table) else table


def _representations(ctx: Context, b: str) -> pd.DataFrame | None:
    full = ctx.representations(b)
    if not len(full):
        return None if not ctx.analyses else full
    avg = full[full["lang"] == AVG] if (full["lang"] == AVG).any() else full
    return avg.set_index(["system", "lang", "layer"])


def _representations_langs(ctx: Context, b: str) -> pd.DataFrame | None:
    full = ctx.representations(b)
    if not len(full):
        return None if not ctx.analyses else full
    per = full[full["lang"] != AVG]
    summary = per[per["layer"].isin(effects.summary_layers(int(per["layer"].max())))]  # layers 1..L, as the effects
    shown = [m for m in (*effects.PRIMARY, "centred_cosine", "retrieval_top1_centred") if m in per.columns]
    table = summary.groupby(["system", "lang"], sort=False).agg(
        n=("n", "first"), layers=("layer", "nunique"), **{m: (m, "mean") for m in shown},
        **({"csls_mrr_chance": ("csls_mrr_chance", "first")} if "csls_mrr_chance" in per.columns else {}),
        chance=("chance", "first"))
    table.attrs["per_layer"] = per
    return table


def seeds_note(ctx: Context, b: str) -> str:
    """How many training runs (seeds) stand behind each analysed system, for the effects' captions."""
    counts = {system: len(effects.replicates((ctx.analyses.get(system) or {}).get(b)))
              for system in dict.fromkeys(x for pair in ctx.study.effects for x in pair)}
    counts = {k: v for k, v in counts.items() if v}
    if not counts or set(counts.values()) == {1}:
        return ("one training run per system (no seeds): the CIs and tests cover the sampling of questions, not "
                "the variation between training runs")
    return ("training runs per system: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "; with several "
            "seeds the estimate is the mean over seeds, the CI resamples seeds and questions, and the permutation "
            "test runs on seed-averaged per-question statistics (conditional on these seeds)")


def family_note(table: pd.DataFrame) -> str:
    """The declared families and their correction, for the report."""
    m = int((table["family"] == effects.PRIMARY_FAMILY).sum()) if len(table) else 0
    pairs = len(dict.fromkeys(zip(table["a"], table["b"]))) if len(table) else 0
    primary = ", ".join(effects.measure_info(x)["label"] for x in effects.primary_measures())
    return (f"primary family: {pairs} declared pair(s) x {len(effects.primary_measures())} primary measures "
            f"({primary}) on the language average = {m} tests, Holm-adjusted; per-language rows and the descriptive "
            "representation measures are exploratory, Holm within each pair and measure across its rows")


def attainable_note(table: pd.DataFrame, n_resamples: int = 10_000) -> str:
    """Where a primary test is exact on so few questions that its smallest attainable p (2 / 2^n, two-sided) cannot
    pass Holm's first step (0.05 / m), a sentence saying so; else ''."""
    primary = table[table["family"] == effects.PRIMARY_FAMILY] if len(table) else table
    if not len(primary):
        return ""
    m, n = len(primary), int(primary["n"].min())
    smallest = 2.0 / 2 ** n
    if 2 ** n > n_resamples or smallest <= effects.ALPHA / m:
        return ""
    return (f" With {n} questions the exact permutation test's smallest attainable p is 2 / 2^{n} = {smallest:.3f}, "
            f"above 0.05 / {m}: no primary effect on them can be significant after Holm, whatever its size; this "
            "size shows direction, not a verdict.")


def _effects(ctx: Context, b: str) -> pd.DataFrame | None:
    if not ctx.analyses or not ctx.study.effects:
        return None
    table = ctx.effects(b)
    out = table.set_index(["a", "b", "measure", "lang"]) if len(table) else table
    out.attrs.update(families=family_note(table), seeds=seeds_note(ctx, b), size=ctx.study.size)
    return out


def _layer_effects(ctx: Context, b: str) -> pd.DataFrame | None:
    if not ctx.analyses or not ctx.study.effects:
        return None
    table = ctx.layer_effects(b)
    out = table.set_index(["a", "b", "measure", "layer"]) if len(table) else table
    out.attrs.update(seeds=seeds_note(ctx, b))
    return out


def _bars_per_language(table: pd.DataFrame, title: str):
    long = table.reset_index()
    return figures.bars(long[long["lang"] != tables.AVG_NON_EN], title)


# ----------------------------------------------------------------------------------------------------------------
# The report, declared

ITEMS: tuple[Item, ...] = (
    Item("{table_id}_{bench}", MAIN, _accuracy,
         "**{table}: {display} accuracy (%)**, {scorer} scorer, 95% bootstrap CIs in `{table_id}_{bench}_ci.csv`; {averaged}.",
         figure=Figure("{table_id}_{bench}", figures.table_heatmap, "{display} accuracy (%) — size {size}")),
    Item("{table_id}_{bench}_ci", MAIN, _accuracy_ci,
         "**{table}: {display} accuracy (%) with 95% bootstrap CIs**, {scorer} scorer; {averaged}.", digits=2,
         figure=Figure("accuracy_{bench}", _bars_per_language, "{display} accuracy per language, 95% CI — size {size}")),
    Item("table4_ablation", "ablation", _ablation,
         "**Table 4: stage-1 data ablations**, each followed by the same stage 2; {n_avg} averages (%) with 95% CIs, "
         "{scorer} scorer."),
    Item("figure2_mixed", "mixed", _mixed,
         "**Figure 2: mixed supervision**, {n_avg} averages (%) with 95% CIs, {scorer} scorer.", keep_empty=False,
         figure=Figure("figure2_mixed", lambda t, title: figures.bars(t.reset_index(), title, x="benchmark"),
                       "Mixed supervision — size {size}")),
    Item("paired_{bench}", "consistency", _paired,
         "**{b} vs {a} on {display}**, per language: difference (points) with 95% paired-bootstrap CI, paired-bootstrap "
         "p, McNemar p (exact below 25 discordant pairs) and Holm-adjusted McNemar p ({scorer} scorer).", digits=3),
    Item("figure3_consistency", "consistency", _consistency,
         "**Figure 3: cross-lingual prediction consistency with English.** jaccard = |C_en ∩ C_x| / |C_en ∪ C_x| over "
         "the questions answered correctly (%); agreement = share of questions whose predicted numbers agree (%).",
         keep_empty=False,
         figure=Figure("figure3_consistency", lambda t, title: figures.consistency_grid(t.reset_index(), title),
                       "Cross-lingual consistency with English — size {size}")),
    Item("paper_vs_us", None, _paper_vs_us,
         "**Paper vs us**: {n_avg} averages (%); ours with 95% bootstrap CIs ({scorer} scorer). Paper numbers: "
         "{source} (params/paper.yaml). Each paper number is labelled with what it measures: only QAlign's comes "
         "from the QAlign recipe; MetaMath's and MathOctopus's are their released checkpoints, trained with their own "
         "recipes. \"same checkpoint\" is our evaluation of that released checkpoint (like for like); \"our "
         "recipe\" is our own run of the method."),
    Item("translation_{bench}", None, _translation,
         "**Stage-1 translation quality, {display}**: each non-English question translated into English with the "
         "stage-1 prompt (greedy), scored against the English question of the same id: sacrebleu chrF and BLEU "
         "(default settings), per language and averaged over languages (`" + AVG + "`), with 95% bootstrap CIs over "
         "questions. Scored: each output's first line, cut at `translation_length_cap` x its reference's characters; "
         "sacrebleu signatures chrF `" + signature("chrf") + "`, BLEU `" + signature("bleu") + "`.",
         keep_empty=False, over="analysis",
         figure=Figure("translation_{bench}", lambda t, title: figures.translation_bars(t.reset_index(), title),
                       "Translation into English (chrF, 95% CI), {display} questions — size {size}")),
    Item("representations_{bench}", None, _representations,
         "**Representation alignment with English, {display}**, mean over languages, per layer (0 = embeddings): "
         "hidden states mean-pooled over each question's own tokens (`representation_pooling`: inside the prompt "
         "template by default, so that the attention sink is not pooled); every measure of "
         "`representations.MEASURES`, among them CSLS MRR across both directions and the centred-cosine margin over "
         "mismatched English questions (the primary measures), cosine and retrieval top-1 raw and after mean-centring "
         "each language (`<measure>_chance`: chance with n candidates), and hubness (`hub`, `hub_csls`); 95% "
         "bootstrap CIs over questions (the same ids in every language).", digits=3, keep_empty=False, over="analysis",
         figure=Figure("representations_{bench}", lambda t, title: figures.representation_lines(t.reset_index(), title),
                       "Representation alignment with English (mean over languages, 95% CI), {display} — size {size}")),
    Item("representations_{bench}_langs", None, _representations_langs,
         "**Representation alignment with English per language, {display}**: the primary measures (CSLS MRR, "
         "margin), centred cosine and centred retrieval top-1, each averaged over layers 1..L (the embeddings, layer "
         "0, left out, as in the effects), with the chance of CSLS MRR and of top-1 (1 / n). The figure shows the "
         "primary measures per layer with their 95% CI bands; each system's `similarity.csv` (its analysis folder) "
         "holds every measure.", digits=3,
         keep_empty=False, over="analysis",
         figure=Figure("representations_{bench}_langs",
                       lambda t, title: figures.representation_grid(t.attrs["per_layer"], title),
                       "Per language: CSLS MRR and margin against layer (95% CI), {display} — size {size}")),
    Item("stage1_effects_{bench}", None, _effects,
         "**What stage 1 did, {display}**: each declared effect b - a (the study's `analysis: effects`) on the same "
         "questions: chrF and BLEU of the translations into English, and the representation measures averaged over "
         "layers 1..L (the embeddings, which stage 1 does not change, left out); per language and averaged over "
         "languages (`" + AVG + "`). `lo`, `hi`: 95% paired-bootstrap CI over question ids (the same ids in every "
         "language); `p`: two-sided paired permutation test over question ids (a and b swapped for a question in "
         "every language at once; exact when 2^n <= 10,000, else 10,000 random swaps); `p_adj`: Holm over the row's "
         "`family`; `verdict` from `p_adj` at 0.05; `mde`: the difference detectable with 80% power at 0.05 / m (the "
         "family's first Holm step), from the SD of the per-question differences (paired t). Declared before the "
         "data: {families}. Size {size}: {seeds}.", digits=4, keep_empty=False, over="analysis",
         figure=Figure("stage1_effects_{bench}", lambda t, title: figures.effects_forest(t.reset_index(), title),
                       "What stage 1 did: paired differences b - a, mean over languages (95% CI; filled: Holm p < 0.05)"
                       ", {display} — size {size}")),
    Item("stage1_layers_{bench}", None, _layer_effects,
         "**What stage 1 did per layer, {display}**: each declared effect b - a on the primary representation "
         "measures, per layer (1..L), averaged over languages, with 95% paired-bootstrap CIs, the paired permutation "
         "p and `p_adj`, Holm across the layers within each pair and measure (family `layers: ...`); exploratory, "
         "the primary test is the average over layers in `stage1_effects_{bench}`. Size {size}: {seeds}.", digits=4,
         keep_empty=False, over="analysis",
         figure=Figure("stage1_layers_{bench}", lambda t, title: figures.layer_effects_lines(t.reset_index(), title),
                       "What stage 1 did per layer: b - a, mean over languages (95% CI; filled: Holm p < 0.05 across "
                       "layers), {display} — size {size}")),
)
MAIN_FIGURES = ("translation_{bench}", "stage1_effects_{bench}")  # the index README's figures, below its first paragraph


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _save_table(frame: pd.DataFrame, stem: Path, caption: str, digits: int = 1) -> Path:
    """``<stem>.csv`` and ``<stem>.md`` (caption, then the table rounded to ``digits``), each written atomically;
    returns the Markdown file."""
    stem = Path(stem)
    with atomic_write(stem.with_name(stem.name + ".csv")) as f:
        frame.to_csv(f)
    flat = frame.reset_index() if frame.index.nlevels > 1 or frame.index.name else frame
    body = flat.round(digits).to_markdown(index=flat is frame) if len(frame) else "_no results_"
    md = stem.with_name(stem.name + ".md")
    with atomic_write(md) as f:
        f.write(f"{caption}\n\n{body}\n")
    return md


def recorded_versions(study: Study, extra_models=()) -> dict[str, dict]:
    """job -> the software versions it recorded (:func:`qalign_lib.core.versions.stack`): each finished training run of
    the study (its run.json) and each evaluated system (its metrics). Jobs from before versions were recorded are
    left out."""
    from qalign_lib.evaluation import evaluator

    out: dict[str, dict] = {}
    for name in study.runs:
        run = layout.run(study.size, name)
        if run.is_done() and run.run_json.is_file() and isinstance(run.meta().get("versions"), dict):
            out[f"training {name}"] = run.meta()["versions"]
    for system, ref in collected_results.systems(study, extra_models).items():
        try:
            root = evaluator.target(study.cfg, **layout.target_of(ref))
        except RunError:
            continue
        metrics = root.read_metrics()
        if metrics and isinstance(metrics.get("versions"), dict):
            out[f"evaluation {system}"] = metrics["versions"]
    return out


def versions_table(recorded: dict[str, dict]) -> str:
    """Markdown, one row per package: its version, or where jobs differ, each version with the jobs that ran it."""
    if not recorded:
        return "_no versions recorded (runs and evaluations from before versions were recorded)_"
    keys: list[str] = []
    for v in recorded.values():
        keys += [k for k in v if k not in keys]
    lines = ["| package | version |", "|---|---|"]
    for key in keys:
        seen: dict[str, list[str]] = {}
        for job, v in recorded.items():
            seen.setdefault("—" if v.get(key) is None else str(v[key]), []).append(job)
        cell = next(iter(seen)) if len(seen) == 1 else "; ".join(f"{ver} ({', '.join(jobs)})" for ver, jobs in seen.items())
        lines.append(f"| {key} | {cell} |")
    return "\n".join(lines)


def _effect_bullet(table: pd.DataFrame, a: str, b: str, note: dict[str, str] | None) -> str:
    """One effect of the README's lead: its reading (``note``: what it tests, what it does not show; None when the
    study declares a bare pair), every measure's numbers and the verdict of the primary family; '' without rows."""
    summary = effects.summary(table, a, b)
    if not summary:
        return ""
    said = effects.verdict(table, a, b)
    return (f"- **{b} - {a}**" + (f" (tests: {note['tests']})" if note else "") + f": {summary}."
            + (f" **Verdict**: {said}." if said else "")
            + (f" **Does not show**: {note['not_shown'].rstrip('.')}." if note else ""))


def lead(study: Study, ctx: Context, written: dict[str, Path]) -> list[str]:
    """The index's first paragraph: the measured stage-1 effects with their CIs, whatever their sign, and its
    main figure."""
    lines = []
    for b in registry.parse(study.cfg.analysis_benchmarks) if ctx.analyses and study.effects else []:
        table = ctx.effects(b)
        if not len(table):
            continue
        display = registry.get(b).display
        pairs = list(dict.fromkeys(zip(table["a"], table["b"])))
        n = {m: int(g["n"].iloc[0]) for m, g in table[table["lang"] == AVG].groupby("measure")}
        langs = [x for x in dict.fromkeys(table["lang"]) if x != AVG] or effects.languages(ctx.analyses, pairs, b)
        notes = study.effect_notes
        parts = [bullet for a, bb in pairs for bullet in [_effect_bullet(table, a, bb, notes.get((a, bb)))] if bullet]
        rep_n = next((n[m] for m in effects.PRIMARY if m in n), None)
        sizes = ", ".join(f"{k}: {v}" for k, v in (("translation", n.get("chrf")), ("representations", rep_n)) if v)
        over = "averaged over languages" if len(langs) > 1 else "on its one language"
        lines += [f"**What stage 1 did** ({display}, size {study.size}, {len(langs)} "
                  f"language{'s' if len(langs) != 1 else ''}: {' '.join(langs)}; "
                  + (f"questions per language, {sizes}; " if sizes else "")
                  + f"differences b - a {over} with 95% "
                  "paired-bootstrap CIs over question ids; p from a paired permutation test over question ids, "
                  f"Holm-adjusted; MDE at 80% power; {family_note(table)}; representation measures averaged over "
                  f"layers 1..L; {seeds_note(ctx, b)}"
                  + ("; what each effect tests and does not show is declared in the study file"
                     if any(pair in notes for pair in pairs) else "") + ")." + attainable_note(table), "", *parts, ""]
        alt = {"translation": f"Translation of {display} questions into English, chrF per language with 95% CIs",
               "stage1_effects": "What stage 1 did: paired differences with 95% CIs"}
        for name in MAIN_FIGURES:
            figure = name.format(bench=b) + "_png"
            if figure in written:
                lines += [f"![{alt[name.split('_{')[0]]}]({Path(written[figure]).name})", ""]
    return lines


def _write_index(study: Study, out: Path, written: dict[str, Path], absent: dict, recorded: dict | None = None,
                 first: list[str] = ()) -> Path:
    lines = [f"# Report: study {study.name}, size {study.size}\n", *first, f"{study.caption}\n" if study.caption else "",
             "| output | file |", "|---|---|"] + [f"| {k} | `{Path(p).name}` |" for k, p in written.items()]
    if absent:
        lines += ["", "Systems without results:"] + [f"- {k}: {v}" for k, v in absent.items()]
    if recorded is not None:
        lines += ["", "## Software", "", f"Versions recorded by the {len(recorded)} training runs and evaluations "
                  "behind this report (`cuda`: torch's CUDA build, — for a CPU build; `gpu`: the GPUs, — on a CPU). "
                  "The tested sets are `constraints/cpu.txt` and `constraints/gpu.txt`.", "", versions_table(recorded)]
    path = out / reportdir.INDEX
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")
    return path


def write_report(study: Study, out_dir: Path | None = None, extra_models=(), n_boot: int = 10_000, *,
                 scorer: str = scoring.DEFAULT, collected: tuple[dict, dict] | None = None,
                 analyses: tuple[dict, dict] | None = None) -> dict[str, Path]:
    """Write every item of :data:`ITEMS` that applies to ``study`` into ``out_dir`` (default ``figures/<size>/``),
    then the index README.md: whole, or marked incomplete (:func:`qalign_lib.core.reportdir.writing`: the folder's
    lock, ``INCOMPLETE.md`` until the index is written; a second report of the same folder at once fails naming the
    first). Returns output name -> path: each table's Markdown file under the table's name,
    each figure under ``<figure name>_png``.

    ``collected`` is :func:`qalign_lib.report.results.collect`'s ``(results, absent)`` when already computed (for the same
    scorer and extra models); else the systems are rescored here. ``analyses`` is :func:`qalign_lib.analysis.effects.collect`'s
    ``(found, absent)`` likewise; else the study's analyses are read here.
    """
    out = Path(out_dir) if out_dir is not None else layout.report_dir(study.size, study.name)
    extra = tuple(extra_models)
    results, absent = collected if collected is not None else collected_results.collect(study, scorer, extra)
    ctx = Context(study, results, absent, extra, n_boot, scorer)
    ctx.analyses, ctx.analysis_absent = analyses if analyses is not None else effects.collect(study)
    rerun = (f"`qalign study --study {study.name} --size {study.size}` or the report notebook (`papermill "
             f"notebooks/report.ipynb out.ipynb -p size {study.size} -p study {study.name}`)")
    with reportdir.writing(out, rerun):  # whole, or marked incomplete (INCOMPLETE.md); one report of `out` at a time
        written = _write_items(study, ctx, out)
        without = {**absent, **{f"{k} (analysis)": v for k, v in ctx.analysis_absent.items()}}
        _write_index(study, out, written, without, recorded_versions(study, extra), lead(study, ctx, written))
    logger.info("report: %d outputs in %s (%d systems, %d absent)", len(written), out, len(results), len(absent))
    return written


def _write_items(study: Study, ctx: Context, out: Path) -> dict[str, Path]:
    """Every item of :data:`ITEMS` that applies to the study, written into ``out``; output name -> path."""
    tail = f" _{study.caption}_" if study.caption else ""
    written: dict[str, Path] = {}
    for item in ITEMS:
        if not ctx.applies(item):
            continue
        over = study.benchmarks if item.over == "benchmarks" else registry.parse(study.cfg.analysis_benchmarks)
        for b in over if item.per_benchmark else [None]:
            table = item.build(ctx, b)
            if table is None or (not len(table) and not item.keep_empty):
                continue
            fields = {**ctx.fields(b), **table.attrs}
            name = item.name.format(**fields)
            caption = item.caption.format(**fields) + tail + ctx.note(item.group)
            written[name] = _save_table(table, out / name, caption, item.digits)
            if item.figure is not None and len(table):
                fig_name = item.figure.name.format(**fields)
                fig = item.figure.draw(table, item.figure.title.format(**fields))
                written[f"{fig_name}_png"] = files.save_figure(fig, out / f"{fig_name}.png")
    return written
