"""The ``qalign`` command: data download/check/build, scoring, the config schema, the study runner, the analyses.

Every error that a user can fix (a :class:`~qalign_lib.core.errors.QAlignError`) is printed as one line
(``qalign: error: ...``) with exit status 1; a usage error (argparse) exits with 2.
"""
from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from qalign_lib.core import benchmarks, log
from qalign_lib.core.errors import ConfigError, QAlignError
from qalign_lib.core.languages import AVG
from qalign_lib.evaluation import scoring


def _data_download(args) -> int:
    from qalign_lib.tools import download

    download.download(args.out, datasets=args.datasets.split(",") if args.datasets else None, qalign_repo=args.qalign_repo)
    log.get(__name__).info("wrote the normalized data to %s; use it with: export QALIGN_DATA_DIR=%s", args.out, args.out)
    return 0


def _data_check(args) -> int:
    from qalign_lib.data import corpora
    from qalign_lib.study import studies

    requirements, what = {}, "nothing (no --study given)"
    if args.study:
        s = studies.load(args.study, size=args.size)
        requirements, what = studies.requirements(s), f"study {args.study} (size {s.size}, {s.source})"
    table, missing = corpora.check(requirements, root=args.data_dir)
    print(table)
    print(f"\nrequired by {what}: ", end="")
    if missing:
        print(f"{len(missing)} file(s) missing")
        for line in missing:
            print(f"  MISSING {line}")
        return 1
    print("all present")
    return 0


def _data_build(args) -> int:
    from qalign_lib.core.files import output_target
    from qalign_lib.data import training_data

    output_target(args.out)  # a bad --out stops here, before any data is read
    tasks = args.task.split("+")
    langs = _langs_arg(args.langs, None)
    rows = training_data.build(tasks[0], langs, args.limit, root=args.data_dir) if len(tasks) == 1 else \
        training_data.build_mixture(tasks, langs, args.limit, args.seed, args.data_dir)
    n = training_data.write_examples(rows, args.out)
    print(f"wrote {n} examples of {args.task} to {args.out}")
    return 0


def _score(args) -> int:
    from qalign_lib.evaluation import scoring

    result = scoring.score_file(args.generations, args.benchmark, args.scorer, root=args.data_dir)
    print(scoring.summary(result))
    return 0


def _config(args) -> int:
    from qalign_lib.core import config

    overrides = _key_values(args.set or [])
    if overrides and not args.size:
        raise ConfigError(f"--set {' '.join(args.set)}: give --size SIZE too (e.g. --size tiny): overrides are checked "
                          f"and applied to a size's values")
    cfg = config.resolve(args.size, **overrides) if args.size else None
    where = f"size {args.size} ({config.size_file(args.size)})" if args.size else "the declared defaults"
    print(f"Parameters ({where}); sizes: {', '.join(config.sizes())}\n")
    print(config.describe(cfg))
    return 0


def _key_values(items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE ...`` as a dict; an item without ``=`` (or without a key) is a one-line error naming it."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: write each override as KEY=VALUE (e.g. lr=1e-5)")
        out[key.strip()] = value
    return out


def _langs_arg(value: str | None, default: str) -> str:
    """``--langs`` as given, or ``default`` when it is left out; given but empty (``""``, ``,``) is an error, never
    every language."""
    if value is None:
        return default
    if not any(part.strip() for part in value.split(",")):
        raise ConfigError(f"--langs {value!r} is empty; leave it out for every language or name some, e.g. de,zh")
    return value


def _study(args) -> int:
    from qalign_lib.study import runner

    return runner.run_study(args.study, size=args.size, only=args.only, dry_run=args.dry_run, report=not args.no_report)


def _doctor(args) -> int:
    from qalign_lib.core.files import write_json
    from qalign_lib.tools import doctor

    report = doctor.run(args.study, size=args.size, quick=args.quick, data_root=args.data_dir, keep=args.keep)
    print(doctor.render(report))
    if args.json:
        write_json(args.json, report.to_json())
        print(f"wrote {args.json}: attach it to a bug report")
    return 1 if report.failed else 0


