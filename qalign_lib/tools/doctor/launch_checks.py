"""What the launch configs need of this node: GPU memory per process and host RAM per node of the size's launch and
of every other (the memory model's predictions, :mod:`qalign_lib.tools.doctor.memory`), bf16, and an all-reduce
across the GPUs (NCCL; two CPU processes over gloo on a machine without a GPU)."""
from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path

from qalign_lib.core import config
from qalign_lib.tools.doctor.machine import FAIL, GB, NO_GPU, PASS, SKIP, WARN, Node, Row, environ
from qalign_lib.tools.doctor.memory import LAUNCHES, Footprint, Shape, describe, footprint, terms_text
from qalign_lib.train import training


def fit_rows(node: Node, cfg: config.Config, fp: Footprint, shape: Shape, what: str) -> list[Row]:
    """The GPUs row and the host memory row of one footprint."""
    smallest = min(g.memory_gib for g in node.gpus)
    terms = terms_text(fp)
    detail = (f"{what}; {fp.launch} of {shape.params / 1e9:.2f}B parameters over {fp.processes} process(es) needs "
              f"~{fp.device_gib:.0f} GiB each (GiB: {terms})")
    fix = ("-p launch zero3_offload (states in host RAM), more GPUs (-p num_processes, -p num_machines), "
           "-p per_device_batch_size 1 (less activation memory" + (" but more accumulation micro-steps)" if
                                                                    "no_sync gradients" not in fp.terms else
                                                                    "), or GPUs with more memory"))
    if fp.device_gib > smallest:
        rows = [Row("GPUs", FAIL, detail, fix)]
    elif fp.device_gib > 0.9 * smallest:
        rows = [Row("GPUs", WARN, detail + " (tight)", fix)]
    else:
        rows = [Row("GPUs", PASS, detail)]
    host = (f"{node.host_ram_gib:.0f} GiB; {fp.launch} over {math.ceil(fp.processes / max(cfg.num_machines, 1))} "
            f"process(es) per node peaks at ~{fp.host_gib:.0f} GiB (loading, offloaded states, checkpoint gathering)")
    host_fix = {"fsdp": "fsdp_cpu_ram_efficient_loading: true and fsdp_state_dict_type: SHARDED_STATE_DICT "
                        "(params/launch/fsdp.yaml), or more machines",
                "zero3_offload": "-p launch zero3 (no offload) or more machines"}.get(
        fp.launch, "-p launch fsdp or zero3 (partitioned loading), or more machines")
    if fp.host_gib > node.host_ram_gib:
        rows.append(Row("host memory", FAIL, host, host_fix))
    elif fp.host_gib > 0.9 * node.host_ram_gib:
        rows.append(Row("host memory", WARN, host + " (tight)", host_fix))
    else:
        rows.append(Row("host memory", PASS, host))
    return rows


def check_launches(node: Node, cfg: config.Config, shape: Shape | None) -> list[Row]:
    """The model's prediction for every launch config at this size ("model: <launch>" rows): on a GPU node checked
    against its GPUs and host RAM, elsewhere printed (SKIP) so that 7B/13B can be planned from any machine."""
    if shape is None:
        return [Row("model: launches", SKIP, f"no config.json known for {cfg.model}: nothing to predict")]
    gpu = node.has_gpu or cfg.requires_gpu
    many = cfg.num_processes if cfg.num_processes > 1 else max(len(node.gpus), 8 if gpu else 2)
    rows = [Row("model: parameters", PASS, f"{cfg.model}: {shape.params / 1e9:.3f}B ({shape.source}: hidden "
                f"{shape.hidden}, {shape.layers} layers, vocabulary {shape.vocab})")]
    for launch in LAUNCHES:
        fp = footprint(shape, cfg, gpu, launch, 1 if launch == "single" else many)
        check = f"model: {launch} x{fp.processes}" + (" (the size's)" if launch == cfg.launch else "")
        if not node.has_gpu:
            rows.append(Row(check, SKIP, ("predicted on GPUs: " if gpu else "predicted on CPU processes: ") + describe(fp, gpu)))
            continue
        fits = [r.status for r in fit_rows(node, cfg, fp, shape, "")]
        status = FAIL if FAIL in fits else WARN if WARN in fits else PASS
        if status != PASS and launch != cfg.launch:  # another launch that would not fit: said, not a failure here
            rows.append(Row(check, SKIP, f"not the size's launch; would not fit this node: {describe(fp, gpu)}"))
        else:
            rows.append(Row(check, status, describe(fp, gpu), "" if status == PASS else "see the GPUs and host memory rows"))
    return rows


def _dividing(cfg: config.Config, most: int) -> int:
    """The largest process count up to ``most`` that splits the batch exactly (training refuses any other)."""
    return next(k for k in range(max(most, 1), 0, -1) if training.batch_split(cfg, k)["exact"])


