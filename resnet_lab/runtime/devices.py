"""The one device resolver: every command, study and the app ask it which device a "--device" means.

No preference (None, "" or "auto") means `RESNET_LAB_DEVICE`, else CUDA when present, else the CPU: the same
default everywhere, so a research run on a GPU machine does not silently use the CPU. Under torchrun with more
than one process "cuda" means the process's own GPU, cuda:LOCAL_RANK.
"""

from __future__ import annotations

import os

import torch

from .torchrun import env_int, launched

ENV = "RESNET_LAB_DEVICE"


class DeviceError(ValueError, RuntimeError):
    """A device that cannot be used here, with the fix (a ValueError for the CLIs, a RuntimeError for old callers)."""


def default_device() -> str:
    """What no preference means: `RESNET_LAB_DEVICE`, else "cuda" when CUDA is available, else "cpu"."""
    return os.environ.get(ENV) or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(preference: str | torch.device | None = None) -> torch.device:
    """The torch.device `preference` names ("cpu", "cuda", "cuda:1"; None or "auto" for `default_device`).

    Refused with a `DeviceError` that says what to pass instead: an unknown name, CUDA where there is none, and
    under torchrun an explicit GPU index (every process would take the same GPU) or more processes than GPUs.
    """
    text = str(preference) if preference not in (None, "", "auto") else default_device()
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DeviceError(f"unknown device {text!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {text!r} is not supported here; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {text!r} asked for, but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {text!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    if not launched() or device.type != "cuda":
        return device
    if device.index is not None:
        raise DeviceError(f"under torchrun each process takes cuda:LOCAL_RANK; pass --device cuda, not {text!r}")
    local_rank, gpus = env_int("LOCAL_RANK", DeviceError), torch.cuda.device_count()
    if local_rank >= gpus:
        raise DeviceError(f"process with LOCAL_RANK {local_rank} needs GPU {local_rank}, but this node has {gpus}: "
                          f"use --nproc-per-node {gpus} or fewer, or --device cpu")
    return torch.device("cuda", local_rank)


def model_device(module: torch.nn.Module) -> torch.device:
    """Where the module's weights live: its inputs go there, and every generator that draws for it (or its data) is
    made there, since a CUDA tensor refuses a CPU generator."""
    return next(module.parameters()).device


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a timer read before this measures the launch)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
