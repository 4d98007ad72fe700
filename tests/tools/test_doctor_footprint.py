"""The doctor's memory and disk model (memory.footprint): parameter counts from meta-device models, the GPU memory
per process, the host RAM per node (loading included) and the checkpoint bytes of every launch config, checked with
faked GPU facts (fast) and against what the CPU smoke really writes and uses (slow)."""
from pathlib import Path

import pytest

from qalign_lib.core import config
from qalign_lib.models import modeling
from qalign_lib.tools.doctor import launch_checks, machine, memory, smoke_checks, smoke_runs
from qalign_lib.tools.doctor.machine import FAIL, PASS, SKIP, Gpu, Node

H100 = Gpu("NVIDIA H100 80GB HBM3", 79.2, (9, 0))
A100_40 = Gpu("NVIDIA A100-SXM4-40GB", 39.4, (8, 0))
L4 = Gpu("NVIDIA L4", 22.0, (8, 9))


def gpu_node(gpu: Gpu, n: int = 8, ram: float = 2000) -> Node:
    return Node(cuda_available=True, torch_cuda="13.0", gpus=(gpu,) * n, driver="580.95.05", bf16=True, nccl=True,
                host_ram_gib=ram, deepspeed=True)


def rows_of(rows) -> dict:
    return {r.check: r for r in rows}


@pytest.fixture(scope="module")
def shapes():
    return {size: memory.model_shape(config.resolve(size).model) for size in ("7b", "13b", "tiny")}


def test_parameters_are_counted_on_a_meta_device_model(shapes):
    """LLaMA-2's published counts (and SmolLM2's), from LlamaConfig on the meta device, not a rounded constant."""
    assert shapes["7b"].params == 6_738_415_616 and shapes["7b"].source == "meta-device model"
    assert shapes["13b"].params == 13_015_864_320
    assert shapes["tiny"].params == 134_515_008  # tied embeddings counted once
    assert (shapes["13b"].hidden, shapes["13b"].layers, shapes["13b"].vocab) == (5120, 40, 32000)


def test_fsdp_counts_the_unsharded_no_sync_gradients(shapes):
    """Accumulation micro-steps run under no_sync, where FSDP keeps every unit's unsharded gradient in the compute
    dtype (bf16: 2 B/param of the whole model per GPU): 13B FSDP on 8 x 40 GB does not fit, 7B on 24 GB cards
    neither (both PASSed when only the sharded 16 B/param were counted)."""
    seven, thirteen = config.resolve("7b"), config.resolve("13b").replace(launch="fsdp")
    fp = memory.footprint(shapes["7b"], seven, gpu=True)
    assert fp.terms["no_sync gradients"] == pytest.approx(2 * 6_738_415_616 / machine.GiB)
    assert fp.device_gib > 2 * 12.5  # sharded states + the unsharded gradients
    row = rows_of(launch_checks.check_gpus(gpu_node(A100_40), thirteen, shapes["13b"]))["GPUs"]
    assert row.status == FAIL and "no_sync gradients 24.2" in row.detail
    row = rows_of(launch_checks.check_gpus(gpu_node(L4), seven, shapes["7b"]))["GPUs"]
    assert row.status == FAIL and "no_sync gradients 12.6" in row.detail
    # no accumulation (batch 16 = 2 per GPU x 8 GPUs): no no_sync step, no unsharded gradients
    assert "no_sync gradients" not in memory.footprint(shapes["7b"], seven.replace(batch_size=16), gpu=True).terms
    # DeepSpeed partitions gradients at every micro-step
    assert "no_sync gradients" not in memory.footprint(shapes["7b"], seven, gpu=True, launch="zero3").terms


