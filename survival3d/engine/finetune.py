"""Fine-tuning the survival model from a pretrained encoder (``model.init``, ``optim.layer_decay``,
``train.freeze_encoder_epochs``); used by :class:`~survival3d.engine.survival_task.SurvivalTask`.

* :func:`init_encoder` copies ``embed.*``/``transformer.*`` (and ``quantizer.*`` when the survival model quantises,
  ``model.vq_codes > 0``) from a ``run.py pretrain`` run — or any ``run.py train`` run — strictly: every shape must
  match, else a one-line :class:`~survival3d.errors.ConfigError` naming the checkpoint and the first mismatched key.
* :func:`layer_decay_groups`: BEiT/MAE-style layer-wise learning rates, ``lr * decay ** (depth + 1 - layer)``
  (patch embedding = layer 0, block i = layer i + 1, head/FiLM/quantiser/loss = depth + 1), each split into
  weight-decayed matrices and undecayed vectors.
* :func:`set_encoder_trainable`: the frozen-encoder warm-up (the head and FiLM train alone for the first epochs);
  frozen parameters get no gradient, so AdamW leaves them (and their weight decay) alone.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from survival3d.engine.checkpoint import find_checkpoint, load_checkpoint
from survival3d.errors import ConfigError, InputError
from survival3d.models.pretrain import is_encoder_param, layer_scale, load_encoder_state

__all__ = ["init_encoder", "layer_decay_groups", "set_encoder_trainable", "check_finetune_config"]

log = logging.getLogger(__name__)


def check_finetune_config(cfg) -> None:
    d = float(cfg.optim.layer_decay)
    if not 0.0 < d <= 1.0:
        raise ConfigError(f"optim.layer_decay must be in (0, 1], got {d}.")
    if int(cfg.train.freeze_encoder_epochs) < 0:
        raise ConfigError(f"train.freeze_encoder_epochs must be >= 0, got {cfg.train.freeze_encoder_epochs}.")


def init_encoder(model: torch.nn.Module, source: str | os.PathLike) -> list[str]:
    """Load the encoder of ``source`` (a run folder or a ``.pt`` checkpoint) into ``model``; returns the keys."""
    path = find_checkpoint(source)
    state = load_checkpoint(path)
    weights = state.get("model")
    if not isinstance(weights, dict):
        raise InputError("checkpoint has no 'model' entry (not written by run.py pretrain or run.py train).",
                         path=path, field="model")
    keys = load_encoder_state(model, weights, where=str(path))
    log.info("model.init: %d encoder tensors from %s", len(keys), path)
    return keys


def layer_decay_groups(named: list[tuple[str, torch.nn.Parameter]], *, depth: int, lr: float, decay: float,
                       weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with per-layer learning rates (see the module docstring); empty groups dropped."""
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        scale = layer_scale(name, depth, decay)
        wd = p.ndim >= 2
        g = groups.setdefault((scale, wd), {"params": [], "lr": lr * scale, "weight_decay": weight_decay if wd else 0.0,
                                            "lr_scale": scale})
        g["params"].append(p)
    return sorted(groups.values(), key=lambda g: (-g["lr_scale"], -g["weight_decay"]))


def set_encoder_trainable(model: torch.nn.Module, trainable: bool) -> int:
    """Switch ``requires_grad`` of the encoder's parameters (``embed.*``, ``transformer.*`` but FiLM,
    ``quantizer.*``); returns how many tensors were switched."""
    n = 0
    for name, p in model.named_parameters():
        if is_encoder_param(name):
            p.requires_grad_(trainable)
            n += 1
    return n
