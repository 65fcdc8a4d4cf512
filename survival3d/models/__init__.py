"""survival3d.models: 3D survival networks, their heads and building blocks.

``build_model(cfg, covariate_spec, img_size=...)`` builds :class:`SurvivalNet3D` (``model.name: survival3d``, the one
network; heads are the registered variants) with the ``cfg.model`` values as constructor arguments and ``cfg.head`` as
its head spec; it reads no other section (:func:`survival3d.build.build_survival_model` fills ``img_size`` from the
data section).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from survival3d.errors import ConfigError
from survival3d.models.heads import HEADS
from survival3d.contracts import CovariateSpec, SurvivalOutput
from survival3d.models.survival_net import SurvivalNet3D

__all__ = ["MODEL_NAMES", "HEADS", "build_model", "SurvivalNet3D", "SurvivalOutput", "CovariateSpec"]

#: values of ``model.name`` (one network; a registry would hold a single entry)
MODEL_NAMES = ("survival3d",)


def _section(cfg: Any, name: str) -> dict[str, Any]:
    sec = cfg.get(name) if isinstance(cfg, Mapping) or hasattr(cfg, "get") else getattr(cfg, name, None)
    if sec is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(sec):
            return OmegaConf.to_container(sec, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if hasattr(sec, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(sec)
    return dict(sec)


def build_model(cfg: Any, covariate_spec: CovariateSpec | None = None, *,
                img_size: Sequence[int] | None = None) -> nn.Module:
    """Build the survival model described by ``cfg.model`` and ``cfg.head`` (no other section is read).

    Args:
        cfg: a config (DictConfig, dataclass or mapping) with sections ``model`` and ``head``.
        covariate_spec: the covariates to condition on with FiLM (``None``: none).
        img_size: expected input size (D, H, W), used when ``model.img_size`` is unset.

    Raises:
        ConfigError: a model name other than ``survival3d``, an unknown head name, or a constructor argument the
            model does not accept.
    """
    model_cfg = _section(cfg, "model")
    head_cfg = _section(cfg, "head") or "softmin"
    if isinstance(head_cfg, dict) and any(isinstance(head_cfg.get(k), str) for k in ("loc_bias_init", "loc_scale")):
        # ``auto`` time settings follow the time grid the config implies (the engine resolves them against the grid
        # fitted on the training times before it builds the model: survival3d.time_grid)
        from survival3d.time_grid import grid_from_config, resolve_time_settings

        head_cfg.update(resolve_time_settings(cfg, grid_from_config(cfg))["head"])
    name = model_cfg.pop("name", "survival3d")
    model_cfg.pop("init", None)  # where the encoder's weights come from: read by the training task, not the model
    if model_cfg.get("img_size") is None and img_size is not None:
        model_cfg["img_size"] = list(img_size)
    if name not in MODEL_NAMES:
        raise ConfigError(f"model.name '{name}' is not a model. Valid: {', '.join(MODEL_NAMES)}.")
    try:
        return SurvivalNet3D(**model_cfg, head=head_cfg, covariate_spec=covariate_spec)
    except TypeError as e:
        raise ConfigError(f"model '{name}': {e}") from None
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{_keys_named(e, model_cfg, head_cfg)}: {e}") from None


def _keys_named(e: Exception, model_cfg: dict, head_cfg: Any) -> str:
    """The config keys a constructor's message names (``model.num_heads``...), for a one-line config error."""
    import re

    words = set(re.findall(r"[A-Za-z_]+", str(e)))
    keys = [f"model.{k}" for k in model_cfg if k in words]
    if isinstance(head_cfg, dict):
        keys += [f"head.{k}" for k in head_cfg if k in words]
    if "dim" in words and "model.embed_dim" not in keys and "embed_dim" in model_cfg:
        keys.append("model.embed_dim")
    return ", ".join(keys) if keys else "model.* / head.*"
