"""The accelerator this process sees, asked of torch in one place.

Every layer that decides something by the device (the engine, the dtype, the launch, the benchmark, the shards of
an evaluation) asks these functions, so that a test fakes a GPU node here (or in ``torch.cuda`` underneath) and every
caller sees the same answer. torch is imported when a question is asked, not when this module is.
"""
from __future__ import annotations


def cuda() -> bool:
    """Whether a CUDA GPU is visible to this process."""
    import torch

    return torch.cuda.is_available()


def gpus() -> int:
    """How many CUDA GPUs this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if cuda() else 0


def device():
    """The torch device a model of this process runs on: the (current) GPU, else the CPU."""
    import torch

    return torch.device("cuda" if cuda() else "cpu")
