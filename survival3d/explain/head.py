"""The localisation head's own maps: the softmin weights p and the per-cubelet survival times ("locs")."""

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

__all__ = ["HeadMap"]


class HeadMap(Explainer):
    """The softmin head's cubelet map, upsampled to the image with **nearest** interpolation (so each cubelet's value
    fills exactly its voxels and ``energy_pg_cubelet`` reads the head's own distribution).

    Args:
        which: ``"p"`` — the softmin weights :math:`p_i` (0 on invalid cubelets, sum 1), the head's answer to "where";
            ``"loc"`` — the per-cubelet survival times turned into a risk map :math:`\\max_{valid} loc - loc_i` on
            valid cubelets (0 elsewhere), so the shortest-survival cubelet is the hottest.
        mode: upsampling, ``"nearest"`` (default) or ``"trilinear"``.

    Raises:
        Unsupported: at call time, when the model's head has no localisation map (``p``/``loc`` is None).
    """

    resolution = "cubelet"

    def __init__(self, *, which: str = "p", mode: str = "nearest"):
        if which not in ("p", "loc"):
            raise ValueError(f"which must be 'p' or 'loc', got {which!r}.")
        if mode not in ("nearest", "trilinear"):
            raise ValueError(f"mode must be 'nearest' or 'trilinear', got {mode!r}.")
        self.which = which
        self.mode = mode

    @torch.no_grad()
    def explain(self, model, batch):
        out = run_model(model, batch)
        m = out.p if self.which == "p" else out.loc
        if m is None:
            raise Unsupported(f"this model's head returns no '{self.which}' map (a head without localisation).")
        m = m.float()
        valid = out.valid.bool() if out.valid is not None else torch.ones_like(m, dtype=torch.bool)
        if self.which == "loc":
            big = torch.finfo(m.dtype).max
            top = torch.where(valid, m, torch.full_like(m, -big)).flatten(1).amax(1).view(-1, 1, 1, 1, 1)
            m = torch.where(valid, top - m, torch.zeros_like(m))
        else:
            m = torch.where(valid, m, torch.zeros_like(m))
        shape = batch["image"].shape[2:]
        return cubelets_to_image(m, shape, patch_size_of(model, shape, m.shape[2:]), self.mode)


EXPLAINERS.register("head", partial(HeadMap, which="p"))
EXPLAINERS.register("head_loc", partial(HeadMap, which="loc"))
