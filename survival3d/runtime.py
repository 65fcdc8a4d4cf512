"""Where and how tensors run: device names → ``torch.device``, seeding, mixed precision.

The one definition of each, used by every task (survival training, GLSA, FlexLayers, explainers, benchmarks):

* :func:`resolve_device` — ``auto``/``cpu``/``cuda[:N]`` from a config key or option, with one-line errors;
* :func:`seed_everything` — python, numpy and torch (all devices), optionally deterministic kernels;
* :func:`autocast` — bf16 autocast on CUDA when asked, fp32 (a no-op) elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from survival3d.errors import ConfigError

__all__ = ["resolve_device", "seed_everything", "autocast"]


def resolve_device(name: str, *, key: str = "device", local_rank: int | None = None) -> torch.device:
    """``"auto"`` → ``cuda`` (the local rank's GPU under DDP) when available, else ``cpu``; otherwise
    ``torch.device(name)``.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ...
        key: the config key or option the name came from, for the error message.
        local_rank: under DDP, the process's GPU for ``auto`` and for a bare ``cuda``.

    Raises:
        ConfigError: an unknown device string, or CUDA requested on a machine without it.
    """
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local_rank) if local_rank is not None else torch.device("cuda")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"{key}: unknown device {name!r}: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} is {name!r} but CUDA is not available (torch.cuda.is_available() is False); "
                              f"use {key}=cpu or auto.")
        if local_rank is not None and dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def seed_everything(seed: int, deterministic: bool | None = None) -> None:
    """Seed python, numpy and torch (all devices).

    Args:
        seed: the seed (numpy gets ``seed % 2**32``).
        deterministic: ``True`` asks for deterministic kernels (cuBLAS workspace, cuDNN deterministic),
            ``False`` lets cuDNN benchmark, ``None`` leaves the backend settings as they are.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic is True:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif deterministic is False:
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device | str, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; a no-op (fp32) on the CPU and when disabled."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
