"""``qalign study``: execute a study's notebooks through papermill in dependency order.

Each training run is one stage1/stage2 notebook, each system one evaluate notebook, each system of the study's
``analysis`` section one analyze notebook (translation quality and representation alignment), and the report
notebook comes last. The plan decides exactly as a stage does: a run is done only when it finished with the same fingerprint
(config, data, the run it starts from); a changed run and everything downstream of it are todo. A run whose data
is absent is skipped with the reason (never trained on substitute data), and so is everything that depends on it.
Executed notebooks are kept in ``runs/<size>/notebooks/`` as the record of what ran.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from qalign_lib.analysis import pipeline
from qalign_lib.core import config, files, layout, locks, log, reportdir
from qalign_lib.core.errors import QAlignError, RunError, StudyError
from qalign_lib.core.files import write_json
from qalign_lib.evaluation import evaluator
from qalign_lib.study import studies
from qalign_lib.train import stages, training

logger = log.get(__name__)


@dataclass
class Step:
    kind: str  # train | evaluate | analyze | report
    name: str
    notebook: str
    params: dict
    status: str  # todo | done | skip
    reason: str = ""


def notebook_path(name: str) -> Path:
    return config.PROJECT_ROOT / "notebooks" / f"{name}.ipynb"


def _target_params(ref: str) -> dict[str, str]:
    """The notebook parameter that names a system's model: ``run`` (a run or ``base``) or ``model`` (``model:<id>``)."""
    return {k: v for k, v in layout.target_of(ref).items() if v is not None}


def _override_params(run: studies.Run) -> dict:
    """A run's overrides as notebook parameters: None is passed as "null" (a notebook's None keeps the size's value,
    so full fine-tuning, ``lora_r: null``, must be spelled out)."""
    return {k: "null" if v is None else v for k, v in run.overrides.items()}


def _train_status(s: studies.Study, run: studies.Run, todo: dict[str, str]) -> tuple[str, str]:
    """(status, reason) of one run of the study: compares fingerprints exactly as the stage notebook will, with the
    run's overrides."""
    cfg = run.config(s.cfg)
    if run.init in todo:
        return "todo", f"after {run.init} ({todo[run.init]})"
    if run.stage == 1:
        phases = [(run.name, run.trained_on(), run.init)]
    else:
        phases = [(name, [dataset], init) for name, dataset, init in stages.phases(cfg, run.init, run.stage2_data, run.name)]
    for name, tasks, init in phases:
        if name != phases[0][0] and phases[0][0] in todo:
            break
        try:
            state = training.status(cfg, name, tasks, run.langs if run.stage == 1 or "gsm8kinstruct" in tasks else None,
                                    init, run.stage)
        except QAlignError as e:  # e.g. the init phase is not finished yet
            return "todo", str(e).split(";")[0]
        if state != "done":
            return "todo", "inputs changed since it was trained" if state == "changed" else ""
    return "done", "finished with the same inputs"


