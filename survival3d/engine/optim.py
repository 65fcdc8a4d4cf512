"""Optimisers and learning-rate schedules: the one factory every task's training goes through.

``build_optimizer`` turns a name (``adamw``, ``adam``, ``sgd``) and parameter groups into an optimiser;
``build_scheduler`` turns a name (``warmup_cosine``, ``cosine``, ``plateau``, ``none``) into a
:class:`Schedule` that the engine steps after every optimiser step (``interval="step"``) or after every
validation (``interval="epoch"``). :func:`decay_groups` is the usual split of parameters into weight-decayed
matrices and undecayed biases, norms and scalars.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from survival3d.errors import ConfigError
from survival3d.registry import Registry

__all__ = ["OPTIMIZERS", "SCHEDULERS", "build_optimizer", "build_scheduler", "decay_groups", "warmup_cosine", "Schedule"]

OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULERS: Registry = Registry("scheduler")


@OPTIMIZERS.register("adamw")
def _adamw(groups, *, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8, fused: bool = False, **_):
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps, fused=fused or None)


@OPTIMIZERS.register("adam")
def _adam(groups, *, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8, fused: bool = False, **_):
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps, fused=fused or None)


@OPTIMIZERS.register("sgd")
def _sgd(groups, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.0, nesterov: bool = False, **_):
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def build_optimizer(name: str, params: Iterable, *, key: str = "optim.name", **kwargs: Any) -> torch.optim.Optimizer:
    """The optimiser ``name`` over ``params`` (tensors or parameter-group dicts).

    Args:
        name: a key of :data:`OPTIMIZERS`.
        params: parameters or groups; empty groups are dropped.
        key: the config key the name came from (for the error message).
        **kwargs: ``lr``, ``weight_decay``, ``betas``, ``eps``, ``momentum``, ``nesterov``, ``fused``.

    Raises:
        ConfigError: unknown name, or a learning rate that is not a positive finite number.
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"{key} '{name}' is not an optimiser. Valid: {', '.join(OPTIMIZERS.keys())}.")
    lr = kwargs.get("lr")
    if lr is None or not math.isfinite(float(lr)) or float(lr) <= 0:
        raise ConfigError(f"optim.lr must be a positive number, got {lr}.")
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [g for g in params if g["params"]]
    return OPTIMIZERS.get(name)(params, **kwargs)


def decay_groups(params: Iterable[torch.nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels (``ndim >= 2``), none on biases, norms and scalars."""
    params = [p for p in params if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": float(weight_decay)},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0):
    """LR multiplier per step: linear warm-up over ``warmup_steps`` (from 1/warmup to 1), then half a cosine from 1
    down to ``min_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@dataclass
class Schedule:
    """A learning-rate scheduler and when the engine steps it.

    Attributes:
        scheduler: a ``torch.optim.lr_scheduler`` object, or ``None`` for a constant rate.
        interval: ``"step"`` (after every optimiser step) or ``"epoch"`` (after every validation).
    """

    scheduler: Any = None
    interval: str = "step"

    def step(self, metric: float | None = None) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)


@SCHEDULERS.register("warmup_cosine")
def _warmup_cosine(opt, *, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0, **_):
    base = opt.param_groups[0]["lr"]
    min_ratio = float(min_lr) / base if base > 0 else 0.0
    return Schedule(torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total_steps, warmup_steps, min_ratio)), "step")


@SCHEDULERS.register("cosine")
def _cosine(opt, *, total_steps: int, min_lr: float = 0.0, interval: str = "step", **_):
    return Schedule(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(int(total_steps), 1), eta_min=min_lr), interval)


@SCHEDULERS.register("plateau")
def _plateau(opt, *, mode: str = "max", factor: float = 0.1, patience: int = 10, min_lr: float = 0.0, **_):
    return Schedule(torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=factor, patience=patience, min_lr=min_lr), "epoch")


@SCHEDULERS.register("none")
def _none(opt, **_):
    return Schedule(None, "step")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, *, key: str = "optim.scheduler", **kwargs: Any) -> Schedule:
    """The schedule ``name`` for ``optimizer``.

    Args:
        name: a key of :data:`SCHEDULERS`.
        **kwargs: ``total_steps`` and ``warmup_steps`` (in units of the interval), ``min_lr``, ``interval``
            (``cosine``), ``mode``/``factor``/``patience`` (``plateau``).
    """
    if name not in SCHEDULERS:
        raise ConfigError(f"{key} '{name}' is not a learning-rate schedule. Valid: {', '.join(SCHEDULERS.keys())}.")
    return SCHEDULERS.get(name)(optimizer, **kwargs)
