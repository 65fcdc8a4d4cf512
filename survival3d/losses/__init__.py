"""survival3d.losses: censoring-aware survival losses.

Pure functions in :mod:`survival3d.losses.functional` (``censored_nll``, ``classical_nll``, ``cox_partial_nll``);
``nn.Module`` wrappers in :data:`LOSSES`, built from the ``loss`` config section by :func:`build_loss`.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Any

from torch import nn

from survival3d.config.schema import LossConfig
from survival3d.errors import ConfigError
from survival3d.losses.functional import (
    censored_nll,
    censored_nll_log_pmf,
    classical_nll,
    cox_partial_nll,
    discretised_gaussian_log_pmf,
)
from survival3d.losses.modules import LOSSES, CensoredLoss, ClassicalLoss, CoxLoss

__all__ = [
    "LOSSES",
    "build_loss",
    "CensoredLoss",
    "ClassicalLoss",
    "CoxLoss",
    "censored_nll",
    "censored_nll_log_pmf",
    "classical_nll",
    "cox_partial_nll",
    "discretised_gaussian_log_pmf",
]

log = logging.getLogger(__name__)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(LossConfig)}


def _as_dict(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, str):
        return {"name": cfg}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    return dict(cfg)


def build_loss(cfg: Any) -> nn.Module:
    """Build the loss named by ``cfg.name`` from the ``loss`` config section (or a name / mapping).

    Keys of the section that the chosen loss does not use (e.g. ``alpha_cens`` for ``cox_efron``) are dropped;
    a warning names them when they differ from their defaults, so a setting that has no effect is never silent.

    Raises:
        ConfigError: unknown loss name, or a value its constructor rejects.
    """
    spec = _as_dict(cfg)
    if any(isinstance(spec.get(k), str) for k in ("tmax", "var_init")) or "auto_bins" in spec or "auto_margin" in spec:
        # ``auto`` time settings without data: the unfitted grid (survival3d.time_grid); the engine resolves
        # them against the grid fitted on the training times before building the loss
        from survival3d.time_grid import grid_from_config, resolve_time_settings

        section = {"loss": spec, "data": {"source": "manifest"}}
        spec.update(resolve_time_settings(section, grid_from_config(section))["loss"])
        spec.pop("auto_bins", None)
        spec.pop("auto_margin", None)
    name = spec.pop("name", "censored")
    ctor = LOSSES.get(name)
    params = inspect.signature(ctor).parameters
    unused = {k: v for k, v in spec.items() if k not in params}
    changed = {k: v for k, v in unused.items() if k not in _DEFAULTS or _DEFAULTS[k] != v}
    if changed:
        log.warning("loss '%s' does not use %s; ignored.", name, ", ".join(f"{k}={v!r}" for k, v in changed.items()))
    kwargs = {k: v for k, v in spec.items() if k in params}
    try:
        return ctor(**kwargs)
    except ValueError as e:
        raise ConfigError(f"loss '{name}': {e}") from None
