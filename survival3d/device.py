"""Turn a device name from a config or the command line into a ``torch.device``."""

from __future__ import annotations

import torch

from survival3d.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str, *, key: str = "device") -> torch.device:
    """``"auto"`` → ``cuda`` when available, else ``cpu``; otherwise ``torch.device(name)``.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ...
        key: the config key or option the name came from, for the error message.

    Raises:
        ConfigError: an unknown device string, or CUDA requested on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"{key}: unknown device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is {name!r} but CUDA is not available (torch.cuda.is_available() is False).")
    return dev