def _analyze(args) -> int:
    """``qalign analyze translation|representations``: one model, one benchmark, written to --out."""
    from qalign_lib.analysis import inputs, outdir, representations, translation
    from qalign_lib.core import layout, locks
    from qalign_lib.models import engines, modeling

    out = outdir.check(args.out, args.what)  # another tool's folder stops here, before anything is read or written
    langs = _langs_arg(args.langs, "non_en")
    ids, questions = inputs.parallel_questions(args.benchmark, langs, args.limit, args.data_dir)  # data first
    langs = [lang for lang in questions if lang != inputs.REF]
    modeling.resolve(args.model)  # an unknown model stops here, before anything is loaded
    if args.what == "translation":
        with locks.lock(layout.TranslationDir(out).lock_file, f"--out {out} (the translations of another process)"):
            outdir.claim(args.out, args.what)  # marked as qalign's once held, before a model is loaded
            engine = engines.load(args.engine, args.model, args.dtype)
            settings = translation.translation_settings(args.max_new_tokens, args.model, engines.describe(args.engine))
            m = translation.translate(engine, layout.TranslationDir(out), args.benchmark, langs, args.limit,
                                      args.max_new_tokens, args.batch_size, None, settings, root=args.data_dir)
        print(f"{'lang':<6}{'n':>5}{'chrF':>8}{'BLEU':>8}")
        for lang in [*langs, AVG] if AVG in m["chrf"] else langs:
            print(f"{lang:<6}{m['n'].get(lang, min(m['n'].values())):>5}{m['chrf'][lang]:>8.1f}{m['bleu'][lang]:>8.1f}")
        print(f"wrote {out}/<lang>.jsonl and the metrics ({len(ids)} questions per language)")
        return 0
    with locks.lock(layout.RepresentationDir(out).lock_file, f"--out {out} (the representations of another process)"):
        outdir.claim(args.out, args.what)
        hf = engines.HF.load(args.model, engines.dtype(args.dtype))
        table = representations.represent(hf.model, hf.tokenizer, layout.RepresentationDir(out), args.benchmark, langs,
                                          args.limit, args.batch_size, args.pooling, args.model, root=args.data_dir)
    print(f"{'lang':<6}{'layers':>7}{'cosine (mid)':>14}{'best retrieval top-1 (layer)':>30}{'chance':>8}")
    for lang, g in table.groupby("lang", sort=False):
        mid, best = g.iloc[len(g) // 2], g.loc[g["retrieval_top1"].idxmax()]
        print(f"{lang:<6}{len(g):>7}{mid['cosine']:>14.3f}{best['retrieval_top1']:>22.3f} ({int(best['layer']):>2})"
              f"{best['chance']:>11.3f}")
    print(f"wrote {out} (similarity per language and layer with 95% CIs, and the per-question values)")
    return 0


def _positive(text: str, hint: str = "") -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1{hint}")
    return value


def _limit(text: str) -> int:
    return _positive(text, " (leave --limit out for all examples)")


def _batch_size(text: str) -> int:
    return _positive(text, " (a batch holds at least one example)")


def _new_tokens(text: str) -> int:
    return _positive(text, " (at least one token is generated)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qalign", description="QAlign study: data, training, evaluation, reports")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="download, check and build datasets").add_subparsers(dest="data_command", required=True)
    dl = d.add_parser("download", help="fetch the public sources (Hugging Face Hub; QAlign's stage-1 files from GitHub) and normalize them")
    dl.add_argument("--out", required=True, help="directory to write (then set QALIGN_DATA_DIR to it)")
    dl.add_argument("--datasets", help="comma-separated subset (default: all)")
    dl.add_argument("--qalign-repo", metavar="DIR", help="read QAlign's stage-1 question files from this clone of "
                    "NJUNLP/QAlign (a checkout, or a bare clone read with git at commit a65ee63) instead of GitHub")
    dl.set_defaults(func=_data_download)

    ck = d.add_parser("check", help="table of datasets x languages; exit 1 if a study's data is missing")
    ck.add_argument("--study", help="study name (params/study-NAME.yaml; 'paper' = params/study.yaml)")
    ck.add_argument("--size", help="model size whose defaults complete the study (default: the study's own)")
    ck.add_argument("--data-dir", help="data directory (default: $QALIGN_DATA_DIR or data/)")
    ck.set_defaults(func=_data_check)

    b = d.add_parser("build", help="write the training examples of a task as JSONL for inspection")
    b.add_argument("--task", required=True, help="x2en_question, en2x_question, x2en_response, en2x_response, flores_x2en, metamathqa, gsm8k, gsm8kinstruct; join with + to mix")
    b.add_argument("--langs", help="comma-separated language codes, 'all' or 'non_en' (default: all the task has)")
    b.add_argument("--limit", type=_limit, help="first N examples per language (N >= 1; default: all)")
    b.add_argument("--seed", type=int, default=1234, help="shuffle seed of a mixture")
    b.add_argument("--out", required=True, help="output JSONL file")
    b.add_argument("--data-dir")
    b.set_defaults(func=_data_build)

    s = sub.add_parser("score", help="score generations {lang,id,response} against the gold answers")
    s.add_argument("--benchmark", required=True, choices=list(benchmarks.NAMES))
    s.add_argument("--generations", required=True, help="JSONL file with rows {lang, id, response}")
    s.add_argument("--scorer", default=scoring.DEFAULT, choices=list(scoring.SCORERS))
    s.add_argument("--data-dir")
    s.set_defaults(func=_score)

    c = sub.add_parser("config", help="every parameter: type, default, what it affects, meaning (and a size's values)")
    c.add_argument("--size", help="show the resolved values of this size")
    c.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="overrides to check and apply")
    c.set_defaults(func=_config)

    st = sub.add_parser("study", help="run a study's chain of notebooks in dependency order, then the report")
    st.add_argument("--study", default="tiny", help="study name (default: tiny)")
    st.add_argument("--size", help="model size (default: the study's own)")
    st.add_argument("--only", nargs="+", help="only these systems or runs (and what they depend on)")
    st.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    st.add_argument("--no-report", action="store_true", help="skip the report notebook")
    st.add_argument("--log-level", default="INFO", choices=list(log.LEVELS))
    st.set_defaults(func=_study)

    dr = sub.add_parser("doctor", help="is this machine ready? versions, GPUs, NCCL, disk, model access, data, then a "
                        "smoke run of every launch config (PASS/WARN/FAIL/SKIP; exit 1 on any FAIL)")
    dr.add_argument("--study", default=None, help="the study to check data and disk for (default: paper at size 7b "
                    "on a GPU node, else tiny; a row says which was checked)")
    dr.add_argument("--size", help="model size (default: the study's own)")
    dr.add_argument("--quick", action="store_true", help="the checks only, no smoke run (seconds instead of minutes)")
    dr.add_argument("--keep", action="store_true", help="keep the smoke run's directory (kept anyway when it fails)")
    dr.add_argument("--json", metavar="FILE", help="also write the rows and the software stack as JSON (for a bug report)")
    dr.add_argument("--data-dir", help="data directory (default: $QALIGN_DATA_DIR or data/)")
    dr.add_argument("--log-level", default="INFO", choices=list(log.LEVELS))
    dr.set_defaults(func=_doctor)

    from qalign_lib.core.config import schema

    defaults = schema()
    an = sub.add_parser("analyze", help="what stage 1 did to a model: translation quality into English, and "
                        "representation alignment of parallel questions").add_subparsers(dest="what", required=True)
    for what, about in (("translation", "translate each non-English question into English with the stage-1 prompt "
                                        "(greedy) and score it against the English question (chrF, BLEU, 95% CIs)"),
                        ("representations", "mean-pooled hidden states of every layer: cosine with the English "
                                            "question and cross-lingual retrieval top-1, raw and mean-centred, 95% CIs")):
        a = an.add_parser(what, help=about)
        a.add_argument("--model", required=True, help="a run directory, a model directory, a Hub id or embedded:smollm2-135m-instruct")
        a.add_argument("--benchmark", default="mgsm", choices=list(benchmarks.NAMES), help="parallel benchmark (default: mgsm)")
        a.add_argument("--langs", help="comma-separated non-English languages (default: every one the benchmark has)")
        a.add_argument("--limit", type=_limit, help="the first N questions of each language (default: all)")
        a.add_argument("--out", required=True, help="folder to write (translation: <lang>.jsonl and the metrics; "
                       "representations: similarity.csv and per_question.csv)")
        a.add_argument("--batch-size", type=_batch_size, default=defaults["analysis_batch_size"].default)
        a.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="weights on a GPU (a CPU always computes in float32)")
        a.add_argument("--data-dir", help="data directory (default: $QALIGN_DATA_DIR or data/)")
        if what == "translation":
            a.add_argument("--max-new-tokens", type=_new_tokens, default=defaults["translation_max_new_tokens"].default)
            a.add_argument("--engine", default="auto", choices=["auto", "hf", "vllm"])
        else:
            pooling = defaults["representation_pooling"]
            a.add_argument("--pooling", default=pooling.default, choices=list(typing.get_args(pooling.type)),
                           help="what is fed and pooled (see `qalign config`: representation_pooling)")
        a.set_defaults(func=_analyze)
    return p


INTERRUPTED = ("qalign: interrupted; finished rows are kept and locks released; run the same command again to "
               "resume")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log.setup(getattr(args, "log_level", "INFO"))
    try:
        return args.func(args)
    except QAlignError as e:
        print(f"qalign: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the filesystem said no (read-only, permissions, no space): one line naming the file
        where = f"{e.filename}: " if e.filename else ""
        print(f"qalign: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the `with` blocks have released the locks; appended rows stay
        print(INTERRUPTED, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