def test_host_ram_is_checked_for_every_launch_loading_included(shapes):
    """DDP and single load the fp32 model in every process; FSDP with cpu_ram_efficient_loading in rank 0 only;
    ZeRO-3 with zero3_init_flag partitioned (one shared memory map of the files)."""
    seven, p = config.resolve("7b"), 6_738_415_616
    node = gpu_node(H100, ram=128)
    fsdp_efficient = {"fsdp_cpu_ram_efficient_loading": True, "fsdp_state_dict_type": "SHARDED_STATE_DICT"}
    efficient = memory.footprint(shapes["7b"], seven, True, spec=fsdp_efficient)
    every_rank = memory.footprint(shapes["7b"], seven, True, spec={"fsdp_state_dict_type": "SHARDED_STATE_DICT"})
    assert efficient.host_gib == pytest.approx(8 * memory.PROCESS_GIB["gpu"] + 4 * p / machine.GiB)
    assert every_rank.host_gib == pytest.approx(8 * memory.PROCESS_GIB["gpu"] + 8 * 4 * p / machine.GiB)  # ~225 GiB
    for launch in ("ddp", "fsdp", "zero3"):
        rows = rows_of(launch_checks.check_gpus(node, seven.replace(launch=launch), shapes["7b"]))
        assert "host memory" in rows, launch
    assert rows_of(launch_checks.check_gpus(node, seven.replace(launch="ddp"), shapes["7b"]))["host memory"].status == FAIL
    assert rows_of(launch_checks.check_gpus(node, seven.replace(launch="zero3"), shapes["7b"]))["host memory"].status == PASS
    # 13B ZeRO-3 built whole in each of 8 processes (no zero3_init_flag) needs ~400 GiB; partitioned it does not
    thirteen = config.resolve("13b")
    whole = memory.footprint(shapes["13b"], thirteen, True, spec={"zero3_init_flag": False})
    assert whole.host_gib > 400 > 60 > memory.footprint(shapes["13b"], thirteen, True, spec={"zero3_init_flag": True}).host_gib
    # FULL_STATE_DICT: rank 0 gathers weights and both moments in host RAM to save a checkpoint
    full = memory.footprint(shapes["7b"], seven, True, spec={**fsdp_efficient, "fsdp_state_dict_type": "FULL_STATE_DICT"})
    assert full.host_gib == pytest.approx(8 * memory.PROCESS_GIB["gpu"] + 12 * p / machine.GiB)


def test_checkpoint_bytes_per_launch_and_who_writes_them(shapes):
    """transformers' _save_checkpoint: FULL_STATE_DICT FSDP writes model.safetensors AND pytorch_model_fsdp.bin (fp32)
    plus the moments: 16 B/param from rank 0; SHARDED_STATE_DICT 12 B/param, every rank 1/N; DDP 12; ZeRO-3 the
    16-bit model + fp32 master weights and moments (14 on GPUs in bf16, 16 on CPUs in fp32)."""
    p, seven = 6_738_415_616, config.resolve("7b")

    def ckpt(launch, gpu=True, **spec):
        fp = memory.footprint(shapes["7b"], seven, gpu, launch=launch, spec=spec)
        return (fp.checkpoint_bytes - memory.CKPT_EXTRA) / p, fp.writers

    assert ckpt("fsdp", fsdp_state_dict_type="FULL_STATE_DICT") == (16, "rank 0")
    assert ckpt("fsdp", fsdp_state_dict_type="SHARDED_STATE_DICT") == (12, "every rank, 1/8 each")
    assert ckpt("ddp")[0] == 12 and ckpt("single")[0] == 12
    assert ckpt("zero3")[0] == 14 and ckpt("zero3", gpu=False)[0] == 16 and ckpt("zero3_offload")[0] == 14
    fp = memory.footprint(shapes["7b"], seven, True, spec={"fsdp_state_dict_type": "FULL_STATE_DICT"})
    assert memory.disk_need(fp, 1) == pytest.approx(4 * p + 3 * (16 * p + memory.CKPT_EXTRA) + 2e9)


def test_every_launch_is_predicted_at_7b_and_13b(shapes):
    """`qalign doctor --size 7b` prints one row per launch config; on a CPU they are predictions (SKIP), on 8 x H100
    the size's launch and the others that fit PASS, and the ones that cannot fit are said, not failed."""
    for size in ("7b", "13b"):
        cfg = config.resolve(size)
        rows = rows_of(launch_checks.check_launches(Node(host_ram_gib=24), cfg, shapes[size]))
        own = f"model: {cfg.launch} x8 (the size's)"
        assert rows[own].status == SKIP and rows[own].detail.startswith("predicted on GPUs: GPU ~")
        assert {"model: single x1", "model: ddp x8", "model: zero3_offload x8"} <= set(rows)
        assert str(round(shapes[size].params / 1e9, 3)) in rows["model: parameters"].detail
        rows = rows_of(launch_checks.check_launches(gpu_node(H100), cfg, shapes[size]))
        assert rows[own].status == PASS and rows["model: zero3_offload x8"].status == PASS
        assert rows["model: single x1"].status == SKIP and "would not fit" in rows["model: single x1"].detail


# ----------------------------------------------------------------------------------------------------------------
# Against measurements (slow tier): the CPU smoke's configs, checkpoints on