def plan(s: studies.Study, only: list[str] | None = None, report: bool = True) -> list[Step]:
    steps: list[Step] = []
    blocked: dict[str, str] = {}
    todo: dict[str, str] = {}
    for name in studies.order(s, only):
        run = s.runs[name]
        missing = studies.missing(s, name)
        params = {"size": s.size, "run_name": name}
        if run.stage == 1:
            nb, params = "stage1", {**params, "task": run.task, "langs": ",".join(run.langs)}
        else:
            nb, params = "stage2", {**params, "init": run.init, "stage2_data": ",".join(run.stage2_data), "langs": ",".join(run.langs)}
        params.update(_override_params(run))
        if run.init in blocked:
            status, reason = "skip", f"depends on {run.init}, which is skipped"
        elif missing:
            status, reason = "skip", "missing data: " + "; ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        else:
            status, reason = _train_status(s, run, todo)
        if status == "skip":
            blocked[name] = reason
        elif status == "todo":
            todo[name] = reason or "not trained yet"
        steps.append(Step("train", name, nb, params, status, reason))
    targets = [n for n in s.systems if not only or n in only or s.systems[n] in only or s.systems[n] in studies.order(s, only)]
    no_bench = studies.missing_benchmarks(s)
    for system in targets:
        run = s.systems[system]
        params = {"size": s.size, "benchmarks": ",".join(s.benchmarks)}
        params.update(_target_params(run))
        if no_bench:
            steps.append(Step("evaluate", system, "evaluate", params, "skip", "missing benchmark data: " + "; ".join(no_bench[:3])
                              + (" ..." if len(no_bench) > 3 else "")))
            continue
        if run in blocked:
            steps.append(Step("evaluate", system, "evaluate", params, "skip", f"its run {run} is skipped"))
            continue
        if run in todo:
            steps.append(Step("evaluate", system, "evaluate", params, "todo", f"after training {run}"))
            continue
        why = evaluator.incomplete(s.cfg, run=params.get("run"), model=params.get("model"), benchmarks=s.benchmarks)
        steps.append(Step("evaluate", system, "evaluate", params, "todo" if why else "done", why or "complete"))
    no_data = studies.missing_analysis_data(s)
    analyses = [(system, ref, len(refs)) for system in s.analyses for refs in [studies.analysis_refs(s, system)] for ref in refs]
    for system, ref, n_refs in analyses:  # what stage 1 did to each model (each seed): translation and representations
        if only and not (system in only or ref in only or ref in studies.order(s, only)):
            continue
        params = {"size": s.size, **_target_params(ref)}
        name = system if n_refs == 1 else f"{system} [{ref}]"
        if no_data:
            status, reason = "skip", "missing benchmark data: " + "; ".join(no_data[:3]) + (" ..." if len(no_data) > 3 else "")
        elif ref in blocked:
            status, reason = "skip", f"its run {ref} is skipped"
        elif ref in todo:
            status, reason = "todo", f"after training {ref}"
        else:
            why = pipeline.incomplete(s.cfg, run=params.get("run"), model=params.get("model"))
            status, reason = ("todo", why) if why else ("done", "complete")
        steps.append(Step("analyze", name, "analyze", params, status, reason))
    if report:
        evaluated = any(st.kind in ("evaluate", "analyze") and st.status != "skip" for st in steps)
        pending = any(st.status == "todo" for st in steps)
        status, reason = ("todo", "") if evaluated else ("skip", "no system can be evaluated" + (
            f" (missing benchmark data: {'; '.join(no_bench[:2])})" if no_bench else ""))
        if evaluated and not pending:
            why = report_stale(s)
            status, reason = ("todo", why) if why else ("done", "made from the same results, study, size and code")
        steps.append(Step("report", "report", "report", {"size": s.size, "study": s.name}, status, reason))
    return steps


def report_inputs(s: studies.Study) -> str:
    """A digest of what a study's report is made from: the package's code and the report notebook (content), the
    study's resolved config and its file, and every file under ``eval/`` and ``analysis/`` of each system and analysed
    run (path relative to the runs root, size, modification time). Equal digests: the report would come out the
    same, so ``qalign study`` does not rebuild it."""
    h = hashlib.sha256()
    root = config.PROJECT_ROOT
    for path in sorted((root / "qalign_lib").rglob("*.py")) + [notebook_path("report")]:
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    h.update(json.dumps(dataclasses.asdict(s.cfg), sort_keys=True, default=str).encode())
    if s.source and Path(s.source).is_file():
        h.update(Path(s.source).read_bytes())
    refs = dict.fromkeys([*s.systems.values(), *(r for system in s.analyses for r in studies.analysis_refs(s, system))])
    runs = layout.runs_dir()
    for ref in refs:
        try:
            target = layout.target_of(ref)
            home, _ = layout.model_home(s.size, s.cfg.model, run_name=target["run"], model=target["model"])
        except (RunError, QAlignError):
            h.update(f"absent:{ref}".encode())
            continue
        for sub in ("eval", "analysis"):
            for path in sorted((home / sub).rglob("*")) if (home / sub).is_dir() else []:
                if path.is_file():
                    st = path.stat()
                    h.update(f"{path.relative_to(runs).as_posix()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def report_stale(s: studies.Study) -> str | None:
    """Why the study's report must be written again, or None: it was interrupted or is being written (its
    ``INCOMPLETE.md``), has no index, was not made by ``qalign study``, was made from other inputs (the stamp's
    digest, :func:`report_inputs`), or a file it wrote is missing or changed (the stamp's manifest)."""
    out = layout.report_dir(s.size, s.name)
    why = reportdir.incomplete(out)
    if why:
        return why
    stamp = layout.report_stamp(s.size, s.name)
    if not stamp.is_file():
        return f"not made by `qalign study` yet (no {stamp})"
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        recorded = None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("files"), dict) or not recorded["files"]:
        return f"its stamp {stamp} does not list the report's files"
    if recorded.get("inputs") != report_inputs(s):
        return "its results, study, size or code changed since it was made"
    return reportdir.changed(out, recorded["files"])


