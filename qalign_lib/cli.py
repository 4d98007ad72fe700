"""The ``qalign`` command: data download/check/build, scoring, the config schema, and the study runner.

Every error that a user can fix (a :class:`~qalign_lib.errors.QAlignError`) is printed as one line
(``qalign: error: ...``) with exit status 1; a usage error (argparse) exits with 2.
"""
from __future__ import annotations

import argparse
import sys

from . import benchmarks, log, scoring
from .errors import QAlignError


def _data_download(args) -> int:
    from . import hub

    hub.download(args.out, datasets=args.datasets.split(",") if args.datasets else None, qalign_repo=args.qalign_repo)
    log.get(__name__).info("wrote the normalized data to %s; use it with: export QALIGN_DATA_DIR=%s", args.out, args.out)
    return 0


def _data_check(args) -> int:
    from . import data, study

    requirements, what = {}, "nothing (no --study given)"
    if args.study:
        s = study.load(args.study, size=args.size)
        requirements, what = study.requirements(s), f"study {args.study} (size {s.size}, {s.source})"
    table, missing = data.check(requirements, root=args.data_dir)
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
    from . import data

    from .io import output_target

    output_target(args.out)  # a bad --out stops here, before any data is read
    tasks = args.task.split("+")
    rows = data.build(tasks[0], args.langs, args.limit, args.seed, args.data_dir) if len(tasks) == 1 else \
        data.build_mixture(tasks, args.langs, args.limit, args.seed, args.data_dir)
    n = data.write_examples(rows, args.out)
    print(f"wrote {n} examples of {args.task} to {args.out}")
    return 0


def _score(args) -> int:
    from . import scoring

    result = scoring.score_file(args.generations, args.benchmark, args.scorer, root=args.data_dir)
    print(scoring.summary(result))
    return 0


def _config(args) -> int:
    from . import config

    cfg = config.resolve(args.size, **dict(kv.split("=", 1) for kv in args.set or [])) if args.size else None
    where = f"size {args.size} ({config.size_file(args.size)})" if args.size else "the declared defaults"
    print(f"Parameters ({where}); sizes: {', '.join(config.sizes())}\n")
    print(config.describe(cfg))
    return 0


def _study(args) -> int:
    from . import runner

    return runner.run_study(args.study, size=args.size, only=args.only, dry_run=args.dry_run, report=not args.no_report)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1 (leave --limit out for all examples)")
    return value


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
    b.add_argument("--limit", type=_positive, help="first N examples per language (N >= 1; default: all)")
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
    return p


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


if __name__ == "__main__":
    sys.exit(main())
