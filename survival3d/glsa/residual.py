"""Residual strategies ``y = Residual(x, R)`` closing a GLSA block.

Each takes ``channels`` first and ``spatial_dims``; registered in :data:`RESIDUAL`.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from survival3d.registry import Registry

__all__ = ["RESIDUAL", "AddResidual", "GatedResidual", "ProgressiveResidual", "DropPathResidual", "drop_path"]

RESIDUAL: Registry = Registry("residual strategy")


def _check(channels: int, spatial_dims: int) -> None:
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}.")
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero whole samples with probability ``p`` and rescale the others by ``1 / (1 − p)`` (stochastic depth)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


@RESIDUAL.register("original")
class AddResidual(nn.Module):
    """The identity shortcut of ResNet (He et al., 2016): ``y = x + R``."""

    def __init__(self, channels: int, spatial_dims: int = 2):
        super().__init__()
        _check(channels, spatial_dims)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return x + r


@RESIDUAL.register("learnable_gate")
class GatedResidual(nn.Module):
    """Highway-network shortcut (Srivastava et al., 2015): ``g = σ(W [x; R] + b)``, ``y = g ⊙ x + (1 − g) ⊙ R``.

    ``W`` is a 1×1 convolution; ``b`` starts at ``bias_init`` (positive favours the shortcut early on).
    """

    def __init__(self, channels: int, spatial_dims: int = 2, *, bias_init: float = 1.0):
        super().__init__()
        _check(channels, spatial_dims)
        self.gate = Conv[Conv.CONV, spatial_dims](2 * channels, channels, 1)
        nn.init.constant_(self.gate.bias, bias_init)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([x, r], dim=1)))
        return g * x + (1 - g) * r


@RESIDUAL.register("progressive")
class ProgressiveResidual(nn.Module):
    """A learned scalar that grows the block's contribution from zero (ReZero, Bachlechner et al., 2021).

    ``mode="rezero"``: ``y = x + α R``; ``mode="interpolate"``: ``y = (1 − α) x + α R``. ``α`` starts at
    ``alpha_init`` (default 0, so the block starts as the identity and its branch is blended in as ``α`` learns).
    """

    _MODES = ("rezero", "interpolate")

    def __init__(self, channels: int, spatial_dims: int = 2, *, mode: str = "rezero", alpha_init: float = 0.0):
        super().__init__()
        _check(channels, spatial_dims)
        if mode not in self._MODES:
            raise ValueError(f"mode must be one of {self._MODES}, got {mode!r}.")
        self.mode = mode
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if self.mode == "rezero":
            return x + self.alpha * r
        return (1 - self.alpha) * x + self.alpha * r


@RESIDUAL.register("drop_path")
class DropPathResidual(nn.Module):
    """Stochastic depth (Huang et al., 2016): ``y = x + DropPath_p(R)`` while training, ``x + R`` in eval."""

    def __init__(self, channels: int, spatial_dims: int = 2, *, drop_prob: float = 0.1):
        super().__init__()
        _check(channels, spatial_dims)
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}.")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return x + drop_path(r, self.drop_prob, self.training)
