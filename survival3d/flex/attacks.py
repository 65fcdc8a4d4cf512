"""L∞ evasion attacks (FGSM, PGD) and the robust-accuracy curve with its normalised area ("attack AUC").

* FGSM — Goodfellow, Shlens & Szegedy, "Explaining and harnessing adversarial examples", ICLR 2015:
  :math:`x' = \\mathrm{clip}(x + \\varepsilon\\,\\mathrm{sign}\\,\\nabla_x \\mathcal{L}(f(x), y))`.
* PGD — Madry et al., "Towards deep learning models resistant to adversarial attacks", ICLR 2018: optional
  uniform random start in the ε-ball, then ``steps`` signed-gradient steps of size ``step_size``, each projected
  back onto the ε-ball and the valid pixel range.

Both are untargeted (maximise the cross-entropy of the true label) and use the model's own backward pass — for
FlexLayers with ``ste``/``stochastic`` masking that is the surrogate gradient, and a sharp sigmoid may hide the
gradient (gradient masking), which shows up as a suspiciously high attack AUC.

Gradient masking is probed with BPDA (Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of
security", ICML 2018): :func:`surrogate_gradients` keeps every FlexLayer's mask value but back-propagates through
``σ(k'·z)`` with a mild ``k'``; if a model is much less robust under this attack than under its own gradients, its
robustness was an artefact of vanishing gradients.

The attack AUC is :math:`\\frac{1}{\\varepsilon_{max}}\\int_0^{\\varepsilon_{max}} \\mathrm{acc}(\\varepsilon)\\,
d\\varepsilon` by the trapezoidal rule: the mean robust accuracy over the ε range, in ``[0, clean accuracy]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from survival3d.registry import Registry

__all__ = ["ATTACKS", "fgsm", "pgd", "accuracy", "robust_accuracy_curve", "attack_auc", "eps_grid",
           "surrogate_gradients"]

ATTACKS: Registry = Registry("attack")

Bounds = tuple[float, float] | None


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def _clip(x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    return x if bounds is None else x.clamp(*bounds)


@ATTACKS.register("fgsm")
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
         bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """One signed-gradient step of size ``eps`` (clipped to ``bounds``; ``None`` = no clipping)."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}.")
    return _clip(x + eps * _input_grad(model, x, y).sign(), bounds).detach()


@ATTACKS.register("pgd")
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 10,
        step_size: float | None = None, random_start: bool = True, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """Projected gradient descent in the L∞ ball of radius ``eps``; ``step_size`` defaults to ``2.5·eps/steps``."""
    if eps < 0 or steps < 1:
        raise ValueError(f"need eps >= 0 and steps >= 1, got eps={eps}, steps={steps}.")
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    x0 = x.detach()
    adv = x0 + torch.empty_like(x0).uniform_(-eps, eps) if random_start else x0.clone()
    adv = _clip(adv, bounds)
    for _ in range(steps):
        adv = adv + alpha * _input_grad(model, adv, y).sign()
        adv = _clip(torch.min(torch.max(adv, x0 - eps), x0 + eps), bounds).detach()
    return adv


class _SurrogateMask(nn.Module):
    """The wrapped mask's value in the forward pass, the gradient of ``σ(k·z)`` in the backward pass."""

    def __init__(self, inner: nn.Module, k: float):
        super().__init__()
        self.inner, self.k = inner, float(k)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        soft = torch.sigmoid(self.k * logits)
        return self.inner(logits).detach() + (soft - soft.detach())


@contextmanager
def surrogate_gradients(model: nn.Module, k: float = 1.0) -> Iterator[nn.Module]:
    """Within the block, every learned-mask FlexLayer of ``model`` back-propagates through ``σ(k·z)`` (BPDA) while
    its outputs stay bit-identical; the original masking functions are restored on exit."""
    from survival3d.flex.layer import FlexLayer

    if not k > 0:
        raise ValueError(f"surrogate k must be > 0, got {k}.")
    layers = [m for m in model.modules() if isinstance(m, FlexLayer) and not m.logits.joint]
    saved = [layer.masking for layer in layers]
    try:
        for layer in layers:
            layer.masking = _SurrogateMask(layer.masking, k)
        yield model
    finally:
        for layer, masking in zip(layers, saved):
            layer.masking = masking


def eps_grid(eps_max: float, n_steps: int) -> list[float]:
    """``n_steps + 1`` evenly spaced ε values from 0 to ``eps_max``."""
    if eps_max < 0 or n_steps < 1:
        raise ValueError(f"need eps_max >= 0 and n_steps >= 1, got {eps_max}, {n_steps}.")
    return [float(e) for e in np.linspace(0.0, eps_max, n_steps + 1)]


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = total = 0
    for x, y in batches:
        correct += (model(x).argmax(dim=1) == y).sum()
        total += len(y)
    return float(correct) / max(total, 1)


def robust_accuracy_curve(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                          eps: Sequence[float], attack: Callable[..., torch.Tensor], **attack_kwargs) -> list[float]:
    """Accuracy on ``attack(model, x, y, ε, **attack_kwargs)`` for each ε (model used as it is: call ``eval()``)."""
    curve = []
    for e in eps:
        correct = total = 0
        for x, y in batches:
            adv = attack(model, x, y, float(e), **attack_kwargs)
            with torch.no_grad():
                correct += (model(adv).argmax(dim=1) == y).sum()
            total += len(y)
        curve.append(float(correct) / max(total, 1))
    return curve


def attack_auc(eps: Sequence[float], acc: Sequence[float]) -> float:
    """Normalised area under the robust-accuracy curve (trapezoidal): mean accuracy over ``[eps[0], eps[-1]]``."""
    eps, acc = np.asarray(eps, dtype=float), np.asarray(acc, dtype=float)
    if eps.shape != acc.shape or eps.size < 2 or not np.all(np.diff(eps) > 0):
        raise ValueError(f"need >= 2 increasing eps values matching acc, got eps={eps.tolist()}, acc={acc.tolist()}.")
    return float(np.trapezoid(acc, eps) / (eps[-1] - eps[0]))
