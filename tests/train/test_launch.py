"""Multi-process training on CPU through ``launch()`` (qalign_lib.train.launch): the launch configs, real DDP on
gloo, DeepSpeed ZeRO-3, two machines on localhost, worker errors. The workers run ``tests/train/rank_probe.py``, which
records per rank the examples it trained on and a hash of its final weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qalign_lib.core import config, layout
from qalign_lib.core.errors import ConfigError, LaunchError
from qalign_lib.core.files import read_jsonl
from qalign_lib.models import modeling
from qalign_lib.train import training
from qalign_lib.train.launch import launch, worker_error
from tests.helpers import launch_cfg
from tests.train.rank_probe import example_hash


def test_launch_configs_parse_and_unknown_name_is_clear():
    from accelerate.commands.config.config_args import load_config_from_file

    from qalign_lib.train.launch import command, launch_configs

    assert set(launch_configs()) >= {"single", "ddp", "fsdp", "zero3", "zero3_offload"}
    kinds = {name: str(load_config_from_file(str(path)).distributed_type) for name, path in launch_configs().items()}
    assert kinds["ddp"].endswith("MULTI_GPU") and kinds["fsdp"].endswith("FSDP") and kinds["zero3"].endswith("DEEPSPEED")
    zero3 = load_config_from_file(str(launch_configs()["zero3"])).deepspeed_config
    assert zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True
    assert load_config_from_file(str(launch_configs()["zero3_offload"])).deepspeed_config["offload_param_device"] == "cpu"
    assert config.resolve("7b").launch == "fsdp" and config.resolve("13b").launch == "zero3"
    cfg = config.resolve("13b", launch="zero3_offload", num_processes=16, num_machines=2)  # papermill -p overrides
    cmd = command(cfg, Path("/runs/x"))
    assert cmd[cmd.index("--num_processes") + 1] == "16" and cmd[cmd.index("--num_machines") + 1] == "2"
    assert cmd[cmd.index("--config_file") + 1].endswith("params/launch/zero3_offload.yaml")
    assert cmd[-3:] == ["-m", "qalign_lib.train.training", "/runs/x"]
    with pytest.raises(ConfigError, match=r"launch 'zero4'.*choose one of .*ddp.*zero3"):
        launch(config.resolve("tiny", launch="zero4", num_processes=2), Path("/runs/x"))
    with pytest.raises(ConfigError, match="launch single runs one process"):
        launch(config.resolve("tiny", num_processes=2), Path("/runs/x"))


@pytest.mark.slow
def test_ddp_two_ranks_see_different_data_and_end_with_identical_weights(synthetic_data, tiny_model, workers_env, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # with --multi_gpu (ddp.yaml): 2 CPU processes on gloo
    cfg = launch_cfg(tiny_model, launch="ddp", num_processes=2)
    run = training.prepare(cfg, "ddp", ["x2en_question"], "de,fr,es,ru", "base", 1)  # 16 examples
    launch(cfg, run, module="tests.train.rank_probe")
    ranks = [json.loads((run / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [2, 2]  # 16 / (4 x 2)
    seen = [r["examples"] for r in ranks]
    tok = modeling.load_tokenizer(str(run / "model"))
    rows, dropped = training.tokenize(read_jsonl(layout.RunDir(run).train_jsonl), tok, cfg.max_length)
    assert dropped == 0 and len(rows) == 16
    assert len(seen[0]) == len(seen[1]) == 8
    assert not set(seen[0]) & set(seen[1])                                      # different data on each rank ...
    assert set(seen[0]) | set(seen[1]) == {example_hash(r["input_ids"]) for r in rows}  # ... together all of it
    assert ranks[0]["weights"] == ranks[1]["weights"]                          # gradients all-reduced: same model
    assert layout.RunDir(run).is_done() and "resum" not in layout.RunDir(run).launch_log().read_text()
    trained, base = modeling.load_model(str(run)), modeling.load_model(tiny_model)
    assert not torch.equal(trained.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


@pytest.mark.slow
def test_deepspeed_zero3_saves_consolidated_weights_that_reload(synthetic_data, tiny_model, workers_env):
    pytest.importorskip("deepspeed")
    # no ACCELERATE_USE_CPU here: with it accelerate drops DeepSpeed; DeepSpeed finds no GPU and uses its CPU
    # accelerator (gloo) by itself, and training_args leaves the device to it (use_cpu=False under DeepSpeed)
    cfg = launch_cfg(tiny_model, launch="zero3", num_processes=1, batch_size=4)  # 8 examples: 2 steps (the 1st at lr 0)
    run = training.prepare(cfg, "zero3", ["x2en_question"], "de,fr", "base", 1)
    launch(cfg, run, module="tests.train.rank_probe")
    assert json.loads((run / "rank0.json").read_text())["zero3_partitioned"]  # the parameters were ZeRO-3's
    assert layout.RunDir(run).is_done() and len(training.read_log(run)) == 2
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(run / "model"))    # consolidated weights, not ZeRO shards
    assert not list((run / "model").glob("global_step*")) and (run / "model" / "model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    tok = modeling.load_tokenizer(str(run / "model"), "left")
    inputs = tok(["### Instruction:\nHallo"], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 5  # new tokens, not just the prompt back


@pytest.mark.slow
def test_two_machines_on_localhost(synthetic_data, tiny_model, workers_env, tmp_path):
    """Multi-node as in docs/distributed.md: each "machine" runs the same stage call with MACHINE_RANK etc. set;
    machine 1 returns only once machine 0 has written the finished run to the shared runs/."""
    overrides = dict(model=tiny_model, stage1_limit=4, epochs=1, batch_size=8, per_device_batch_size=4, lr=1e-3,
                     max_length=1024, launch="ddp", num_processes=2, num_machines=2, report_to="none")
    script = ("from qalign_lib.core import config, log; from qalign_lib.train import stages; log.setup('INFO'); "
              f"stages.stage1(config.resolve('tiny', **{overrides!r}), 'x2en_question', 'de,fr,es,ru', name='mm')")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "MAIN_PROCESS_IP": "127.0.0.1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env={**env, "MACHINE_RANK": str(k)}, text=True,
                              stdout=open(tmp_path / f"machine{k}.out", "w"), stderr=subprocess.STDOUT) for k in (0, 1)]
    try:
        codes = [procs[0].wait(timeout=300)]  # machine 1 waits for machine 0's DONE: not worth waiting for if 0 failed
        codes.append(procs[1].wait(timeout=300) if codes[0] == 0 else procs[1].poll())
    finally:  # a machine left waiting (machine 1 waits up to an hour for machine 0's DONE) is stopped
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    out = [(tmp_path / f"machine{k}.out").read_text() for k in (0, 1)]
    assert codes == [0, 0], out[0][-3000:] + out[1][-3000:]
    run = layout.run("tiny", "mm")
    assert run.is_done() and run.launch_log(0).is_file() and run.launch_log(1).is_file()
    assert "--machine_rank 1 --main_process_ip 127.0.0.1" in out[1] and "waiting for machine 0" in out[1]
    assert [r["step"] for r in training.read_log(run.path)] == [1, 2]  # 16 examples / (4 x 2 processes)


@pytest.mark.slow
def test_worker_failure_raises_the_workers_error(synthetic_data, tiny_model, workers_env, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    cfg = launch_cfg(tiny_model, launch="ddp", num_processes=2)
    run = training.prepare(cfg, "broken", ["x2en_question"], "de", "base", 1)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "init_model": "/nonexistent/model"}))
    with pytest.raises(LaunchError) as err:
        launch(cfg, run)
    message = str(err.value)
    assert message.startswith("qalign_lib.core.errors.ModelError: model '/nonexistent/model' is neither an embedded model")
    assert "exit code 1" in message and str(layout.RunDir(run).launch_log()) in message
    assert "ChildFailedError" not in message.splitlines()[0] and (run / "launch.log").is_file()


def test_worker_error_parsing():
    log = "\n".join([
        "loading", "[rank1]: Traceback (most recent call last):", "Traceback (most recent call last):",
        '[rank1]:   File "x.py", line 1, in <module>', '  File "y.py", line 2, in f', "[rank1]:     f()",
        "    g()", "[rank1]:     ^^^", "[rank1]: ValueError: Please correct these values:",
        "KeyError: 'a'", "", "During handling of the above exception, another exception occurred:", "",
        "Traceback (most recent call last):", '  File "y.py", line 3, in f', "RuntimeError: wrapped",
        "[rank1]: - ds bf16.enabled=True", "E1121 15:13:06.126000 8494 api.py:1002] failed (exitcode: 1)",
        "Traceback (most recent call last):", '  File "launch.py", line 9', "    raise ChildFailedError(",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "=====", "exitcode  : 1"])
    assert worker_error(log) == "ValueError: Please correct these values:\n- ds bf16.enabled=True"
    assert worker_error(log.replace("[rank1]: ", "[rank1]: #")).startswith("RuntimeError: wrapped")  # chained: last
    assert worker_error("Traceback (most recent call last):\n  File x\nsubprocess.CalledProcessError: 9\nexitcode: -9"
                        ).endswith("exitcode: -9")  # only the launcher's error: the log's last lines
