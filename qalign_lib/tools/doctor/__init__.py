"""``qalign doctor``: is this machine ready for a long run? Checks in minutes what a two-day job needs.

Rows of (check, status, detail, fix), status PASS / WARN / FAIL / SKIP; every FAIL names its fix, every SKIP why.

1. **Checks** (seconds): Python and the packages against the tested set (``constraints/gpu.txt`` on a GPU node,
   ``constraints/cpu.txt`` elsewhere); CUDA build, driver, number and memory of the GPUs against what the chosen size
   needs, bf16 and tf32; flash-attn, Liger and vLLM; an all-reduce across all GPUs (NCCL; two CPU processes over gloo
   on a machine without a GPU); free disk under the runs directory against what the study's runs will write; access
   to the size's model (gated LLaMA-2: the local Hugging Face cache or a token, nothing downloaded); the study's data.
   GPU memory, host RAM and disk come from one model (``memory.footprint``: parameters counted on a meta-device
   model, bytes per process, per node and per checkpoint of every launch config), printed for every launch at the
   size. With no study and no size, a GPU node is checked for the paper study at 7B (``checkup.default_target``).
2. **Smoke run** (minutes; ``--quick`` skips it): a tiny random LLaMA trained for a few optimizer steps with each
   launch config on this node's hardware (GPU: single, ddp, fsdp, zero3, zero3_offload on all GPUs; CPU: single,
   ddp over gloo, zero3 on DeepSpeed's CPU accelerator), saved, reloaded, and asked a handful of prompts by each
   engine; the losses must agree across configs and the greedy outputs across engines; each config's checkpoint
   bytes and peak memory, measured in its workers, against the model's prediction.

The device facts are read once, at the boundary (``machine.probe``, ``storage.free_bytes``, ``storage.hub_facts``,
``launch_checks.allreduce``), so that the logic of every check (thresholds, messages, fixes) is tested with faked
facts on a machine without a GPU. The rows are returned; the CLI prints them (:func:`render`).

The modules, by concern:
  machine        the row, the node's facts (probe), Python, the packages, the CUDA build, the driver, the kernels
  memory         the memory and disk model (footprint, Shape, model_shape, disk_need)
  launch_checks  GPU memory and host RAM of every launch config at the size, bf16, the all-reduce
  storage        free disk, access to the size's model, the study's data
  smoke_runs     the smoke's training and generation runs, and its workers (python -m ...smoke_runs)
  smoke_checks   the smoke run's rows: each config, the model against what it measured, losses, engines
  checkup        the whole doctor (run), its report and table (render)

Here: what the command line (qalign_lib.tools.cli) and the GPU check (tools/gpu_check.py) call. The smoke's modules
are imported when the smoke runs, so that ``python -m qalign_lib.tools.doctor.smoke_runs`` starts its worker
without importing itself twice.
"""
from qalign_lib.tools.doctor.checkup import render, run
from qalign_lib.tools.doctor.launch_checks import allreduce, check_allreduce, check_gpus, free_port
from qalign_lib.tools.doctor.machine import FAIL, check_cuda_build, check_driver, check_kernels, probe
from qalign_lib.tools.doctor.memory import model_shape

__all__ = ["FAIL", "allreduce", "check_allreduce", "check_cuda_build", "check_driver", "check_gpus", "check_kernels",
           "free_port", "model_shape", "probe", "render", "run"]
