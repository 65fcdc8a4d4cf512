"""Classification losses for imbalanced skin-lesion data, registered in :data:`LOSSES`.

Every loss maps logits ``(B, K)`` and integer targets ``(B,)`` to a scalar mean. Built with
``build_loss(spec, class_counts=[...])``; ``class_counts`` (training-set samples per class) is offered to the
losses that use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from survival3d.errors import ConfigError
from survival3d.layers.attention import build_with_context
from survival3d.registry import Registry

__all__ = ["LOSSES", "build_loss", "focal_loss", "class_balanced_weights", "FocalLoss", "ClassBalancedLoss", "CrossEntropy"]

LOSSES: Registry = Registry("loss")


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Per-sample focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

    .. math::

        \mathrm{FL}(p_t) = -\alpha_t\,(1 - p_t)^{\gamma}\,\log p_t,

    with ``p_t`` the softmax probability of the true class and ``α_t = alpha[target]`` (1 when ``alpha`` is
    ``None``). At ``γ = 0`` and no ``α`` this is the cross-entropy.
    """
    logp_t = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)
    loss = -((1 - logp_t.exp()).clamp_min(0) ** gamma) * logp_t
    if alpha is not None:
        loss = alpha.to(loss)[target] * loss
    return loss


def class_balanced_weights(class_counts: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    r"""Class weights from the effective number of samples (Cui et al., "Class-Balanced Loss Based on Effective
    Number of Samples", CVPR 2019).

    .. math::

        E_c = \frac{1 - \beta^{n_c}}{1 - \beta}, \qquad w_c = \frac{K / E_c}{\sum_j 1 / E_j},

    so the ``K`` weights sum to ``K``. ``β → 1`` gives inverse-frequency weights, ``β = 0`` uniform weights.
    """
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if counts.ndim != 1 or len(counts) == 0 or (counts < 0).any():
        raise ValueError(f"class_counts must be a non-empty list of non-negative counts, got {list(class_counts)}.")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}.")
    effective = (1.0 - beta ** counts.clamp_min(1)) / (1.0 - beta)
    w = 1.0 / effective
    return (w * len(counts) / w.sum()).float()


@LOSSES.register("ce")
class CrossEntropy(nn.Module):
    """Cross-entropy with optional label smoothing (Szegedy et al., 2016): targets ``(1 − ε)·onehot + ε / K``."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)


@LOSSES.register("focal")
class FocalLoss(nn.Module):
    """Mean :func:`focal_loss`; ``alpha`` is ``None``, one number for every class, or a list of ``K`` numbers."""

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}.")
        self.gamma = float(gamma)
        self.scalar_alpha = None
        if alpha is None or isinstance(alpha, (int, float)):
            self.scalar_alpha = None if alpha is None else float(alpha)
            self.register_buffer("alpha", None)
        else:
            self.register_buffer("alpha", torch.as_tensor(list(alpha), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.alpha is not None and len(self.alpha) != logits.shape[1]:
            raise ValueError(f"focal alpha has {len(self.alpha)} entries for {logits.shape[1]} classes.")
        loss = focal_loss(logits, target, self.gamma, self.alpha).mean()
        return loss if self.scalar_alpha is None else self.scalar_alpha * loss


@LOSSES.register("class_balanced")
class ClassBalancedLoss(nn.Module):
    """Class-balanced loss (Cui et al., 2019): the focal (``base="focal"``) or cross-entropy (``base="ce"``) loss
    of each sample weighted by :func:`class_balanced_weights` of its class; mean over the batch.

    Needs ``class_counts`` (filled in by the trainer from the training split).
    """

    _BASES = ("focal", "ce")

    def __init__(self, class_counts: Sequence[int], beta: float = 0.9999, gamma: float = 2.0, base: str = "focal"):
        super().__init__()
        if base not in self._BASES:
            raise ValueError(f"base must be one of {self._BASES}, got {base!r}.")
        self.gamma = float(gamma) if base == "focal" else 0.0
        self.register_buffer("weights", class_balanced_weights(class_counts, beta))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, self.gamma, self.weights).mean()


def build_loss(name: str, class_counts: Sequence[int] | None = None, **options) -> nn.Module:
    """Instantiate the loss ``name`` with those of ``options`` (and ``class_counts``) that it takes.

    ``build_loss("focal", gamma=2.0, label_smoothing=0.1)`` ignores ``label_smoothing`` (a cross-entropy option),
    so a whole loss config section can be passed as ``**options``.
    """
    if class_counts is not None:
        options["class_counts"] = list(class_counts)
    if "class_counts" not in options and name == "class_balanced":
        raise ConfigError("loss 'class_balanced' needs the training class counts (class_counts).")
    return build_with_context(LOSSES, name, **options)