def stamp_report(s: studies.Study, digest: str) -> None:
    """Record that the study's report was made from inputs with ``digest`` (:func:`report_inputs`, taken before it
    ran), with the name and content hash of every file it wrote."""
    out = layout.report_dir(s.size, s.name)
    write_json(layout.report_stamp(s.size, s.name), {"inputs": digest, "report": str(out),
                                                     "files": reportdir.manifest(out)})


# ----------------------------------------------------------------------------------------------------------------
# Ctrl-C while a notebook runs: one line, not the kernel's tracebacks


_QUIET_AFTER_INTERRUPT = ("papermill", "nbclient", "traitlets", "jupyter_client", "asyncio")


@contextlib.contextmanager
def interruptible_kernel():
    """The kernel manager a notebook runs with (papermill's ``km``). It behaves as papermill's own, except that a
    shutdown asked for while the notebook still runs (nbclient's SIGINT/SIGTERM handler) kills the kernel at once
    instead of sending it a shutdown request it would answer with a ZMQ traceback on our stderr; a
    KeyboardInterrupt (or the kernel's death after one) leaves as KeyboardInterrupt, with the kernel gone and the
    loggers that would narrate its teardown silenced. A notebook that finishes or fails shuts its kernel down
    gracefully, as before."""
    from jupyter_client.manager import AsyncKernelManager
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    class Kernel(AsyncKernelManager):
        running = True  # the notebook has not returned yet: any shutdown now is an interruption
        interrupted = False

        async def _async_shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
            if self.running and not restart:
                await self.kill_quietly()
                return None
            return await super()._async_shutdown_kernel(now=now, restart=restart)

        shutdown_kernel = _async_shutdown_kernel

        async def kill_quietly(self) -> None:
            """SIGKILL, no interrupt and no shutdown request first: nothing left to print a traceback."""
            self.interrupted = True
            _quiet()
            if self.has_kernel:
                await self._async_kill_kernel()
                await self._async_cleanup_resources()

    km = Kernel(kernel_name="python3")
    try:
        yield km
    except KeyboardInterrupt:
        km.interrupted = True
        raise
    except (PapermillExecutionError, DeadKernelError) as e:
        if km.interrupted or getattr(e, "ename", None) == "KeyboardInterrupt":
            km.interrupted = True
            raise KeyboardInterrupt from None
        raise
    finally:
        import asyncio

        try:
            if km.interrupted:
                asyncio.run(km.kill_quietly())
            elif km.has_kernel:
                km.running = False
                asyncio.run(km.shutdown_kernel())
        except Exception:  # noqa: BLE001 -- the kernel is going away either way
            pass


