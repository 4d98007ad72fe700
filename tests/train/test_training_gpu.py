"""The training path of a GPU node, checked on a CPU: the GPU facts the code only asks are faked (device count,
availability), accelerate's FSDP plugin is built from params/launch/fsdp.yaml as `accelerate launch` builds it, FSDP2
wraps the tiny random LLaMA on gloo, and a DeepSpeed ZeRO-3 launch runs on CPU processes (its workers run
``tests/train/load_probe.py``, which observes the model loading and the pad-token initialisation from inside).
"""
import contextlib
import json
import os
import types
from pathlib import Path

import pytest
import torch

from qalign_lib.core import layout
from qalign_lib.core.errors import ConfigError
from qalign_lib.models import modeling
from qalign_lib.train import training
from qalign_lib.train.launch import launch, launch_configs
from tests.helpers import launch_cfg


@contextlib.contextmanager
def fake_gpus(n: int = 8):
    """torch answers as on a node with ``n`` H100s (only what is asked; nothing runs on them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: True)
        mp.setattr(torch.cuda, "device_count", lambda: n)
        mp.setattr(torch.cuda, "current_device", lambda: 0)
        mp.setattr(torch.cuda, "set_device", lambda device: None)
        mp.setattr(torch.cuda, "get_device_properties",
                   lambda device=None: types.SimpleNamespace(major=9, minor=0, name="NVIDIA H100", total_memory=80 << 30))
        yield


@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)  # no faked-CUDA state left for the next test


# ----------------------------------------------------------------------------------------------------------------
# one training process on a node with several GPUs (launch single, the doctor's smoke, the benchmark)


def test_one_process_on_a_node_with_8_gpus_trains_on_one_gpu(tmp_path, fresh_accelerate_state):
    cfg = launch_cfg("unused", dtype="float32", batch_size=8, per_device_batch_size=4)
    with fake_gpus(8):
        args = training.training_args(cfg, tmp_path / "run", world_size=1)
        # n_gpu > 1 makes transformers wrap the model in nn.DataParallel, which TRL 1.16 refuses (sft_trainer.py)
        assert args.n_gpu == 1 and args.device == torch.device("cuda", 0)
        assert args.train_batch_size == 4  # per_device x n_gpu: the batch is not multiplied by the GPU count


def test_the_in_process_trainer_is_built_on_a_node_with_8_gpus(synthetic_data, tiny_model, monkeypatch, fresh_accelerate_state):
    """`launch: single` trains in the calling process (the doctor's smoke, the tiny size, the benchmark's trainer):
    TRL's SFTTrainer refused it with several GPUs visible (n_gpu > 1 means nn.DataParallel)."""
    from transformers import Trainer

    run = training.prepare(launch_cfg(tiny_model, dtype="float32"), "single", ["x2en_question"], "de", "base", 1)
    monkeypatch.setattr(Trainer, "_move_model_to_device", lambda self, model, device: None)  # no GPU to move it to
    with fake_gpus(8):
        trainer = training.make_trainer(run)
    assert trainer.args.n_gpu == 1


# ----------------------------------------------------------------------------------------------------------------
# the effective batch: exact, recorded in run.json, kept by a resume


@pytest.mark.parametrize("processes", [5, 6, 12])
def test_a_batch_that_the_processes_do_not_divide_is_refused_before_any_work(synthetic_data, processes):
    cfg = launch_cfg("/nonexistent/model", batch_size=128, per_device_batch_size=2, num_processes=processes, launch="ddp")
    with pytest.raises(ConfigError) as err:  # before the model is even looked at (plan() would fail on it)
        training.prepare(cfg, "odd", ["x2en_question"], "de", "base", 1)
    message = str(err.value)
    assert f"batch_size 128 is not per_device_batch_size 2 x num_processes {processes}" in message
    assert "-p num_processes one of 1, 2, 4, 8, 16, 32, 64" in message
    assert "-p batch_size a multiple of" in message and "\n" not in message
    assert not layout.run(cfg.size, "odd").path.exists()
    with pytest.raises(ConfigError, match="batch_size 128 is not"):
        training.training_args(cfg, Path("/runs/odd"), world_size=processes)


def test_a_batch_smaller_than_one_micro_batch_per_process_is_refused():
    cfg = launch_cfg("unused", batch_size=8, per_device_batch_size=4, num_processes=4)  # 16 > 8 (used to train with 16)
    with pytest.raises(ConfigError, match=r"it would train with 16\).*num_processes one of 1, 2.*per_device_batch_size one of 1, 2"):
        training.batch_plan(cfg, 4)


