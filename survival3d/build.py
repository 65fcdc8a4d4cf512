"""Builds an experiment's model and loss from the whole config: the one place that joins config sections.

:func:`survival3d.models.build_model` reads only ``cfg.model`` / ``cfg.head``; the expected input size it needs for
a learnable position embedding comes from ``cfg.data.image_size`` here, when ``cfg.model.img_size`` is unset, and the
time-valued settings (``loss.tmax``, ``loss.var_init``, ``head.loc_bias_init``, ``head.loc_scale``; ``auto`` by default)
are resolved to grid units against the experiment's time grid (:mod:`survival3d.time_grid`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from survival3d.contracts import CovariateSpec
from survival3d.errors import ConfigError
from survival3d.time_grid import TimeGrid, resolved_config
from survival3d.losses import build_loss
from survival3d.models import build_model

__all__ = ["build_survival_model", "build_survival_loss", "build_pretrain_model"]


def _get(section: Any, key: str) -> Any:
    if section is None:
        return None
    if hasattr(section, "get"):
        return section.get(key)
    return getattr(section, key, None)


def _resolved(cfg: Any, time_grid: TimeGrid | None) -> Any:
    if cfg is None or _get(cfg, "loss") is None and _get(cfg, "head") is None:
        return cfg
    return resolved_config(cfg, time_grid)


def build_survival_model(cfg: Any, covariate_spec: CovariateSpec | None = None, *, time_grid: TimeGrid | None = None) -> nn.Module:
    """The model of ``cfg`` (sections ``model``, ``head``; ``data.image_size`` when ``model.img_size`` is unset).

    ``time_grid``: the grid that ``auto`` time settings follow (default: the one the config implies without data,
    :func:`survival3d.time_grid.grid_from_config`)."""
    cfg = _resolved(cfg, time_grid)
    image_size = _get(_get(cfg, "data"), "image_size")
    patch = _get(_get(cfg, "model"), "patch_size")
    if image_size is not None and patch is not None and int(patch) >= 1 and any(int(s) < int(patch) for s in image_size):
        raise ConfigError(f"data.image_size {list(image_size)} is smaller than model.patch_size {int(patch)} along some "
                          f"axis: the model would see no complete patch (its output would be NaN); use sizes >= "
                          f"{int(patch)}.")
    return build_model(cfg, covariate_spec, img_size=None if image_size is None else list(image_size))


def build_survival_loss(cfg: Any, *, time_grid: TimeGrid | None = None) -> nn.Module:
    """The loss of ``cfg`` (section ``loss``; the default loss when the section is absent), its time settings
    resolved against ``time_grid`` as for :func:`build_survival_model`."""
    loss_cfg = _get(_resolved(cfg, time_grid), "loss")
    return build_loss({} if loss_cfg is None else loss_cfg)


def build_pretrain_model(cfg: Any) -> nn.Module:
    """The masked-cubelet autoencoder of ``cfg`` (``model`` = the encoder, ``pretrain`` = masking and decoder;
    ``data.image_size`` when ``model.img_size`` is unset)."""
    from omegaconf import OmegaConf

    from survival3d.errors import ConfigError
    from survival3d.models.pretrain import MaskedCubeletAutoencoder

    def plain(section):
        return dict(OmegaConf.to_container(section, resolve=True)) if OmegaConf.is_config(section) else dict(section)

    model_cfg = plain(_get(cfg, "model"))
    model_cfg.pop("init", None)
    if model_cfg.get("img_size") is None:
        image_size = _get(_get(cfg, "data"), "image_size")
        model_cfg["img_size"] = None if image_size is None else list(image_size)
    try:
        pre = {k: v for k, v in plain(_get(cfg, "pretrain")).items() if k != "figure"}  # figure: the task's
        return MaskedCubeletAutoencoder(**model_cfg, **pre)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"pretrain model: {e}") from None
