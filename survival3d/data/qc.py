"""Quality control for preprocessed CTs: a PNG montage with the lung-mask contours (the numbers go to the QC JSON
written by :func:`survival3d.data.preprocess.preprocess_case`).

Slices are shown in radiological convention: patient right on the viewer's left, anterior up in axial views,
superior up in coronal views. Right lung contour in red, left lung in blue (the legend says so).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from survival3d.data.readers import affine_spacing
from survival3d.io import atomic_path

__all__ = ["save_qc_montage", "montage_slices", "report_lines"]

_COLOURS = {1: "#e41a1c", 2: "#377eb8"}
_NAMES = {1: "right lung (1)", 2: "left lung (2)"}


def montage_slices(mask: np.ndarray, n_axial: int = 6) -> list[tuple[int, str]]:
    """``(k, why)`` axial slices showing the mask's boundaries: its top and bottom slice, the slice of largest
    extent, the rest spread evenly in between (over the volume when the mask is empty)."""
    area = (mask > 0).reshape(-1, mask.shape[2]).sum(axis=0)
    if not area.any():
        return [(round(v), "") for v in np.linspace(0, mask.shape[2] - 1, n_axial).tolist()]
    ks = np.flatnonzero(area)
    chosen = {int(ks[-1]): "top", int(ks[0]): "bottom", int(np.argmax(area)): "largest"}
    for v in np.linspace(ks[0], ks[-1], max(n_axial, 2)).tolist():
        if len(chosen) >= n_axial:
            break
        chosen.setdefault(round(v), "")
    return sorted(chosen.items(), reverse=True)  # top of the body first


def report_lines(report: dict[str, Any] | None, width: int = 110) -> list[str]:
    """The classical masker's report as short text lines: confidence, flags, rejected components."""
    if not report:
        return []
    lines = [f"mask confidence {report.get('confidence', float('nan')):.2f}"
             + (f"; flags: {', '.join(report['flags'])}" if report.get("flags") else "")]  # fmt: skip
    rej = [f"{r['volume_ml']:.0f} mL at z={r['centroid_mm'][2]:.0f} mm: {r['reason']}"
           for r in report.get("rejected", []) if r.get("volume_ml", 0) >= 5]  # fmt: skip
    if rej:
        lines.append("rejected: " + "; ".join(rej[:4]) + (f" (+{len(rej) - 4} more)" if len(rej) > 4 else ""))
    return [w for line in lines for w in textwrap.wrap(line, width)]


def save_qc_montage(
    image: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    *,
    title: str = "",
    window: tuple[float, float] = (-1024.0, 150.0),
    n_axial: int = 6,
    report: dict[str, Any] | None = None,
) -> Path:
    """Save a montage of ``n_axial`` axial slices (the mask's top, bottom, largest extent, others between) + one
    coronal + one sagittal with the lung contours, a colour legend and the masker's report (when given).

    Args:
        image: HU volume on a RAS-oriented grid ``(I, J, K)`` (i → right, j → anterior, k → superior).
        mask: lung labels on the same grid (1 right, 2 left).
        affine: the grid's affine (for the aspect ratio and slice heights).
        path: PNG file, written atomically.
        report: the classical masker's report (confidence, flags, rejected components).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sx, sy, sz = affine_spacing(affine)
    z0 = float(np.asarray(affine)[2, 3])
    centre = np.argwhere(mask > 0).mean(axis=0).round().astype(int) if mask.any() else np.asarray(mask.shape) // 2
    views = []
    for k, why in montage_slices(mask, n_axial):
        name = f"axial z={z0 + k * sz:.0f} mm" + (f" ({why})" if why else "")
        views.append((name, image[::-1, :, k].T, mask[::-1, :, k].T, sy / sx))
    j = int(centre[1])
    # sagittal through the centre of the right lung (else of the mask): the mediastinum shows little
    i = int(np.argwhere(mask == 1).mean(axis=0)[0].round()) if (mask == 1).any() else int(centre[0])
    views.append(("coronal (mask centre)", image[::-1, j, :].T, mask[::-1, j, :].T, sz / sx))
    views.append(("sagittal (right lung)" if (mask == 1).any() else "sagittal", image[i, ::-1, :].T,
                  mask[i, ::-1, :].T, sz / sy))  # fmt: skip
    ncol = 4
    nrow = int(np.ceil(len(views) / ncol))
    text = ([title] if title else []) + report_lines(report)
    head = 0.25 * len(text) + 0.5
    fig = Figure(figsize=(3.2 * ncol, 3.2 * nrow + head), layout="constrained")
    for n, (name, im, m, aspect) in enumerate(views):
        ax = fig.add_subplot(nrow, ncol, n + 1)
        ax.imshow(im, cmap="gray", vmin=window[0], vmax=window[1], origin="lower", aspect=aspect,
                  interpolation="nearest")  # fmt: skip
        for label, colour in _COLOURS.items():
            if (m == label).any():
                ax.contour((m == label).astype(float), levels=[0.5], colors=colour, linewidths=0.9, origin="lower")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    handles = [Line2D([], [], color=c, lw=2, label=_NAMES[lab]) for lab, c in _COLOURS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False,
               title="patient right is on the viewer's left", title_fontsize=7)  # fmt: skip
    if text:
        fig.suptitle("\n".join(text), fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    return path
