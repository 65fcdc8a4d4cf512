"""Quality control for preprocessed CTs: a PNG montage with the lung-mask contours (the numbers go to the QC JSON
written by :func:`survival3d.data.preprocess.preprocess_case`).

Slices are shown in radiological convention: patient right on the viewer's left, anterior up in axial views,
superior up in coronal views. Right lung contour in red, left lung in blue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from survival3d.data.readers import affine_spacing
from survival3d.io import atomic_path

__all__ = ["save_qc_montage", "montage_slices"]

_COLOURS = {1: "#e41a1c", 2: "#377eb8"}


def montage_slices(mask: np.ndarray, n_axial: int = 6) -> list[int]:
    """Axial slice indices spread over the mask's superior-inferior extent (over the volume when empty)."""
    ks = np.flatnonzero(mask.reshape(-1, mask.shape[2]).any(axis=0)) if mask.any() else np.arange(mask.shape[2])
    lo, hi = int(ks.min()), int(ks.max())
    return sorted({int(round(v)) for v in np.linspace(lo, hi, n_axial + 2)[1:-1]})


def save_qc_montage(
    image: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    *,
    title: str = "",
    window: tuple[float, float] = (-1024.0, 150.0),
    n_axial: int = 6,
) -> Path:
    """Save a montage of ``n_axial`` axial slices + one coronal + one sagittal with the lung contours.

    Args:
        image: HU volume on a RAS-oriented grid ``(I, J, K)`` (i → right, j → anterior, k → superior).
        mask: lung labels on the same grid (1 right, 2 left).
        affine: the grid's affine (for the aspect ratio).
        path: PNG file, written atomically.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sx, sy, sz = affine_spacing(affine)
    ks = montage_slices(mask, n_axial)
    centre = np.argwhere(mask > 0).mean(axis=0).round().astype(int) if mask.any() else np.asarray(mask.shape) // 2
    views = [(f"axial k={k}", image[::-1, :, k].T, mask[::-1, :, k].T, sy / sx) for k in ks]
    j, i = int(centre[1]), int(centre[0])
    views.append((f"coronal j={j}", image[::-1, j, :].T, mask[::-1, j, :].T, sz / sx))
    views.append((f"sagittal i={i}", image[i, ::-1, :].T, mask[i, ::-1, :].T, sz / sy))
    ncol = 4
    nrow = int(np.ceil(len(views) / ncol))
    fig = Figure(figsize=(3.0 * ncol, 3.0 * nrow + 0.4))
    for n, (name, im, m, aspect) in enumerate(views):
        ax = fig.add_subplot(nrow, ncol, n + 1)
        ax.imshow(im, cmap="gray", vmin=window[0], vmax=window[1], origin="lower", aspect=aspect,
                  interpolation="nearest")  # fmt: skip
        for label, colour in _COLOURS.items():
            if (m == label).any():
                ax.contour((m == label).astype(float), levels=[0.5], colors=colour, linewidths=0.8, origin="lower")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    return path
