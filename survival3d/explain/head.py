r"""The localisation head's own maps: the softmin weights p and the per-cubelet survival times ("locs").

The head answers "where" on its cubelet grid, so a single forward pass gives a map that is constant on each
cubelet; which cubelet of a lesion wins then depends on where the grid happens to cut the lesion (on dummy1 the
winner was often a rim cubelet whose centre lies just outside the sphere). ``head`` and ``head_loc`` therefore
average the map over sub-cubelet shifts of the grid — the input is padded by :math:`s` voxels before and
:math:`P - s` after on each axis (:math:`P` = patch size, edge-replicating), the model runs, and the map is
cropped back — the shift-and-stitch idea of Long, Shelhamer & Darrell (FCN, CVPR 2015) for dense output from a
strided network, with averaging instead of stitching:

.. math::
    H(v) = \frac{1}{|S|} \sum_{s \in S} \mathrm{up}\big(p^{(s)}\big)(v + s)

where :math:`S` holds up to 4 evenly spaced offsets per axis (all :math:`P^3` offsets for :math:`P \le 4`, so
at most 64 forward passes). ``head_grid`` is the single-pass map on the model's own grid, exactly the head's
distribution (its ``energy_pg_cubelet`` is the softmin weight on lesion cubelets).
"""

from __future__ import annotations

import itertools
from functools import partial

import torch
import torch.nn.functional as F

from survival3d.explain.base import (
    EXPLAINERS,
    Explainer,
    Unsupported,
    cubelets_to_image,
    model_image,
    model_inputs,
    patch_size_of,
)

__all__ = ["HeadMap", "grid_offsets"]


def grid_offsets(patch_size: int, per_axis: int) -> list[int]:
    """Up to ``per_axis`` evenly spaced sub-cubelet offsets in ``[0, patch_size)`` (always including 0)."""
    if patch_size < 1 or per_axis < 1:
        raise ValueError(f"patch_size {patch_size} and per_axis {per_axis} must be >= 1.")
    n = min(per_axis, patch_size)
    return sorted({(i * patch_size) // n for i in range(n)})


class HeadMap(Explainer):
    """The softmin head's cubelet map in image space (see the module docstring).

    Args:
        which: ``"p"`` — the softmin weights :math:`p_i` (0 on invalid cubelets, sum 1), the head's answer to "where";
            ``"loc"`` — the per-cubelet survival times turned into a risk map :math:`\\max_{valid} loc - loc_i` on
            valid cubelets (0 elsewhere), so the shortest-survival cubelet is the hottest.
        mode: cubelet → voxel upsampling, ``"nearest"`` (default: each cubelet's value fills exactly its voxels) or
            ``"trilinear"``.
        shifts: sub-cubelet grid offsets per axis to average over (1 = the model's own grid only, one forward pass;
            at most ``patch_size`` are used).
        chunk: shifted copies per forward pass (the shifts of one case run as batches of this size).

    Raises:
        Unsupported: at call time, when the model's head has no localisation map (``p``/``loc`` is None).
    """

    def __init__(self, *, which: str = "p", mode: str = "nearest", shifts: int = 4, chunk: int = 16):
        if which not in ("p", "loc"):
            raise ValueError(f"which must be 'p' or 'loc', got {which!r}.")
        if mode not in ("nearest", "trilinear"):
            raise ValueError(f"mode must be 'nearest' or 'trilinear', got {mode!r}.")
        if shifts < 1:
            raise ValueError(f"shifts must be >= 1, got {shifts}.")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}.")
        self.chunk = int(chunk)
        self.which = which
        self.mode = mode
        self.shifts = int(shifts)
        self.resolution = "cubelet" if self.shifts == 1 else "voxel"

    def _map(self, out) -> torch.Tensor:
        m = out.p if self.which == "p" else out.loc
        if m is None:
            raise Unsupported(f"this model's head returns no '{self.which}' map (a head without localisation).")
        m = m.float()
        valid = out.valid.bool() if out.valid is not None else torch.ones_like(m, dtype=torch.bool)
        if self.which == "loc":
            big = torch.finfo(m.dtype).max
            top = torch.where(valid, m, torch.full_like(m, -big)).flatten(1).amax(1).view(-1, 1, 1, 1, 1)
            return torch.where(valid, top - m, torch.zeros_like(m))
        return torch.where(valid, m, torch.zeros_like(m))

    @torch.no_grad()
    def explain(self, model, batch):
        image = model_image(model, batch)
        kw = model_inputs(batch, device=image.device)
        shape = image.shape[2:]
        ps = getattr(model, "patch_size", None)
        single = None
        if self.shifts == 1 or ps is None:  # the single pass; without model.patch_size it is inferred from it
            single = self._map(model(image, **kw))
            ps = patch_size_of(model, shape, single.shape[2:])
        if self.shifts == 1 or ps is None or ps == 1:
            single = self._map(model(image, **kw)) if single is None else single
            return cubelets_to_image(single, shape, ps, self.mode).cpu()
        ps = int(ps)
        shifts = list(itertools.product(grid_offsets(ps, self.shifts), repeat=3))
        padded = tuple(int(d) + ps for d in shape)
        total = torch.zeros(image.shape[0], 1, *shape, device=image.device)

        def shift(x: torch.Tensor, s) -> torch.Tensor:
            return F.pad(x, (s[2], ps - s[2], s[1], ps - s[1], s[0], ps - s[0]), mode="replicate")

        for b in range(image.shape[0]):  # the shifted copies of one case, batched: same padded shape for every shift
            for start in range(0, len(shifts), self.chunk):
                group = shifts[start: start + self.chunk]
                x = torch.cat([shift(image[b: b + 1], s) for s in group])
                sub = {k: None if v is None else torch.cat([shift(v[b: b + 1], s) for s in group])
                       if k == "lung_mask" else v[b: b + 1].expand(len(group), *v.shape[1:]) for k, v in kw.items()}
                m = self._map(model(x, **sub))
                cell = patch_size_of(model, padded, m.shape[2:])  # ps, or less for a finer head map (map_upsample)
                heat = cubelets_to_image(m, padded, cell, self.mode)
                for j, s in enumerate(group):
                    total[b] += heat[j, :, s[0]: s[0] + shape[0], s[1]: s[1] + shape[1], s[2]: s[2] + shape[2]]
        return (total / len(shifts)).cpu()


EXPLAINERS.register("head", partial(HeadMap, which="p"))
EXPLAINERS.register("head_loc", partial(HeadMap, which="loc"))
EXPLAINERS.register("head_grid", partial(HeadMap, which="p", shifts=1))