def check_gpus(node: Node, cfg: config.Config, shape: Shape | None) -> list[Row]:
    """GPU memory per process and host RAM per node of the size's launch (:func:`footprint`), and bf16."""
    if not node.has_gpu:
        return [Row("GPUs", SKIP, NO_GPU), Row("bf16 / tf32", SKIP, NO_GPU)]
    rows = []
    n = len(node.gpus)
    smallest = min(g.memory_gib for g in node.gpus)
    names = ", ".join(sorted({g.name for g in node.gpus}))
    per_machine = math.ceil(cfg.num_processes / cfg.num_machines)
    what = f"{n} x {names}, {smallest:.0f} GiB each"
    if cfg.launch != "single" and per_machine > n:
        rows.append(Row("GPUs", FAIL, f"{what}; size {cfg.size} launches {per_machine} processes per machine",
                        f"-p num_processes {_dividing(cfg, n * cfg.num_machines)} (the effective batch stays "
                        f"{cfg.batch_size}: accumulation makes up the rest), or a node with more GPUs"))
    elif shape is None:
        rows.append(Row("GPUs", WARN, f"{what}; the memory {cfg.model} needs is unknown (no config.json to read)"))
    else:
        rows += fit_rows(node, cfg, footprint(shape, cfg, gpu=True), shape, what)
    old = [g for g in node.gpus if g.capability < (8, 0)]
    cap = min(g.capability for g in node.gpus)
    if cfg.dtype == "bfloat16" and (not node.bf16 or old):
        rows.append(Row("bf16 / tf32", FAIL, f"{names} (compute capability {cap[0]}.{cap[1]}) has no bf16; size "
                        f"{cfg.size} trains in bf16", "a GPU of compute capability >= 8.0 (A100, H100, L40, ...); "
                        "-p dtype float32 runs elsewhere but is slower and not the paper's recipe"))
    else:
        rows.append(Row("bf16 / tf32", PASS, f"compute capability {cap[0]}.{cap[1]}: bf16 " +
                        ("yes" if node.bf16 else "not needed (dtype float32)") + ", tf32 " + ("yes" if cap >= (8, 0) else "no")))
    return rows


def _allreduce_worker(rank: int, world: int, backend: str, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world, device_id=device if backend == "nccl" else None)
    try:
        x = torch.full((1024,), float(rank + 1), device=device)
        dist.all_reduce(x)
        ok = bool(torch.all(x == world * (world + 1) / 2))
        big = torch.ones((256 if backend == "nccl" else 16) * 2 ** 20 // 4, device=device)  # MiB: bandwidth on GPUs
        dist.all_reduce(big)  # warm-up
        if backend == "nccl":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(3):
            dist.all_reduce(big)
        if backend == "nccl":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / 3
        busbw = big.numel() * 4 * 2 * (world - 1) / world / seconds / GB  # nccl-tests' bus bandwidth
        if rank == 0:
            Path(out).write_text(json.dumps({"ok": ok, "busbw": busbw, "mib": big.numel() * 4 / 2 ** 20}))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def allreduce(world: int, backend: str, timeout: float = 180) -> dict:
    """Run an all-reduce over ``world`` processes (spawned); {"ok", "busbw" (GB/s), "mib"} or {"error": ...}."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="qalign-allreduce-") as tmp:
        out = Path(tmp) / "result.json"
        env = {"OMP_NUM_THREADS": "1"} if backend == "gloo" else {}
        with environ(**env):
            ctx = mp.start_processes(_allreduce_worker, args=(world, backend, free_port(), str(out)), nprocs=world,
                                     join=False, start_method="spawn")
            deadline = time.time() + timeout
            try:
                while not ctx.join(timeout=1):
                    if time.time() > deadline:
                        for p in ctx.processes:
                            p.kill()
                        return {"error": f"no result within {timeout:.0f} s (hung)"}
            except Exception as e:  # a worker died: its traceback's last line says why
                return {"error": str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}
        return json.loads(out.read_text()) if out.is_file() else {"error": "the workers wrote no result"}


def check_allreduce(node: Node, result: dict | None) -> list[Row]:
    """``result``: what :func:`allreduce` returned (None: not run)."""
    if not node.has_gpu:
        rows = [Row("NCCL all-reduce", SKIP, NO_GPU)]
        if result is not None:
            if "error" in result or not result.get("ok"):
                rows.append(Row("all-reduce (gloo, 2 CPU processes)", FAIL, result.get("error", "wrong sum"),
                                "torch.distributed cannot talk over loopback: check that 127.0.0.1 is reachable"))
            else:
                rows.append(Row("all-reduce (gloo, 2 CPU processes)", PASS,
                                f"sum correct, {result['mib']:.0f} MiB at {result['busbw']:.1f} GB/s"))
        return rows
    n = len(node.gpus)
    if not node.nccl:
        return [Row("NCCL all-reduce", FAIL, "torch.distributed has no NCCL", "pip install -c constraints/gpu.txt "
                    "--force-reinstall torch (the CUDA wheel brings nvidia-nccl)")]
    if result is None:
        return [Row("NCCL all-reduce", SKIP, "not run")]
    if "error" in result:
        return [Row("NCCL all-reduce", FAIL, f"{n} GPUs: {result['error']}",
                    "rerun with NCCL_DEBUG=INFO to see the transport; check NCCL_P2P_DISABLE / NCCL_IB_* settings and "
                    "that no other job holds the GPUs")]
    if not result.get("ok"):
        return [Row("NCCL all-reduce", FAIL, f"{n} GPUs: the sum is wrong", "a faulty GPU or link: run nccl-tests "
                    "and `nvidia-smi topo -m`; report it to the node's admins")]
    detail = f"{n} GPUs, sum correct, {result['mib']:.0f} MiB at {result['busbw']:.0f} GB/s bus bandwidth"
    if n > 1 and result["busbw"] < 10:
        return [Row("NCCL all-reduce", WARN, detail + " (slow: no NVLink/P2P?)",
                    "check `nvidia-smi topo -m` and NCCL_P2P_DISABLE; FSDP/ZeRO-3 will be slow")]
    return [Row("NCCL all-reduce", PASS, detail)]
