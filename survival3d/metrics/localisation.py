r"""Does a heatmap point at the ground-truth lesion? Localisation metrics of one (D, H, W) heatmap against a binary
lesion mask, all computed inside the *valid region* (the lung mask when there is one, else the whole volume).

Columns (``LOCALISATION_COLUMNS``, the names used in ``localisation.csv``):

* ``pointing_game``: 1 when the heatmap's maximum (over the valid region; on ties — e.g. a whole cubelet of a
  nearest-upsampled map — the tied voxel closest to the centroid of the tied voxels)
  lies inside the mask, or within ``tolerance`` voxels (Euclidean) of it; else 0. A constant map scores 0.
* ``energy_pg``: energy-based pointing game (Wang et al., Score-CAM, CVPRW 2020):
  :math:`\sum_{v \in mask} h^+(v) / \sum_{v \in valid} h^+(v)` at voxel level, with :math:`h^+ = \max(h, 0)`
  (**negative heatmap values are clipped to 0**). NaN for an all-zero map.
* ``energy_pg_cubelet``: the same at the model's cubelet resolution — the clipped mass is summed per cubelet
  (``patch_size``\ :sup:`3` voxels, volume padded at the far end), and the mass on cubelets that overlap the mask
  is divided by the total. The fair figure for a cubelet-level map such as the head's p.
* ``pointing_cubelet``: the pointing game at the same cubelet resolution — each cubelet's score is the mean of the
  (unclipped) heatmap over its valid voxels (for a nearest-upsampled cubelet map: the cubelet's own value), and the
  case scores 1 when the top cubelet (ties: the one nearest the centroid of the tied cubelets) overlaps the mask. A
  diagnostic for a map whose voxels within a cubelet are tied: ``pointing_game`` then depends on where the grid cuts
  a lesion smaller than a cubelet, this does not. NaN without ``patch_size``.
* ``auroc``: area under the ROC curve of the raw (unclipped) voxel scores against the mask over the valid region
  (:func:`sklearn.metrics.roc_auc_score`; ties count one half).
* ``dice_topk``: Dice between the mask and the top-:math:`k` fraction of valid voxels by heatmap value;
  :math:`k` = the mask fraction of the valid region by default (ties broken by a stable sort in C order).
* ``chance_energy``: mask voxels ÷ valid voxels, the ``energy_pg`` of a uniform heatmap.

Cases without a lesion (empty mask) have no localisation score: :func:`localisation_metrics` returns NaN for them
and the caller reports them separately.

Distractors (``DISTRACTOR_COLUMNS``, :func:`distractor_metrics`; cases whose ``distractor_mask`` has voxels in the
valid region — survival-irrelevant objects such as ct3's calcified granulomas): where a map should *not* be.

* ``energy_distractor``: clipped heatmap mass on distractor voxels ÷ total, over the valid region;
* ``energy_distractor_cubelet``: the same on the model's cubelets (mass on cubelets that overlap the distractor
  mask ÷ total) — for the head's p map the analogue of the validation diagnostic ``p_distractor``;
* ``chance_distractor``, ``chance_distractor_cubelet``: both for a uniform heatmap over the valid region, the level
  of a map that ignores the distractors. A map that avoids them is *below* chance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DISTRACTOR_COLUMNS",
    "LOCALISATION_COLUMNS",
    "distractor_metrics",
    "localisation_metrics",
    "cubelet_sum",
    "cubelets_to_image",
    "patch_size_of",
    "pointing_game",
]

LOCALISATION_COLUMNS = ("pointing_game", "energy_pg", "energy_pg_cubelet", "pointing_cubelet", "auroc", "dice_topk",
                        "chance_energy")
DISTRACTOR_COLUMNS = ("energy_distractor", "energy_distractor_cubelet", "chance_distractor",
                      "chance_distractor_cubelet")


def cubelet_sum(x: np.ndarray, patch_size: int) -> np.ndarray:
    """Sum a (D, H, W) array over non-overlapping ``patch_size``\\ :sup:`3` cubes (zero-padded at the far end)."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}.")
    pad = [(0, (-s) % patch_size) for s in x.shape]
    x = np.pad(x, pad)
    d, h, w = (s // patch_size for s in x.shape)
    return x.reshape(d, patch_size, h, patch_size, w, patch_size).sum(axis=(1, 3, 5))


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


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _pointing(h: np.ndarray, m: np.ndarray, valid: np.ndarray, tolerance: float) -> float:
    """The pointing game of a checked float64 heatmap ``h``, bool mask ``m`` and non-empty bool region ``valid``."""
    if np.ptp(h[valid]) == 0:  # a constant map points nowhere
        return 0.0
    hv = np.where(valid, h, -np.inf)
    peaks = np.argwhere(hv == hv.max())
    # ties (e.g. a whole cubelet of a nearest-upsampled map): the tied voxel nearest to their centroid
    idx = tuple(peaks[np.argmin(((peaks - peaks.mean(0)) ** 2).sum(1))])
    if tolerance == 0:
        return float(m[idx])
    from scipy.ndimage import distance_transform_edt

    return float(distance_transform_edt(~m)[idx] <= tolerance)


def pointing_game(heatmap, mask, *, lung_mask=None, tolerance: float = 0.0) -> float:
    """Only the ``pointing_game`` column of :func:`localisation_metrics` (same rules, same valid region): 1.0 / 0.0,
    NaN when the mask has no voxel in the valid region. Cheap enough for every validation case of every epoch."""
    h, m, valid = _checked(heatmap, mask, lung_mask, tolerance)
    return _pointing(h, m, valid, tolerance) if (m & valid).any() else float("nan")


def _checked(heatmap, mask, lung_mask, tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 heatmap, bool mask, bool valid region) after the input checks; an empty lung mask -> everything."""
    h = np.asarray(heatmap, dtype=np.float64)
    m = np.asarray(mask) > 0
    if h.ndim != 3 or h.shape != m.shape:
        raise ValueError(f"heatmap {h.shape} and mask {m.shape} must be the same (D, H, W) shape.")
    if not np.isfinite(h).all():
        raise ValueError("heatmap contains NaN or infinite values.")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}.")
    valid = np.ones_like(m) if lung_mask is None else np.asarray(lung_mask) > 0
    if valid.shape != m.shape:
        raise ValueError(f"lung mask {valid.shape} must match the mask {m.shape}.")
    if not valid.any():
        valid = np.ones_like(m)
    return h, m, valid


def localisation_metrics(
    heatmap,
    mask,
    *,
    lung_mask=None,
    patch_size: int | None = None,
    tolerance: float = 0.0,
    topk: float | None = None,
) -> dict[str, float]:
    """Localisation metrics of one heatmap (see the module docstring for each column).

    Args:
        heatmap: (D, H, W) scores, larger = more important.
        mask: (D, H, W) ground-truth lesion mask (non-zero = lesion).
        lung_mask: optional (D, H, W) valid region; an empty lung mask falls back to the whole volume.
        patch_size: the model's cubelet edge, for ``energy_pg_cubelet`` (NaN when None).
        tolerance: pointing-game tolerance in voxels.
        topk: fraction of valid voxels kept for ``dice_topk``; default the mask fraction.

    Returns:
        ``{column: value}`` for every name in ``LOCALISATION_COLUMNS`` (NaN for an empty mask), plus
        ``peak_to_mean`` (max ÷ mean of the clipped heatmap over the valid region; 1 for a flat map), defined for
        every case including those without a lesion.
    """
    if topk is not None and not 0 < topk <= 1:
        raise ValueError(f"topk must be in (0, 1], got {topk}.")
    h, m, valid = _checked(heatmap, mask, lung_mask, tolerance)
    hp = np.where(valid, np.clip(h, 0.0, None), 0.0)
    total = hp.sum()
    mean_valid = hp[valid].mean()
    out = {"peak_to_mean": _ratio(hp.max(), mean_valid)}
    mv = m & valid
    if not mv.any():
        out.update({c: float("nan") for c in LOCALISATION_COLUMNS})
        return out

    out["pointing_game"] = _pointing(h, m, valid, tolerance)
    out["energy_pg"] = _ratio(hp[mv].sum(), total)
    if patch_size is None:
        out["energy_pg_cubelet"] = out["pointing_cubelet"] = float("nan")
    else:
        mass = cubelet_sum(hp, patch_size)
        on_mask = cubelet_sum(mv.astype(np.float64), patch_size) > 0
        out["energy_pg_cubelet"] = _ratio(mass[on_mask].sum(), mass.sum())
        n_cub = cubelet_sum(valid.astype(np.float64), patch_size)
        has = n_cub > 0
        mean = cubelet_sum(np.where(valid, h, 0.0), patch_size) / np.where(has, n_cub, 1.0)
        out["pointing_cubelet"] = _pointing(mean, on_mask, has, 0.0)

    labels, scores = mv[valid], h[valid]
    if labels.all():
        out["auroc"] = float("nan")
    else:
        from sklearn.metrics import roc_auc_score

        out["auroc"] = float(roc_auc_score(labels, scores))

    n_valid = int(valid.sum())
    frac = labels.mean() if topk is None else topk
    n_top = max(1, int(round(frac * n_valid)))
    top = np.zeros(n_valid, dtype=bool)
    top[np.argsort(-scores, kind="stable")[:n_top]] = True
    out["dice_topk"] = float(2.0 * (top & labels).sum() / (top.sum() + labels.sum()))
    out["chance_energy"] = float(labels.mean())
    for k, v in out.items():
        if isinstance(v, float) and math.isinf(v):
            out[k] = float("nan")
    return out


def distractor_metrics(heatmap, distractor_mask, *, lung_mask=None, patch_size: int | None = None) -> dict[str, float]:
    """The heatmap's mass on survival-irrelevant distractors and a uniform map's (module docstring,
    ``DISTRACTOR_COLUMNS``); every column NaN when no distractor voxel lies in the valid region, the cubelet
    columns NaN without ``patch_size``."""
    h, d, valid = _checked(heatmap, distractor_mask, lung_mask, 0.0)
    dv = d & valid
    if not dv.any():
        return {c: float("nan") for c in DISTRACTOR_COLUMNS}
    hp = np.where(valid, np.clip(h, 0.0, None), 0.0)
    out = {"energy_distractor": _ratio(hp[dv].sum(), hp.sum()), "chance_distractor": float(dv.sum() / valid.sum())}
    if patch_size is None:
        out.update(energy_distractor_cubelet=float("nan"), chance_distractor_cubelet=float("nan"))
    else:
        on = cubelet_sum(dv.astype(np.float64), patch_size) > 0
        mass, uniform = cubelet_sum(hp, patch_size), cubelet_sum(valid.astype(np.float64), patch_size)
        out["energy_distractor_cubelet"] = _ratio(mass[on].sum(), mass.sum())
        out["chance_distractor_cubelet"] = _ratio(uniform[on].sum(), uniform.sum())
    return {k: float("nan") if isinstance(v, float) and math.isinf(v) else v for k, v in out.items()}
