"""The explainer registry and what every explainer shares: calling a survival model on a batch dict, the scalar
target (the predicted risk), and bringing cubelet-resolution maps back to image space.

An explainer is a registered callable class. ``EXPLAINERS.build(name)`` gives an object with

* ``__call__(model, batch) -> torch.Tensor``: (B, 1, D, H, W) heatmap aligned voxel-for-voxel with
  ``batch["image"]`` (B, 1, D, H, W) — or (B, 3, D, H, W) RGB for ``kind = "rgb"`` views;
* ``kind``: ``"heatmap"`` (enters the localisation metrics) or ``"rgb"`` (a picture, no localisation metrics);
* ``resolution``: ``"cubelet"`` when the map is piecewise constant on the model's cubelets, else ``"voxel"``.

Heatmaps are oriented so that larger = more responsible for a *higher risk* (shorter predicted survival).

Cubelet → voxel upsampling (:func:`~survival3d.metrics.localisation.cubelets_to_image`, defined in ``metrics/`` so the
training engine's diagnostics use the same one) assumes the model pads the volume at the far end of each axis up to a
multiple of ``model.patch_size`` (so cubelet (i, j, k) covers voxels ``[i*ps, (i+1)*ps)``); the map is upsampled to the
padded grid and cropped back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from survival3d.engine.inference import model_inputs
from survival3d.metrics.localisation import cubelets_to_image, patch_size_of
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