def _quiet() -> None:
    """Silence the notebook machinery's loggers for the rest of this process (after a Ctrl-C only)."""
    import logging

    for name in _QUIET_AFTER_INTERRUPT:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def execute(step: Step, out_dir: Path, index: int) -> Path:
    import papermill as pm
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    out = out_dir / f"{index:02d}-{step.kind}-{step.name.replace('/', '_').replace(' ', '_')}.ipynb"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with notebook_output(out, f"{step.kind} {step.name}") as partial, interruptible_kernel() as km:
            pm.execute_notebook(str(notebook_path(step.notebook)), str(partial), parameters=step.params,
                                kernel_name="python3", log_output=True, progress_bar=False,
                                cwd=str(config.PROJECT_ROOT), km=km)
    except PapermillExecutionError as e:
        raise StudyError(f"{step.kind} {step.name} failed in {step.notebook}.ipynb: {e.ename}: {e.evalue}\n"
                         f"  executed notebook with the full traceback: {out}") from None
    except DeadKernelError:
        raise StudyError(f"{step.kind} {step.name}: the kernel died (out of memory?) while running {step.notebook}.ipynb; "
                         f"rerun `qalign study` to resume from what is finished (partial notebook: {out})") from None
    return out


@contextlib.contextmanager
def notebook_output(out: Path, what: str):
    """Where papermill writes the executed notebook ``out`` as it goes: a partial file beside it, renamed to ``out``
    at the end (also after a failed cell or a dead kernel: then it is the record of what failed). A full disk while
    writing it is a StudyError naming ``out``; the partial file is removed and a previous ``out`` kept intact (papermill
    opens its output for writing at each save: a full disk would leave an empty notebook)."""
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    try:
        yield partial
    except BaseException as e:
        if files.is_disk_full(e):
            partial.unlink(missing_ok=True)
            raise StudyError(f"{what}: no space left on device while writing its executed notebook {out}; free "
                             f"space (`df -h {out.parent}`), then rerun `qalign study`: it resumes from what is "
                             "finished") from None
        _publish(partial, out)
        raise
    _publish(partial, out)


def _publish(partial: Path, out: Path) -> None:
    """The partial notebook becomes ``out`` when it holds anything; an empty one is removed."""
    with contextlib.suppress(OSError):
        if partial.stat().st_size:
            os.replace(partial, out)
        else:
            partial.unlink()


def run_study(name: str, size: str | None = None, only: list[str] | None = None, dry_run: bool = False,
              report: bool = True) -> int:
    """Run (or with ``dry_run`` only print) a study's plan; raises StudyError naming a failed step."""
    s = studies.load(name, size=size)
    steps = plan(s, only, report)
    width = max(len(st.name) for st in steps)
    logger.info("study %s (%s), size %s, model %s: %d steps", s.name, s.source, s.size, s.cfg.model, len(steps))
    for i, st in enumerate(steps, 1):
        logger.info("  %2d. %-8s %-*s  %-4s  %s.ipynb %s%s", i, st.kind, width, st.name, st.status, st.notebook, st.params,
                    f"  ({st.reason})" if st.reason else "")
    if dry_run:
        return 0
    with locks.lock(layout.study_lock(s.size), f"`qalign study` for size {s.size}"):
        return _run(s, steps)


def _run(s: studies.Study, steps: list[Step]) -> int:
    import logging

    log.attach("papermill", logging.INFO)
    out_dir = layout.notebooks_dir(s.size)
    start = time.time()
    todo = [st for st in steps if st.status == "todo"]
    for k, st in enumerate(todo, 1):
        t = time.time()
        logger.info("\n=== [%d/%d] %s %s (%s.ipynb) — %.0fs elapsed ===", k, len(todo), st.kind, st.name, st.notebook,
                    time.time() - start)
        digest = report_inputs(s) if st.kind == "report" else None  # what the report is about to read
        path = execute(st, out_dir, steps.index(st) + 1)
        if digest is not None:
            stamp_report(s, digest)
        logger.info("=== done in %.0fs: %s", time.time() - t, path)
    skipped = [st for st in steps if st.status == "skip"]
    logger.info("\nstudy %s: %d steps run, %d already complete, %d skipped, %.0fs", s.name, len(todo),
                len(steps) - len(todo) - len(skipped), len(skipped), time.time() - start)
    for st in skipped:
        logger.info("  skipped %s %s: %s", st.kind, st.name, st.reason)
    return 0