def test_run_json_records_the_effective_batch(synthetic_data, tiny_model):
    cfg = launch_cfg(tiny_model, batch_size=8, per_device_batch_size=2, num_processes=2, launch="ddp")
    run = training.prepare(cfg, "split", ["x2en_question"], "de", "base", 1)
    assert json.loads((run / "run.json").read_text())["batch"] == {
        "per_device_batch_size": 2, "gradient_accumulation_steps": 2, "num_processes": 2, "effective_batch_size": 8}


def fake_checkpoint(run: Path, step: int = 1) -> None:
    checkpoint = layout.RunDir(run).checkpoints / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_a_resume_with_another_split_of_the_batch_is_refused(synthetic_data, tiny_model, monkeypatch):
    cfg = launch_cfg(tiny_model, batch_size=8, per_device_batch_size=2, num_processes=2, launch="ddp")
    run = training.prepare(cfg, "resumed", ["x2en_question"], "de", "base", 1)
    fake_checkpoint(run)
    with pytest.raises(ConfigError, match=r"checkpoints .* were trained with num_processes 2, per_device_batch_size 2, "
                                          r"gradient_accumulation_steps 2; this launch has num_processes 4.*"
                                          r"gradient_accumulation_steps 1: set -p num_processes 2"):
        training.prepare(cfg.replace(num_processes=4), "resumed", ["x2en_question"], "de", "base", 1)
    assert training.prepare(cfg, "resumed", ["x2en_question"], "de", "base", 1) == run  # the same split resumes
    # a worker launched by hand with another process count: refused before the model is loaded
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=r"run resumed was prepared \(run.json\) with num_processes 2.*this launch has num_processes 1"):
        training.make_trainer(run)


# ----------------------------------------------------------------------------------------------------------------
# FSDP as params/launch/fsdp.yaml makes accelerate build it: fp32 buffers, sharded checkpoints, a full model/


def fsdp_plugin(monkeypatch, mixed_precision: str = "bf16"):
    """accelerate's FullyShardedDataParallelPlugin as a worker of `accelerate launch --config_file fsdp.yaml` on an
    8-GPU node builds it: the launcher's environment (accelerate.utils.launch.prepare_multi_gpu_env), then the plugin
    from it and the mixed precision set as AcceleratorState sets it."""
    from accelerate.commands.launch import (
        _validate_launch_command,
        launch_command_parser,
    )
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    with fake_gpus(8):
        args = launch_command_parser().parse_args(["--config_file", str(launch_configs()["fsdp"]), "--num_processes", "8",
                                                   "--mixed_precision", mixed_precision, "-m", "qalign_lib.train.training", "/x"])
        env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
        for key, value in env.items():
            if key.startswith(("FSDP_", "ACCELERATE_")):
                monkeypatch.setenv(key, value)
        plugin = FullyShardedDataParallelPlugin()
        plugin.set_mixed_precision(mixed_precision)
    return plugin


def test_fsdp_yaml_builds_fsdp2_with_fp32_buffers_layer_wrap_and_sharded_checkpoints(monkeypatch):
    from torch.distributed.fsdp import MixedPrecisionPolicy, StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = fsdp_plugin(monkeypatch)
    # FSDP1's MixedPrecision has a buffer_dtype, which accelerate sets to bf16: LLaMA's inv_freq would train in bf16
    assert plugin.fsdp_version == 2 and isinstance(plugin.mixed_precision_policy, MixedPrecisionPolicy)
    assert not hasattr(plugin.mixed_precision_policy, "buffer_dtype")
    assert plugin.mixed_precision_policy.param_dtype == plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16
    assert plugin.reshard_after_forward is True                        # FULL_SHARD
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy and plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT  # checkpoints: a shard per rank
    assert plugin.cpu_ram_efficient_loading and not plugin.activation_checkpointing
    assert type(plugin.cpu_offload).__name__ == "OffloadPolicy"        # no CPU offload


@pytest.fixture
def gloo_world_of_one():
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{29600 + os.getpid() % 300}", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,), mesh_dim_names=("dp_shard",))
    dist.destroy_process_group()


