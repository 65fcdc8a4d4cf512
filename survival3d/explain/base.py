"""The explainer registry and what every explainer shares: calling a survival model on a batch dict, the scalar
target (the predicted risk), and bringing cubelet-resolution maps back to image space.

An explainer is a registered callable class. ``EXPLAINERS.build(name)`` gives an object with

* ``__call__(model, batch) -> torch.Tensor``: (B, 1, D, H, W) heatmap aligned voxel-for-voxel with
  ``batch["image"]`` (B, 1, D, H, W) — or (B, 3, D, H, W) RGB for ``kind = "rgb"`` views;
* ``kind``: ``"heatmap"`` (enters the localisation metrics) or ``"rgb"`` (a picture, no localisation metrics);
* ``resolution``: ``"cubelet"`` when the map is piecewise constant on the model's cubelets, else ``"voxel"``.

Heatmaps are oriented so that larger = more responsible for a *higher risk* (shorter predicted survival).

Cubelet → voxel upsampling assumes the model pads the volume at the far end of each axis up to a multiple of
``model.patch_size`` (so cubelet (i, j, k) covers voxels ``[i*ps, (i+1)*ps)``); the map is upsampled to the padded
grid and cropped back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from survival3d.engine.inference import model_inputs
from survival3d.registry import Registry

__all__ = [
    "EXPLAINERS",
    "Explainer",
    "Unsupported",
    "model_image",
    "model_inputs",
    "run_model",
    "cubelets_to_image",
    "patch_size_of",
]

EXPLAINERS: Registry = Registry("explainer")


class Unsupported(ValueError):
    """The model lacks what an explainer needs (a head without a p map, a missing feature map)."""

def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def model_image(model: torch.nn.Module, batch: Mapping[str, Any], image: torch.Tensor | None = None) -> torch.Tensor:
    """The (B, 1, D, H, W) model input of a data-path batch as float32 on the model's device.

    ``image`` replaces ``batch["image"]`` (e.g. a copy that requires grad, or an occluded copy).
    """
    img = batch["image"] if image is None else image
    if not torch.is_tensor(img) or img.ndim != 5:
        raise ValueError(f"batch['image'] must be a (B, 1, D, H, W) tensor, got {getattr(img, 'shape', type(img))}.")
    return img.float().to(_device_of(model))


def run_model(model: torch.nn.Module, batch: Mapping[str, Any], image: torch.Tensor | None = None):
    """``model(image, **model_inputs(batch))`` on the model's device → SurvivalOutput (no grad handling: callers
    choose); the keyword arguments are the engine's (:func:`survival3d.engine.inference.model_inputs`)."""
    return model(model_image(model, batch, image), **model_inputs(batch, device=_device_of(model)))


def patch_size_of(model: torch.nn.Module, image_shape, grid_shape) -> int | None:
    """The edge in voxels of one cell of a map on ``grid_shape``: ``model.patch_size`` when the grid is the model's
    cubelet grid, else inferred when the image is an exact multiple (e.g. a head map finer than the cubelets,
    ``head.map_upsample``)."""
    ps = getattr(model, "patch_size", None)
    if ps is not None and all(-(-int(s) // int(ps)) == int(g) for s, g in zip(image_shape, grid_shape)):
        return int(ps)
    ratios = {-(-int(s) // int(g)) for s, g in zip(image_shape, grid_shape)}
    return ratios.pop() if len(ratios) == 1 else None


def cubelets_to_image(
    x: torch.Tensor, image_shape, patch_size: int | None, mode: str = "nearest"
) -> torch.Tensor:
    """(B, C, d, h, w) cubelet map → (B, C, D, H, W) voxel map.

    Args:
        x: the cubelet map.
        image_shape: (D, H, W) of the model input.
        patch_size: cubelet edge in voxels; ``None`` stretches the grid over the image instead (no padding known).
        mode: ``"nearest"`` (each cubelet's value fills its voxels — faithful to a cubelet-level quantity such as the
            softmin weight) or ``"trilinear"`` (smooth, ``align_corners=False``: cubelet centres keep their values;
            the usual choice for CAMs).
    """
    if mode not in ("nearest", "trilinear"):
        raise ValueError(f"mode must be 'nearest' or 'trilinear', got {mode!r}.")
    image_shape = tuple(int(s) for s in image_shape)
    x = x.float()
    if patch_size is None:
        size = image_shape
    else:
        size = tuple(int(g) * patch_size for g in x.shape[2:])
        if any(s < t for s, t in zip(size, image_shape)):
            raise ValueError(f"cubelet grid {tuple(x.shape[2:])} × {patch_size} does not cover image {image_shape}.")
    kw = {"align_corners": False} if mode == "trilinear" else {}
    up = F.interpolate(x, size=size, mode=mode, **kw)
    return up[..., : image_shape[0], : image_shape[1], : image_shape[2]]


class Explainer:
    """Base class: subclasses implement ``explain(model, batch) -> (B, C, D, H, W)``."""

    kind = "heatmap"
    resolution = "voxel"

    def __call__(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            out = self.explain(model, batch)
        finally:
            model.train(was_training)
        image = batch["image"]
        if tuple(out.shape[2:]) != tuple(image.shape[2:]) or out.shape[0] != image.shape[0]:
            raise RuntimeError(f"{type(self).__name__} returned {tuple(out.shape)} for image {tuple(image.shape)}.")
        return out.detach().float().cpu()

    def explain(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
