"""``qalign study``: execute a study's notebooks through papermill in dependency order.

Each training run is one stage1/stage2 notebook, each system one evaluate notebook, and the report notebook comes
last. Finished runs and complete evaluations are skipped; a run whose data is absent is reported as skipped with
the reason (never trained on substitute data), and so is everything that depends on it. Executed notebooks are
kept in ``runs/<size>/notebooks/`` as the record of what ran.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import config, evaluation, study as studies, training


class StudyError(RuntimeError):
    pass


@dataclass
class Step:
    kind: str  # train | evaluate | report
    name: str
    notebook: str
    params: dict
    status: str  # todo | done | skip
    reason: str = ""


def notebook_path(name: str) -> Path:
    return config.PROJECT_ROOT / "notebooks" / f"{name}.ipynb"


def plan(s: studies.Study, only: list[str] | None = None, report: bool = True) -> list[Step]:
    steps: list[Step] = []
    blocked: dict[str, str] = {}
    for name in studies.order(s, only):
        run = s.runs[name]
        missing = studies.missing(s, name)
        params = {"size": s.size, "run_name": name}
        if run.stage == 1:
            nb, params = "stage1", {**params, "task": run.tasks[0], "langs": ",".join(run.langs)}
        else:
            nb, params = "stage2", {**params, "init": run.init, "data": ",".join(run.tasks), "langs": ",".join(run.langs)}
        if run.init in blocked:
            status, reason = "skip", f"depends on {run.init}, which is skipped"
        elif missing:
            status, reason = "skip", "missing data: " + "; ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        else:
            status, reason = ("done", "finished") if training.is_done(training.run_dir(s.size, name)) else ("todo", "")
        if status == "skip":
            blocked[name] = reason
        steps.append(Step("train", name, nb, params, status, reason))
    targets = [n for n in s.systems if not only or n in only or s.systems[n] in only or s.systems[n] in studies.order(s, only)]
    for system in targets:
        run = s.systems[system]
        params = {"size": s.size, "benchmarks": ",".join(s.benchmarks)}
        params.update({"model": run.split(":", 1)[1]} if run.startswith("model:") else {"run": run})
        if run in blocked:
            steps.append(Step("evaluate", system, "evaluate", params, "skip", f"its run {run} is skipped"))
            continue
        complete = evaluation.is_complete(s.cfg, run=params.get("run"), model=params.get("model"), benchmarks=s.benchmarks)
        steps.append(Step("evaluate", system, "evaluate", params, "done" if complete else "todo", "complete" if complete else ""))
    if report:
        steps.append(Step("report", "report", "report", {"size": s.size, "study": s.name}, "todo"))
    return steps


def execute(step: Step, out_dir: Path, index: int) -> Path:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out = out_dir / f"{index:02d}-{step.kind}-{step.name.replace('/', '_').replace(' ', '_')}.ipynb"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(notebook_path(step.notebook)), str(out), parameters=step.params, kernel_name="python3",
                            log_output=True, progress_bar=False, cwd=str(config.PROJECT_ROOT))
    except PapermillExecutionError as e:
        raise StudyError(f"{step.kind} {step.name} failed in {step.notebook}.ipynb: {e.ename}: {e.evalue}\n"
                         f"  executed notebook with the full traceback: {out}") from None
    return out


def run_study(name: str, size: str | None = None, only: list[str] | None = None, dry_run: bool = False,
              report: bool = True) -> int:
    s = studies.load(name, size=size)
    steps = plan(s, only, report)
    width = max(len(st.name) for st in steps)
    print(f"study {s.name} ({s.source}), size {s.size}, model {s.cfg['model']}: {len(steps)} steps")
    for i, st in enumerate(steps, 1):
        print(f"  {i:2d}. {st.kind:<8} {st.name:<{width}}  {st.status:<4}  {st.notebook}.ipynb {st.params}" + (f"  ({st.reason})" if st.reason else ""))
    if dry_run:
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("papermill").setLevel(logging.INFO)
    out_dir = config.runs_dir() / s.size / "notebooks"
    start = time.time()
    todo = [st for st in steps if st.status == "todo"]
    for k, st in enumerate(todo, 1):
        t = time.time()
        print(f"\n=== [{k}/{len(todo)}] {st.kind} {st.name} ({st.notebook}.ipynb) — {time.time() - start:.0f}s elapsed ===", flush=True)
        try:
            path = execute(st, out_dir, steps.index(st) + 1)
        except StudyError as e:
            print(f"\nqalign study: {e}", file=sys.stderr)
            return 1
        print(f"=== done in {time.time() - t:.0f}s: {path}", flush=True)
    skipped = [st for st in steps if st.status == "skip"]
    print(f"\nstudy {s.name}: {len(todo)} steps run, {len(steps) - len(todo) - len(skipped)} already complete, "
          f"{len(skipped)} skipped, {time.time() - start:.0f}s")
    for st in skipped:
        print(f"  skipped {st.kind} {st.name}: {st.reason}")
    return 0