def test_fsdp2_from_our_yaml_keeps_rope_inv_freq_fp32_under_bf16(monkeypatch, tiny_model, gloo_world_of_one):
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from torch.distributed.tensor import DTensor

    plugin = fsdp_plugin(monkeypatch)
    model = modeling.load_model(tiny_model, "float32", for_training=True)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    accelerator = types.SimpleNamespace(  # what accelerate's own fsdp2_prepare_model reads of the Accelerator
        state=types.SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=gloo_world_of_one, mixed_precision="bf16",
        parallelism_config=types.SimpleNamespace(fsdp_dim_names=("dp_shard",)), device=torch.device("cpu"),
        is_main_process=True)
    if plugin.fsdp_version == 2:
        model = fsdp2_prepare_model(accelerator, model)
        assert isinstance(model.model.layers[0].self_attn.q_proj.weight, DTensor)  # sharded, one unit per layer
    else:  # what accelerate does with an FSDP1 plugin, as far as precision goes
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(model, mixed_precision=plugin.mixed_precision_policy, device_id=torch.device("cpu"))
    logits = model(torch.tensor([[1, 5, 7, 9]])).logits
    assert logits.dtype == torch.bfloat16  # the forward did run in bf16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_fsdp_final_model_is_saved_with_a_full_state_dict(synthetic_data, tiny_model, monkeypatch):
    """Checkpoints sharded, model/ a full state dict: training.fit switches the plugin before the final save_model."""
    plugin = fsdp_plugin(monkeypatch)
    run = training.prepare(launch_cfg(tiny_model), "fsdp", ["x2en_question"], "de", "base", 1)
    seen = {}

    def save_model(path):
        seen["save"] = (str(plugin.state_dict_type), type(plugin.state_dict_config).__name__)
        Path(path).mkdir(parents=True)

    trainer = types.SimpleNamespace(
        train=lambda resume_from_checkpoint=None: seen.setdefault("train", str(plugin.state_dict_type)),
        is_world_process_zero=lambda: True, save_model=save_model,
        accelerator=types.SimpleNamespace(state=types.SimpleNamespace(fsdp_plugin=plugin), wait_for_everyone=lambda: None),
        processing_class=types.SimpleNamespace(save_pretrained=lambda path: None))
    monkeypatch.setattr(training, "make_trainer", lambda out, callbacks=(): trainer)
    monkeypatch.setattr(training, "finish", lambda out: None)
    training.fit(run)
    assert seen["train"].endswith("SHARDED_STATE_DICT")
    assert seen["save"] == ("StateDictType.FULL_STATE_DICT", "FullStateDictConfig")
    assert (run / "model").is_dir()


# ----------------------------------------------------------------------------------------------------------------
# the model is loaded under the trainer's config: ZeRO-3 builds it partitioned; the pad row is the gathered mean


def test_the_trainer_config_exists_before_the_model_is_loaded(synthetic_data, tiny_model, monkeypatch):
    """Under `accelerate launch` the SFTConfig sets up the process group and DeepSpeed's config: from_pretrained then
    builds a ZeRO-3 model partitioned and FSDP loads on rank 0 only; it must exist (and live) while loading."""
    run = training.prepare(launch_cfg(tiny_model), "order", ["x2en_question"], "de", "base", 1)
    calls, made, load = [], [], modeling.load_model
    make_args = training.training_args
    monkeypatch.setattr(training, "training_args", lambda *a, **k: calls.append("args") or made.append(make_args(*a, **k)) or made[-1])
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: calls.append("model") or load(*a, **k))
    trainer = training.make_trainer(run)
    assert calls == ["args", "model"] and trainer.args is made[0]


@pytest.mark.slow
def test_zero3_builds_the_model_partitioned_and_pads_with_the_mean(synthetic_data, tiny_model, workers_env):
    pytest.importorskip("deepspeed")
    # one process under DeepSpeed's CPU accelerator, as test_launch.py's ZeRO-3 test (with two, accelerate's state
    # on a CPU counts one process where DeepSpeed counts two, and DeepSpeed's batch check fails, with or without this)
    cfg = launch_cfg(tiny_model, launch="zero3", num_processes=1, batch_size=4, per_device_batch_size=2)
    run = training.prepare(cfg, "zero3-load", ["x2en_question"], "de", "base", 1)
    launch(cfg, run, module="tests.train.load_probe")
    for rank in (0,):
        seen = json.loads((run / f"load-rank{rank}.json").read_text())
        assert seen["zero3_inside_loading"], seen          # from_pretrained ran under ZeRO-3's partitioned init ...
        assert seen["partitioned_after_loading"] and seen["embedding_numel_after_loading"] == 0, seen  # ... and built it so
        assert seen["grew"] and [n for n, _ in seen["pad_rows"]] == [1, 1], seen
        assert max(diff for _, diff in seen["pad_rows"]) < 1e-6, seen  # the new row = the mean of the old ones
    assert layout.RunDir(run).is_done()
