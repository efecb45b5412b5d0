"""What torchrun tells a process through its environment (RANK, WORLD_SIZE, LOCAL_RANK), read in one place: known
before any process group exists, so the device resolver and the process group agree on it."""

from __future__ import annotations

import os

HOW = "start the processes with torchrun (torchrun --nproc-per-node N -m resnet_lab ...)"


def env_rank() -> int:
    """This process's global rank under torchrun (RANK; 0 without torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def env_world_size() -> int:
    """How many processes torchrun started (WORLD_SIZE; 1 without torchrun, or where it is empty)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched() -> bool:
    """True in a process started by torchrun with more than one process in all."""
    return env_world_size() > 1


def env_int(name: str, error: type[ValueError] = ValueError) -> int:
    """torchrun's integer `name` of a launched process; `error` (a ValueError) saying how to start it where missing."""
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        raise error(f"WORLD_SIZE > 1 but {name} is missing or not an integer: {HOW}") from None
