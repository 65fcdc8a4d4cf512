r"""Poly-CAM in 3D (Englebert, Cornu & De Vleeschouwer 2022, "Poly-CAM: High resolution class activation map for
convolutional neural networks", arXiv:2204.13359), on the feature maps of ``SurvivalOutput.features``
(``"embed"``, ``"block{i}"``, ``"tokens"``), target = the predicted risk.

Poly-CAM is gradient-free: each layer's map is a channel-weighted sum of its activations whose weights are scores of
the model on the input masked by each channel, and the maps of successive layers are multiplied from the lowest to
the highest resolution so that the high-resolution layers sharpen the class-specific coarse map. For layers
:math:`l = L, \dots, 1` ordered from low to high resolution (at equal resolution, deepest first), with
:math:`x` the image, :math:`b` a baseline image, :math:`f` the risk and :math:`S_{L+1} = 1`:

.. math::
    m^l_c = \mathrm{up}_{image}\!\left(\mathrm{norm}\big(\mathrm{ReLU}(A^l_c) \odot \mathrm{up}(S_{l+1})\big)\right)
    \qquad \text{(channel mask in [0, 1])}

    \mathrm{ins}^l_c = f\big(b + m^l_c (x - b)\big) - f(b), \qquad
    \mathrm{del}^l_c = f(x) - f\big(x - m^l_c (x - b)\big)

    M^l = \mathrm{ReLU}\Big(\sum_c w^l_c A^l_c\Big), \qquad S_l = \mathrm{up}(S_{l+1}) \odot \mathrm{norm}(M^l)

with :math:`w = \mathrm{ins}` for **PCAM+** (insertion scores), :math:`w = \mathrm{del}` for **PCAM−** (deletion
scores) and :math:`w = \mathrm{ins} + \mathrm{del}` for **PCAM±**; ``norm`` divides by the maximum, ``up`` is
trilinear. The result :math:`S_1` is upsampled trilinearly to the image.

Registered: ``polycam`` (= PCAM±, the paper's recommended combination), ``polycam_plus`` (PCAM+),
``polycam_minus`` (PCAM−). Cost: one forward pass per channel per layer (two for PCAM±), batched by ``chunk``.

Note: in this transformer every named feature map lives on the same cubelet grid, so "low to high resolution"
degenerates to deepest to shallowest layer at one resolution; the implementation handles differing resolutions.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from survival3d.explain.base import (
    EXPLAINERS,
    Explainer,
    Unsupported,
    cubelets_to_image,
    patch_size_of,
    run_model,
)

__all__ = ["PolyCAM", "repeat_case"]


def repeat_case(batch, i: int, n: int) -> dict:
    """Case ``i`` of a batch as a batch of ``n`` identical copies (tensors only; ``image`` included)."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == batch["image"].shape[0]:
            out[k] = v[i : i + 1].expand(n, *v.shape[1:])
    return out


def _norm_max(x: torch.Tensor) -> torch.Tensor:
    """Divide each map of (N, 1, ...) by its maximum (0 stays 0)."""
    m = x.flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
    return x / m


class PolyCAM(Explainer):
    """3D Poly-CAM (see module docstring for the formula).

    Args:
        variant: ``"plus"`` (PCAM+), ``"minus"`` (PCAM−) or ``"pm"`` (PCAM±).
        layers: feature names to combine; ``None`` = every feature of the model output.
        baseline: ``"zero"`` (the darkest value after windowing: air) or ``"mean"`` (the case's mean intensity).
        chunk: perturbed images per forward pass.
    """

    def __init__(self, *, variant: str = "pm", layers: list[str] | None = None, baseline: str = "zero",
                 chunk: int = 16):
        if variant not in ("plus", "minus", "pm"):
            raise ValueError(f"variant must be 'plus', 'minus' or 'pm', got {variant!r}.")
        if baseline not in ("zero", "mean"):
            raise ValueError(f"baseline must be 'zero' or 'mean', got {baseline!r}.")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}.")
        self.variant, self.layers, self.baseline, self.chunk = variant, layers, baseline, chunk

    @torch.no_grad()
    def _risk(self, model, case, images: torch.Tensor) -> torch.Tensor:
        outs = []
        for s in range(0, images.shape[0], self.chunk):
            part = images[s : s + self.chunk]
            sub = {k: v[: part.shape[0]] for k, v in case.items()}
            outs.append(run_model(model, sub, image=part).risk.float())
        return torch.cat(outs)

    @torch.no_grad()
    def explain(self, model, batch):
        image = batch["image"].float()
        shape = tuple(image.shape[2:])
        out = run_model(model, batch)
        names = list(out.features) if self.layers is None else list(self.layers)
        missing = [n for n in names if n not in out.features]
        if missing or not names:
            raise Unsupported(f"model features {sorted(out.features)} lack {missing or 'any layer'}.")
        # low → high resolution; at equal resolution the deepest (last produced) first
        order = sorted(range(len(names)), key=lambda k: (out.features[names[k]].shape[2:].numel(), -k))
        maps = []
        for i in range(image.shape[0]):
            case = repeat_case(batch, i, self.chunk)
            x = image[i : i + 1].to(out.risk.device)
            b = torch.zeros_like(x) if self.baseline == "zero" else torch.full_like(x, float(x.mean()))
            f_x, f_b = self._risk(model, case, torch.cat([x, b]))
            s_prev = None
            for k in order:
                a = torch.relu(out.features[names[k]][i : i + 1].float())  # (1, C, d, h, w)
                grid = a.shape[2:]
                prior = torch.ones(1, 1, *grid, device=a.device) if s_prev is None else F.interpolate(
                    s_prev, size=grid, mode="trilinear", align_corners=False)
                masks = _norm_max((a * prior).transpose(0, 1))  # (C, 1, d, h, w)
                ps = patch_size_of(model, shape, grid)
                m = cubelets_to_image(masks, shape, ps, "trilinear").clamp(0, 1).to(x.device)
                w = torch.zeros(a.shape[1], device=a.device)
                if self.variant in ("plus", "pm"):
                    w = w + (self._risk(model, case, b + m * (x - b)) - f_b).to(a.device)
                if self.variant in ("minus", "pm"):
                    w = w + (f_x - self._risk(model, case, x - m * (x - b))).to(a.device)
                cam = torch.relu(torch.einsum("c,bcdhw->bdhw", w, a))[:, None]
                s_prev = prior * _norm_max(cam)
            ps = patch_size_of(model, shape, s_prev.shape[2:])
            maps.append(cubelets_to_image(s_prev, shape, ps, "trilinear"))
        return torch.cat(maps)


EXPLAINERS.register("polycam", partial(PolyCAM, variant="pm"))
EXPLAINERS.register("polycam_plus", partial(PolyCAM, variant="plus"))
EXPLAINERS.register("polycam_minus", partial(PolyCAM, variant="minus"))
