"""Occlusion sensitivity of the predicted risk with MONAI's :class:`monai.visualize.OcclusionSensitivity`
(Zeiler & Fergus, ECCV 2014): a box slides over the volume, and the map records how much the risk drops when the
box is occluded: ``heatmap = risk(image) - risk(occluded image)`` (positive where hiding the region lowers risk)."""

from __future__ import annotations

import warnings
from functools import partial

import torch
from torch import nn

from survival3d.explain.base import EXPLAINERS, Explainer, run_model
from survival3d.explain.polycam import repeat_case

__all__ = ["Occlusion", "RiskWrapper"]


class RiskWrapper(nn.Module):
    """Turns a survival model into the (N, 1) "classifier" OcclusionSensitivity expects, for one case: covariates
    and lung mask of that case are repeated to the occlusion batch size; the output is the risk."""

    def __init__(self, model: nn.Module, case: dict):
        super().__init__()
        self.model = model
        self.case = case

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sub = {k: v[:1].expand(x.shape[0], *v.shape[1:]) for k, v in self.case.items()}
        return run_model(self.model, sub, image=x).risk.float()[:, None]


@EXPLAINERS.register("occlusion")
class Occlusion(Explainer):
    """Args (passed to OcclusionSensitivity):
        mask_size: occluding box edge in voxels.
        overlap: overlap of successive boxes, in [0, 1).
        mode: ``"gaussian"`` (multiply by 1 - Gaussian: darkens the region towards air), ``"mean_img"``,
            ``"mean_patch"``, or a float fill value.
        n_batch: occluded images per forward pass.
    """

    def __init__(self, *, mask_size: int = 8, overlap: float = 0.5, mode: str | float = "gaussian", n_batch: int = 16):
        if mask_size < 1:
            raise ValueError(f"mask_size must be >= 1, got {mask_size}.")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
        self.mask_size, self.overlap, self.mode, self.n_batch = mask_size, overlap, mode, n_batch

    @torch.no_grad()
    def explain(self, model, batch):
        from monai.visualize import OcclusionSensitivity

        image = batch["image"].float()
        maps = []
        for i in range(image.shape[0]):
            case = repeat_case(batch, i, 1)
            wrapper = RiskWrapper(model, case)
            x = image[i : i + 1].to(next(model.parameters()).device)
            base = wrapper(x)[0, 0]
            size = [min(self.mask_size, s) for s in x.shape[2:]]
            occ = OcclusionSensitivity(wrapper, mask_size=size, n_batch=self.n_batch, verbose=False,
                                       mode=self.mode, overlap=self.overlap, activate=False)
            with warnings.catch_warnings():  # MONAI indexes with lists (a torch deprecation warning per call)
                warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                                        category=UserWarning)
                occ_map, _ = occ(x)  # the risk with the region around each voxel occluded: (1, 1, D, H, W[, 1])
            if occ_map.ndim == x.ndim + 1:
                occ_map = occ_map[..., 0]
            maps.append((base - occ_map).float().cpu())
        return torch.cat(maps)


#: The coarse variant ``explain`` runs by default: non-overlapping boxes of the default edge, (1 − overlap)⁻³ = 8×
#: fewer forward passes than ``occlusion`` (64 instead of 343 on a 32³ volume); the map is blocky at the box size.
EXPLAINERS.register("occlusion_coarse", partial(Occlusion, mask_size=8, overlap=0.0))
