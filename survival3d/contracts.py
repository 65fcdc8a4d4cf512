"""Shared data contracts (leaf module: torch and stdlib only): what a survival model returns and the covariates it is built for."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["SurvivalOutput", "CovariateSpec"]


@dataclass
class CovariateSpec:
    """Shape of the covariates a model is conditioned on (fixed when the model is built).

    Attributes:
        num_numeric: number of standardised numeric columns (``cov_num`` has shape (B, num_numeric)).
        cardinalities: for each categorical column, the number of levels including an 'unknown' slot
            (``cov_cat`` has shape (B, len(cardinalities)), dtype long).
    """

    num_numeric: int = 0
    cardinalities: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.num_numeric == 0 and not self.cardinalities


@dataclass
class SurvivalOutput:
    """Output of a survival model's forward pass for a batch of B volumes.

    Attributes:
        pred: (B,) predicted survival time μ (same unit as the manifest's ``time``).
        risk: (B,) a risk score, higher = shorter survival (used for the C-index); ``-pred`` for time heads.
        p: (B, 1, d, h, w) localisation weights over cubelets (softmin p; 0 on invalid cubelets, sums to 1), or
            ``None`` for heads without localisation.
        loc: (B, 1, d, h, w) per-cubelet survival times, or ``None``.
        valid: (B, 1, d, h, w) bool, cubelets that count (not padding; enough lung), or ``None``.
        reg_loss: scalar tensor, the head's weighted regularisers (entropy, smoothness); 0 when off.
        features: named feature maps, each (B, C, d, h, w) and part of the autograd graph, for explainers:
            ``"embed"`` (transformer input), ``"block{i}"`` (after block i), ``"tokens"`` (transformer output).
    """

    pred: torch.Tensor
    risk: torch.Tensor
    p: torch.Tensor | None = None
    loc: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    reg_loss: torch.Tensor | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
