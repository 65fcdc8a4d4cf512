"""Builds an experiment's model and loss from the whole config: the one place that joins config sections.

:func:`survival3d.models.build_model` reads only ``cfg.model`` / ``cfg.head``; the expected input size it needs for
a learnable position embedding comes from ``cfg.data.image_size`` here, when ``cfg.model.img_size`` is unset.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from survival3d.contracts import CovariateSpec
from survival3d.errors import ConfigError
from survival3d.losses import build_loss
from survival3d.models import build_model

__all__ = ["build_survival_model", "build_survival_loss"]


def _get(section: Any, key: str) -> Any:
    if section is None:
        return None
    if hasattr(section, "get"):
        return section.get(key)
    return getattr(section, key, None)


def build_survival_model(cfg: Any, covariate_spec: CovariateSpec | None = None) -> nn.Module:
    """The model of ``cfg`` (sections ``model``, ``head``; ``data.image_size`` when ``model.img_size`` is unset)."""
    image_size = _get(_get(cfg, "data"), "image_size")
    patch = _get(_get(cfg, "model"), "patch_size")
    if image_size is not None and patch is not None and int(patch) >= 1 and any(int(s) < int(patch) for s in image_size):
        raise ConfigError(f"data.image_size {list(image_size)} is smaller than model.patch_size {int(patch)} along some "
                          f"axis: the model would see no complete patch (its output would be NaN); use sizes >= "
                          f"{int(patch)}.")
    return build_model(cfg, covariate_spec, img_size=None if image_size is None else list(image_size))


def build_survival_loss(cfg: Any) -> nn.Module:
    """The loss of ``cfg`` (section ``loss``; the default loss when the section is absent)."""
    loss_cfg = _get(cfg, "loss")
    return build_loss({} if loss_cfg is None else loss_cfg)
