"""A view of what the model sees: PCA of the cubelet features → RGB (no target, no localisation metrics)."""

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

__all__ = ["FeaturePCA", "pca_rgb"]


def pca_rgb(feat: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(C, d, h, w) features → (3, d, h, w) in [0, 1]: the first three principal components over the (valid)
    cubelets, each min-max scaled; the sign of each component is fixed so that its largest loading is positive.
    Components beyond the rank of the features are 0."""
    c = feat.shape[0]
    x = feat.reshape(c, -1).T.double()  # (N, C)
    sel = torch.ones(x.shape[0], dtype=torch.bool) if valid is None else valid.reshape(-1).cpu().bool()
    if sel.sum() < 2:
        sel = torch.ones_like(sel)
    mu = x[sel].mean(0)
    _, _, v = torch.linalg.svd(x[sel] - mu, full_matrices=False)  # rows of v: components
    k = min(3, v.shape[0])
    comps = v[:k]
    sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    proj = (x - mu) @ (comps * sign).T  # (N, k)
    lo, hi = proj[sel].amin(0), proj[sel].amax(0)
    rgb = torch.zeros(x.shape[0], 3, dtype=torch.float64)
    rgb[:, :k] = ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    rgb[~sel] = 0
    return rgb.T.reshape(3, *feat.shape[1:]).float()


class FeaturePCA(Explainer):
    """PCA → RGB of a feature map, nearest-upsampled from cubelets to the image (a ``kind = "rgb"`` view).

    Args:
        layer: ``"embed"`` (transformer input) or ``"tokens"`` (transformer output), or any other feature name.
    """

    kind = "rgb"
    resolution = "cubelet"

    def __init__(self, *, layer: str = "tokens"):
        self.layer = layer

    @torch.no_grad()
    def explain(self, model, batch):
        out = run_model(model, batch)
        if self.layer not in out.features:
            raise Unsupported(f"model features {sorted(out.features)} lack {self.layer!r}.")
        feat = out.features[self.layer].float().cpu()
        valid = out.valid.cpu() if out.valid is not None else None
        rgb = torch.stack([pca_rgb(feat[i], None if valid is None else valid[i, 0]) for i in range(feat.shape[0])])
        shape = batch["image"].shape[2:]
        return cubelets_to_image(rgb, shape, patch_size_of(model, shape, rgb.shape[2:]), "nearest")


EXPLAINERS.register("feature_pca_embed", partial(FeaturePCA, layer="embed"))
EXPLAINERS.register("feature_pca_tokens", partial(FeaturePCA, layer="tokens"))
