"""Masking functions: turn FlexLayer logits into a (near-)binary mask in ``[0, 1]``.

A mask value of 1 selects the convolution branch, 0 the max-pooling branch. Every function here is registered in
:data:`MASKING` and built with ``MASKING.build({"name": ..., **kwargs})``; each maps logits of any shape to a mask
of the same shape and dtype. The threshold between the branches is logit 0 for all of them.

The surrogate-gradient functions (``ste``, ``stochastic``) follow the straight-through estimator of
Bengio, Léonard & Courville, "Estimating or propagating gradients through stochastic neurons for conditional
computation", arXiv:1308.3432 (2013).
"""

from __future__ import annotations

import torch
from torch import nn

from survival3d.registry import Registry

__all__ = ["MASKING", "SharpSigmoid", "HardSigmoid", "StraightThrough", "StochasticRounding"]

MASKING: Registry = Registry("masking function")


def _check_k(k: float) -> float:
    if not k > 0:
        raise ValueError(f"sharpness k must be > 0, got {k}.")
    return float(k)


@MASKING.register("sharp_sigmoid")
class SharpSigmoid(nn.Module):
    """Soft mask ``σ(k·z)``; the research baseline uses ``k = 50``.

    A large ``k`` makes the mask nearly binary but its derivative ``k·σ(kz)(1−σ(kz))`` vanishes for
    ``|z| ≳ 5/k``, so most logits receive (almost) no gradient — the "gradient masking" suspicion that
    ``configs/flex/masking.yaml`` tests by comparing ``k`` values.
    """

    binary_forward = False

    def __init__(self, k: float = 50.0):
        super().__init__()
        self.k = _check_k(k)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.k * logits)

    def extra_repr(self) -> str:
        return f"k={self.k}"


@MASKING.register("hard_sigmoid")
class HardSigmoid(nn.Module):
    """Piecewise-linear mask ``clamp(1/2 + k·z/4, 0, 1)``, the tangent of ``σ(k·z)`` at 0 clipped to ``[0, 1]``.

    Exactly binary for ``|z| ≥ 2/k`` — and there its gradient is exactly zero (stopped by design).
    """

    binary_forward = False

    def __init__(self, k: float = 1.0):
        super().__init__()
        self.k = _check_k(k)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.clamp(0.5 + 0.25 * self.k * logits, 0.0, 1.0)

    def extra_repr(self) -> str:
        return f"k={self.k}"


@MASKING.register("ste")
class StraightThrough(nn.Module):
    """Straight-through estimator: forward ``1[z ≥ 0]`` (exactly binary), backward the gradient of ``σ(k·z)``."""

    binary_forward = True

    def __init__(self, k: float = 1.0):
        super().__init__()
        self.k = _check_k(k)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        soft = torch.sigmoid(self.k * logits)
        hard = (logits >= 0).to(soft.dtype)
        # value: hard + 0 (exactly binary); gradient: d soft / d logits
        return hard + (soft - soft.detach())

    def extra_repr(self) -> str:
        return f"k={self.k}"


@MASKING.register("stochastic")
class StochasticRounding(nn.Module):
    """Stochastic rounding: in training the mask is 1 with probability ``σ(k·z)`` (straight-through gradient of
    ``σ(k·z)``); in eval mode it is the deterministic threshold ``1[z ≥ 0]``."""

    binary_forward = True

    def __init__(self, k: float = 1.0):
        super().__init__()
        self.k = _check_k(k)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.k * logits)
        if self.training:
            hard = (torch.rand_like(p) < p).to(p.dtype)
        else:
            hard = (logits >= 0).to(p.dtype)
        return hard + (p - p.detach())

    def extra_repr(self) -> str:
        return f"k={self.k}"