@pytest.mark.slow
def test_predicted_checkpoint_bytes_and_peak_memory_match_the_cpu_smoke(tmp_path):
    """train_config (as the doctor's smoke runs it: single, DDP over 2 gloo processes, ZeRO-3 on DeepSpeed's CPU
    accelerator) on an 11M-parameter LLaMA, large enough for the parameter terms to show next to the processes'
    own ~0.5 GiB: the last checkpoint's bytes within 10% + 1 MB, the final model's too, and the peak resident memory
    of the node's training processes (resource.getrusage in each worker, summed) within 35%."""
    corpus = [e["prompt"] + e["completion"] for e in smoke_runs._examples(64, seed=1)] * 4
    model = modeling.tiny_random_llama(tmp_path / "model", corpus, vocab_size=512, hidden=512, layers=4, heads=8)
    shape = memory.model_shape(str(model))
    assert shape.params > 10e6
    node = Node(host_ram_gib=8, deepspeed=True)
    with open(tmp_path / "smoke.log", "w") as log_file:
        for launch, processes in smoke_checks.smoke_configs(node):
            r = smoke_runs.train_config(tmp_path, launch, processes, 2, node, Path(model), log_file)
            assert "error" not in r, r.get("error_full")
            cfg = smoke_runs.smoke_cfg(Path(model), launch, processes, 2, gpu=False)
            base = smoke_checks.measured_process_gib(launch.startswith("zero3"))
            assert base is not None and 0.2 < base < 3, base  # a Python with torch, transformers and TRL imported
            fp = memory.footprint(shape, cfg, False, launch, processes, process_gib=base)
            m = r["measured"]
            assert abs(m["checkpoint"] - fp.checkpoint_bytes) <= 0.10 * fp.checkpoint_bytes + 1e6, (launch, m, fp)
            assert abs(m["model"] - fp.model_bytes) <= 0.10 * fp.model_bytes + 1e6, (launch, m, fp)
            assert abs(m["node_rss"] / machine.GiB - fp.host_gib) <= 0.35 * fp.host_gib, (launch, m, fp)
            row = smoke_checks.compare_model(r, shape, cfg, gpu=False)
            assert row.status == PASS, row


def test_the_smoke_comparison_allows_process_noise_but_not_a_wrong_model(monkeypatch):
    """The doctor's CPU smoke model (0.45M parameters): its processes' memory is almost all imports, measured here
    (faked: 0.5 GiB); 0.72 GiB measured for a single smoke (seen with vLLM's CPU build installed) passes, while a
    checkpoint twice the predicted size or memory three times the prediction does not."""
    monkeypatch.setattr(smoke_checks, "measured_process_gib", lambda deepspeed: 0.5)
    shape = memory.Shape(params=0.45e6, hidden=128, layers=2, vocab=513, source="test")
    cfg = smoke_runs.smoke_cfg(Path("/m"), "single", 1, 1, gpu=False)
    fp = memory.footprint(shape, cfg, False, "single", 1, process_gib=0.5)
    seen = {"checkpoint": fp.checkpoint_bytes * 0.85, "model": fp.model_bytes, "node_rss": 0.72 * machine.GiB}
    result = {"launch": "single", "processes": 1, "measured": seen}
    row = smoke_checks.compare_model(result, shape, cfg, gpu=False)
    assert row.status == PASS and "0.50 GiB per process is the imports (measured)" in row.detail, row
    assert smoke_checks.compare_model({**result, "measured": {**seen, "checkpoint": 2 * fp.checkpoint_bytes + 2e6}},
                                shape, cfg, gpu=False).status != PASS
    assert smoke_checks.compare_model({**result, "measured": {**seen, "node_rss": 3 * fp.host_gib * machine.GiB}},
                                shape, cfg, gpu=False).status != PASS


@pytest.mark.slow
def test_the_process_baseline_is_the_childs_own_peak_not_its_parents():
    """Linux carries ru_maxrss across fork and exec: a bare Python started from a test session that holds 1.25 GiB
    reported the session's peak (the CI failure of the footprint test above); VmHWM is the child's own."""
    import numpy as np

    ballast = np.ones((160, 1024, 1024))  # 1.25 GiB written in this process
    smoke_checks.measured_process_gib.cache_clear()
    try:
        base = smoke_checks.measured_process_gib(False)
    finally:
        smoke_checks.measured_process_gib.cache_clear()
    assert ballast[-1, -1, -1] == 1 and base is not None and 0.2 < base < 1.2, base
