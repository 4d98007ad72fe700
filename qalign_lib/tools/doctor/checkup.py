"""The whole doctor (:func:`run`): every check of this machine, then (unless ``quick``) the smoke run; the report
and its table (:func:`render`)."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qalign_lib.core import config, layout, log, versions
from qalign_lib.tools.doctor import launch_checks, machine, storage
from qalign_lib.tools.doctor.machine import FAIL, GB, PASS, SKIP, WARN, Node, Row
from qalign_lib.tools.doctor.memory import disk_need, footprint, model_shape

logger = log.get(__name__)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    stack: dict = field(default_factory=dict)
    smoke_dir: str | None = None

    @property
    def failed(self) -> bool:
        return any(r.status == FAIL for r in self.rows)

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.rows) for s in (PASS, WARN, FAIL, SKIP)}

    def to_json(self) -> dict:
        return {"stack": self.stack, "rows": [asdict(r) for r in self.rows], "smoke_dir": self.smoke_dir}


def default_target(node: Node, study_name: str | None, size: str | None) -> tuple[str, str | None, Row]:
    """What a bare ``qalign doctor`` checks: on a GPU node the job it is there for (the paper study at 7B), elsewhere
    the tiny study; the row says which, and why."""
    if study_name is None and size is None and node.has_gpu:
        return "paper", "7b", Row("checked", PASS, "study paper, size 7b: a GPU node's default (--study and --size "
                                  "choose another)")
    chosen = f"study {study_name or 'tiny'}, size {size or 'of the study'}"
    if study_name is None and size is None:
        return "tiny", None, Row("checked", PASS, chosen + ": the default without a GPU (--study and --size choose another)")
    return study_name or "tiny", size, Row("checked", PASS, chosen + " (as asked)")


def run(study_name: str | None = None, size: str | None = None, quick: bool = False, data_root=None,
        smoke_dir: str | os.PathLike | None = None, keep: bool = False, node: Node | None = None) -> Report:
    """Every check, then (unless ``quick``) the smoke run. No study and no size: :func:`default_target`.
    ``smoke_dir``: where the smoke writes (default: a new temporary directory, removed when every smoke row passed
    unless ``keep``)."""
    import torch

    from qalign_lib.study import studies
    from qalign_lib.tools.doctor import smoke_checks  # not at the top: smoke_runs runs as python -m, see __init__

    node = machine.probe() if node is None else node
    report = Report(stack=versions.stack())
    rows = report.rows
    study_name, size, target = default_target(node, study_name, size)
    rows.append(target)
    installed = versions.installed_all()
    kind = "gpu" if node.gpus else "cpu"  # a node with GPUs is held to the GPU set, even with a CPU build of torch
    rows.append(machine.check_python(report.stack["python"]))
    rows += machine.check_versions(kind, installed, versions.tested_set(kind))
    rows.append(machine.check_cuda_build(node, torch.__version__))
    rows.append(machine.check_driver(node))
    data_row, s = storage.check_data(study_name, size, data_root)
    cfg = s.cfg if s is not None else config.resolve(size or "tiny")
    shape = model_shape(cfg.model)
    rows += launch_checks.check_gpus(node, cfg, shape)
    rows += launch_checks.check_launches(node, cfg, shape)
    rows += machine.check_kernels(node, cfg, installed)
    logger.info("doctor: all-reduce over %s ...", f"{len(node.gpus)} GPUs (NCCL)" if node.has_gpu else "2 CPU processes (gloo)")
    result = None
    if node.has_gpu and node.nccl:
        result = launch_checks.allreduce(len(node.gpus), "nccl")
    elif not node.has_gpu:
        result = launch_checks.allreduce(2, "gloo")
    rows += launch_checks.check_allreduce(node, result)
    todo = [r for r in studies.order(s) if not _done(cfg.size, r)] if s is not None else []
    where, free = storage.free_bytes(layout.runs_dir())
    fp = footprint(shape, cfg, node.has_gpu or cfg.requires_gpu) if shape else None
    rows.append(storage.check_disk(where, free, disk_need(fp, len(todo)),
                           f"study {study_name}, size {cfg.size} ({len(todo)} run(s) to train" +
                           (f"; {cfg.launch} checkpoints ~{fp.checkpoint_bytes / GB:.1f} GB each, written by {fp.writers})" if fp else ")")))
    rows.append(storage.check_model_access(cfg.model))
    rows.append(data_row)
    if quick:
        rows.append(Row("smoke run", SKIP, "--quick"))
        return report
    work = Path(smoke_dir) if smoke_dir else Path(tempfile.mkdtemp(prefix="qalign-doctor-"))
    report.smoke_dir = str(work)
    try:
        rows += smoke_checks.smoke(node, work)
    except Exception as e:  # noqa: BLE001 - a broken smoke is a row with the reason, and the directory is kept
        rows.append(Row("smoke run", FAIL, f"{type(e).__name__}: {e}".splitlines()[0], f"see {work}"))
    smoke_ok = not any(r.status == FAIL for r in rows if r.check.startswith("smoke"))
    if smoke_ok and not keep and not smoke_dir:
        shutil.rmtree(work, ignore_errors=True)
        report.smoke_dir = None
    return report


def _done(size: str, run_name: str) -> bool:
    return layout.run(size, run_name).is_done()


def render(report: Report) -> str:
    """The table: check, status, detail, and under a row that is not PASS its fix."""
    width = max([len(r.check) for r in report.rows] + [5])
    lines = [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  {'-' * 60}"]
    for r in report.rows:
        lines.append(f"{r.check:<{width}}  {r.status:<6}  {r.detail}")
        if r.fix and r.status in (FAIL, WARN):
            lines.append(f"{'':<{width}}          fix: {r.fix}")
    c = report.counts()
    lines.append("")
    lines.append(f"doctor: {c[PASS]} PASS, {c[WARN]} WARN, {c[FAIL]} FAIL, {c[SKIP]} SKIP" +
                 (f"; smoke run kept in {report.smoke_dir}" if report.smoke_dir else ""))
    return "\n".join(lines)
