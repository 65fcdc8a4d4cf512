r"""Grad-CAM and Grad-CAM++ on the model's 3D feature maps (``SurvivalOutput.features``), target = the predicted
risk (higher = shorter survival), computed with autograd.

For a feature map :math:`A \in \mathbb{R}^{C \times d \times h \times w}` and target :math:`y` (risk):

* Grad-CAM (Selvaraju et al., ICCV 2017):
  :math:`w_c = \frac{1}{Z}\sum_{u} \partial y / \partial A_c(u)`, :math:`M = \mathrm{ReLU}(\sum_c w_c A_c)`.
* Grad-CAM++ (Chattopadhay et al., WACV 2018), with :math:`g = \partial y/\partial A` and the exponential-target
  closed form for the higher derivatives:
  :math:`\alpha_c(u) = g_c(u)^2 / (2 g_c(u)^2 + \sum_v A_c(v) g_c(u)^3)`,
  :math:`w_c = \sum_u \alpha_c(u)\,\mathrm{ReLU}(g_c(u))`, :math:`M = \mathrm{ReLU}(\sum_c w_c A_c)`.

The cubelet map :math:`M` is upsampled to the image **trilinearly** (``align_corners=False``).
Registered: ``gradcam`` / ``gradcampp`` (transformer output, ``"tokens"``), ``gradcam_embed`` /
``gradcampp_embed`` (transformer input), ``gradcam_tokens`` / ``gradcampp_tokens`` (aliases of the defaults).
"""

from __future__ import annotations

from functools import partial

import torch

from survival3d.explain.base import (
    EXPLAINERS,
    Explainer,
    Unsupported,
    cubelets_to_image,
    patch_size_of,
    run_model,
)

__all__ = ["GradCAM", "features_and_gradients", "gradcam_weights", "gradcampp_weights"]


def features_and_gradients(model, batch, layers: list[str]) -> tuple[object, list[torch.Tensor], list[torch.Tensor]]:
    """Forward with grad enabled; return (output, feature maps, d(sum of risk)/d feature map) for ``layers``.

    The input image is made to require grad so that the features are in the graph even for a frozen model.
    Samples of a batch are independent in eval mode, so the gradient of the summed risk is per-sample.
    """
    with torch.enable_grad():
        image = batch["image"].detach().float().clone().requires_grad_(True)
        out = run_model(model, batch, image=image)
        missing = [n for n in layers if n not in out.features]
        if missing:
            raise Unsupported(f"model features {sorted(out.features)} lack {missing}.")
        feats = [out.features[n] for n in layers]
        grads = torch.autograd.grad(out.risk.float().sum(), feats, allow_unused=True)
    grads = [torch.zeros_like(f) if g is None else g for f, g in zip(feats, grads)]
    return out, [f.detach().float() for f in feats], [g.detach().float() for g in grads]


def gradcam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(B, C) Grad-CAM channel weights: spatial mean of the gradient."""
    return g.flatten(2).mean(2)


def gradcampp_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(B, C) Grad-CAM++ channel weights (see module docstring)."""
    g2, g3 = g.pow(2), g.pow(3)
    denom = 2 * g2 + a.flatten(2).sum(2)[..., None, None, None] * g3
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    return (alpha * torch.relu(g)).flatten(2).sum(2)


class GradCAM(Explainer):
    """Grad-CAM / Grad-CAM++ at one feature map.

    Args:
        layer: key of ``SurvivalOutput.features`` (``"embed"``, ``"block{i}"``, ``"tokens"``).
        plusplus: Grad-CAM++ weights instead of Grad-CAM's.
    """

    def __init__(self, *, layer: str = "tokens", plusplus: bool = False):
        self.layer = layer
        self.plusplus = plusplus

    def explain(self, model, batch):
        _, (a,), (g,) = features_and_gradients(model, batch, [self.layer])
        w = (gradcampp_weights if self.plusplus else gradcam_weights)(a, g)
        cam = torch.relu(torch.einsum("bc,bcdhw->bdhw", w, a))[:, None]
        shape = batch["image"].shape[2:]
        return cubelets_to_image(cam, shape, patch_size_of(model, shape, cam.shape[2:]), "trilinear")


for _name, _layer, _pp in [
    ("gradcam", "tokens", False),
    ("gradcam_tokens", "tokens", False),
    ("gradcam_embed", "embed", False),
    ("gradcampp", "tokens", True),
    ("gradcampp_tokens", "tokens", True),
    ("gradcampp_embed", "embed", True),
]:
    EXPLAINERS.register(_name, partial(GradCAM, layer=_layer, plusplus=_pp))
