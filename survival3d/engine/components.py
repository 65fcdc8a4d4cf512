"""The parts of an experiment the engine builds but does not own: the model, the loss and the dummy generator.

By default they come from :func:`survival3d.models.build_model`, :func:`survival3d.losses.build_loss` and
:func:`survival3d.data.dummy.generate_case`, imported when first needed. Passing other callables (same signatures)
swaps them, e.g. a research prototype or a tiny model in a test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Components"]


def _import(module: str, name: str) -> Callable:
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Components:
    """Factories used by the engine.

    Attributes:
        build_model: ``(cfg, covariate_spec) -> nn.Module`` returning a ``SurvivalOutput``.
        build_loss: ``(cfg.loss) -> nn.Module`` returning ``{"loss", "nll", ...}``.
        generate_case: ``(level, index, *, size, seed, feat_frac, censor_frac, spacing, tmax) -> dict``.
    """

    build_model: Callable | None = None
    build_loss: Callable | None = None
    generate_case: Callable | None = None

    def model(self, cfg, covariate_spec):
        return (self.build_model or _import("survival3d.build", "build_survival_model"))(cfg, covariate_spec)

    def loss(self, loss_cfg):
        return (self.build_loss or _import("survival3d.losses", "build_loss"))(loss_cfg)

    def case_generator(self) -> Callable:
        return self.generate_case or _import("survival3d.data.dummy", "generate_case")
