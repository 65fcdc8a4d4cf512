"""The parts of a survival experiment the engine builds but does not own: the model, the loss and the dummy
generator.

By default they are the project's own builders, called directly: :func:`survival3d.build.build_survival_model`,
:func:`survival3d.losses.build_loss` and :func:`survival3d.data.dummy.generate_case`. Passing other callables (same
signatures) swaps them, e.g. a research prototype or a tiny model in a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from survival3d.build import build_survival_model as _build_model
from survival3d.data.dummy import generate_case as _generate_case
from survival3d.losses import build_loss as _build_loss

__all__ = ["Components"]


@dataclass(frozen=True)
class Components:
    """Factories used by the engine (``None`` = the project's).

    Attributes:
        build_model: ``(cfg, covariate_spec) -> nn.Module`` returning a ``SurvivalOutput``.
        build_loss: ``(cfg.loss) -> nn.Module`` returning ``{"loss", "nll", ...}``.
        generate_case: ``(level, index, *, size, seed, feat_frac, censor_frac, spacing, tmax) -> dict``.
    """

    build_model: Callable | None = None
    build_loss: Callable | None = None
    generate_case: Callable | None = None

    def model(self, cfg, covariate_spec):
        return (self.build_model or _build_model)(cfg, covariate_spec)

    def loss(self, loss_cfg):
        return (self.build_loss or _build_loss)(loss_cfg)

    def case_generator(self) -> Callable:
        return self.generate_case or _generate_case
