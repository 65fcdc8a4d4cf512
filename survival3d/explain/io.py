"""Heatmaps as files: NIfTI on the *source* image grid (so they open over the CT in 3D Slicer / ITK-SNAP), PNG
overlays through the lesion (or the heatmap peak) in three planes, and a 3D view (lung surface + heatmap
isosurface by marching cubes, rendered with matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from survival3d.errors import InputError
from survival3d.io import atomic_path, write_nifti

__all__ = [
    "source_geometry",
    "to_source_grid",
    "save_nifti",
    "plane_axes",
    "focus_point",
    "peak_centre",
    "lesion_peak",
    "plot_overlays",
    "plot_3d",
]


def _is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


def source_geometry(path: str | Path) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(4x4 affine, (D, H, W) shape) of a source image file without loading its voxels when it is NIfTI
    (nibabel header); other formats (DICOM folder, .mha, .nrrd) go through MONAI's LoadImage.

    Raises:
        InputError: the file cannot be read.
    """
    path = Path(path)
    try:
        if _is_nifti(path):
            import nibabel as nib

            img = nib.load(str(path))
            return np.asarray(img.affine, dtype=np.float64), tuple(int(s) for s in img.shape[:3])
        from monai.transforms import LoadImage

        img = LoadImage(image_only=True)(str(path))
        return np.asarray(img.affine, dtype=np.float64), tuple(int(s) for s in img.shape[:3])
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(f"cannot read the image geometry ({e})", path=path, field="image") from e


def to_source_grid(
    volume, src_shape, *, src_affine: np.ndarray | None = None, model_affine: np.ndarray | None = None,
    mode: str = "bilinear",
) -> np.ndarray:
    """Bring a (C, D, H, W) model-space volume onto the source image grid.

    * ``model_affine`` known (the data path's MetaTensor affine): resampled in world coordinates with MONAI's
      :class:`~monai.transforms.SpatialResample` to ``src_affine`` / ``src_shape`` (handles crops, reorientation
      and spacing changes).
    * unknown: the model grid is taken to be the whole source volume resized (MONAI ``Resize`` semantics), and the
      volume is resized back with ``F.interpolate`` (``align_corners=False``).

    Args:
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.
    """
    v = torch.as_tensor(np.asarray(volume), dtype=torch.float32)
    if v.ndim != 4:
        raise ValueError(f"volume must be (C, D, H, W), got {tuple(v.shape)}.")
    src_shape = tuple(int(s) for s in src_shape)
    same_grid = tuple(v.shape[1:]) == src_shape and (
        model_affine is None or src_affine is None or np.allclose(model_affine, src_affine, atol=1e-4)
    )
    if same_grid:
        return v.numpy()
    if model_affine is not None and src_affine is not None:
        from monai.data import MetaTensor
        from monai.transforms import SpatialResample

        img = MetaTensor(v, affine=torch.as_tensor(model_affine, dtype=torch.float64))
        out = SpatialResample(mode=mode, padding_mode="zeros", dtype=torch.float32)(
            img, dst_affine=torch.as_tensor(src_affine, dtype=torch.float64), spatial_size=src_shape
        )
        return np.asarray(out.detach().cpu().numpy() if torch.is_tensor(out) else out, dtype=np.float32)
    kw = {"mode": "trilinear", "align_corners": False} if mode == "bilinear" else {"mode": "nearest"}
    return F.interpolate(v[None], size=src_shape, **kw)[0].numpy()


def save_nifti(volume, affine: np.ndarray, path: str | Path) -> Path:
    """Write a (D, H, W) or (C, D, H, W) float volume as NIfTI with ``affine`` (C > 1 → 4D, components last),
    atomically (:func:`survival3d.io.write_nifti`; units mm)."""
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim == 4:
        v = v[0] if v.shape[0] == 1 else np.moveaxis(v, 0, -1)
    return write_nifti(path, v, affine, xyzt_units="mm")


def plane_axes(affine: np.ndarray | None) -> dict[str, int]:
    """Which array axis to slice for the axial / coronal / sagittal view: from the affine's orientation codes
    (S/I → axial, A/P → coronal, R/L → sagittal); without an affine axis 0 = axial (D), 1 = coronal, 2 = sagittal."""
    if affine is None:
        return {"axial": 0, "coronal": 1, "sagittal": 2}
    import nibabel as nib

    codes = nib.orientations.aff2axcodes(np.asarray(affine))
    lookup = {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal", "R": "sagittal", "L": "sagittal"}
    planes = {lookup[c]: i for i, c in enumerate(codes) if c in lookup}
    if len(planes) != 3:
        return {"axial": 0, "coronal": 1, "sagittal": 2}
    return planes


def focus_point(heatmap: np.ndarray, mask: np.ndarray | None = None) -> tuple[int, int, int]:
    """The lesion's centre of mass when there is a lesion, else the centre of the heatmap's peak."""
    if mask is not None and np.asarray(mask).any():
        c = np.argwhere(np.asarray(mask) > 0).mean(0)
        return tuple(int(round(x)) for x in c)
    return peak_centre(heatmap)


def peak_centre(heatmap: np.ndarray) -> tuple[int, int, int]:
    """The centre of the heatmap's peak: the centroid of the connected plateau of maximal values that holds the
    first maximum (for a map that is constant per cubelet, the peak cubelet's centre rather than its first voxel),
    rounded to a voxel of the plateau."""
    from scipy import ndimage as ndi

    h = np.asarray(heatmap, dtype=np.float64)
    first = np.unravel_index(int(np.argmax(h)), h.shape)
    top = h >= h[first] - 1e-6 * max(abs(float(h[first])), 1e-12)
    labels, _ = ndi.label(top)
    pts = np.argwhere(labels == labels[first])
    c = np.floor(pts.mean(0) + 0.5).astype(int)  # an even-sized cubelet: the upper of its two middle voxels
    if labels[tuple(c)] != labels[first]:  # a non-convex plateau: its voxel nearest the centroid
        c = pts[int(np.argmin(((pts - pts.mean(0)) ** 2).sum(1)))]
    return tuple(int(x) for x in c)


def lesion_peak(heatmap: np.ndarray, mask: np.ndarray) -> tuple[int, int, int]:
    """Where the heatmap and the lesion overlap most: the lesion voxel with the largest heat (the lesion's centre
    of mass when the heatmap is zero on the whole lesion)."""
    h = np.asarray(heatmap, dtype=np.float64)
    m = np.asarray(mask) > 0
    if not m.any():
        raise ValueError("lesion_peak needs a non-empty mask.")
    if not (h[m] > 0).any():
        return focus_point(h, m)
    inside = np.where(m, h, -np.inf)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(inside)), h.shape))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    finally:
        _plt().close(fig)
    return path


def plot_overlays(
    image: np.ndarray,
    heatmap: np.ndarray,
    path: str | Path,
    *,
    mask: np.ndarray | None = None,
    lung_mask: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    title: str = "",
    rgb: bool = False,
    distractor_mask: np.ndarray | None = None,
    scores: dict | None = None,
) -> Path:
    """Axial, coronal and sagittal slices through the centre of the heatmap's peak (:func:`peak_centre`) and, when
    the case has a lesion, a second row through the heatmap's strongest point on the lesion (:func:`lesion_peak`):
    the CT in grey, the heatmap on top (jet, as a fraction of its maximum, with a colour bar; transparent below 5%
    of it; or the RGB view), the GT lesion contour in lime, the lung contour in cyan and, when given, the
    survival-irrelevant distractors (``distractor_mask``, e.g. ct3's calcified granulomas) in yellow. The title gives
    the share of the heatmap's energy inside the lesion and a uniform map's share (``energy_pg`` and
    ``chance_energy`` of :func:`~survival3d.metrics.localisation.localisation_metrics`: inside the lung mask when
    one is given; ``scores``, when the caller has already computed them for this heatmap, mask and lung mask) and
    whether the peak is on the lesion."""
    from matplotlib.lines import Line2D

    plt = _plt()
    h = np.asarray(heatmap, dtype=np.float32)
    hm = h if not rgb else h.mean(0)
    lesion = mask is not None and bool(np.asarray(mask).any())
    axes = plane_axes(affine)
    peak = peak_centre(hm)
    rows = {"through the peak": peak}
    if lesion:
        rows["through the peak on the lesion"] = lesion_peak(hm, mask)
    fig, ax = plt.subplots(len(rows), 3, figsize=(12, 4.0 * len(rows) + 0.6), squeeze=False)
    vmax = float(hm.max()) if hm.max() > 0 else 1.0
    im = None
    for r, (row_label, centre) in enumerate(rows.items()):
        for a, plane in zip(ax[r], ("axial", "coronal", "sagittal")):
            axis = axes[plane]
            idx = [slice(None)] * 3
            idx[axis] = centre[axis]
            sl = tuple(idx)
            ct = a.imshow(np.asarray(image)[sl].T, cmap="gray", origin="lower",
                          vmin=float(np.min(image)), vmax=float(np.max(image)))
            if rgb:
                a.imshow(np.moveaxis(h[(slice(None), *sl)], 0, -1).transpose(1, 0, 2), origin="lower", alpha=0.55)
            else:
                shown = np.ma.masked_less_equal(h[sl] / vmax, 0.05)  # faint values stay transparent
                im = a.imshow(shown.T, cmap="jet", origin="lower", alpha=0.5, vmin=0, vmax=1)
            if lung_mask is not None and np.asarray(lung_mask)[sl].any():
                a.contour(np.asarray(lung_mask)[sl].T.astype(float), levels=[0.5], colors="cyan", linewidths=0.7)
            if lesion and np.asarray(mask)[sl].any():
                a.contour(np.asarray(mask)[sl].T.astype(float), levels=[0.5], colors="lime", linewidths=1.2)
            if distractor_mask is not None and np.asarray(distractor_mask)[sl].any():
                a.contour(np.asarray(distractor_mask)[sl].T.astype(float), levels=[0.5], colors="yellow",
                          linewidths=1.0)
            a.set_title(f"{plane} {row_label}\n(axis {axis} = {centre[axis]})", fontsize=9)
            a.axis("off")
    if im is not None:
        fig.colorbar(im, ax=ax, shrink=0.8, label="heatmap / its maximum (relative)")
    else:  # an RGB view has no scale of its own: the scan's
        fig.colorbar(ct, ax=ax, shrink=0.8, label="image intensity (model input)")
    handles = [Line2D([], [], color="lime", lw=1.2, label="GT lesion")] if lesion else []
    if lung_mask is not None and np.asarray(lung_mask).any():
        handles.append(Line2D([], [], color="cyan", lw=0.7, label="lung"))
    if distractor_mask is not None and np.asarray(distractor_mask).any():
        handles.append(Line2D([], [], color="yellow", lw=1.0, label="distractor"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    metric = ""
    if lesion and not rgb and hm.sum() > 0:
        m = np.asarray(mask) > 0
        if scores is None:
            from survival3d.metrics.localisation import localisation_metrics

            scores = localisation_metrics(hm, m, lung_mask=lung_mask)  # inside the lung, as localisation.csv
        metric = (f"energy in lesion {scores['energy_pg']:.2f} (uniform map: {scores['chance_energy']:.2f}), "
                  f"peak {'on' if m[peak] else 'off'} the lesion")
    fig.suptitle(" · ".join(t for t in (title, metric) if t) or "heatmap overlay")
    return _save(fig, Path(path))


def _surface(ax, vol: np.ndarray, level: float, colour, alpha: float, step: int) -> bool:
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection
    from skimage.measure import marching_cubes

    vol = np.pad(np.asarray(vol, dtype=np.float32), 1)  # close surfaces touching the border
    if not (vol.min() < level < vol.max()):
        return False
    try:
        verts, faces, _, _ = marching_cubes(vol, level=level, step_size=step)
    except RuntimeError:  # a structure smaller than the step (a nodule of 1-2 voxels) vanishes on the coarse grid
        verts, faces, _, _ = marching_cubes(vol, level=level, step_size=1)
    ax.add_collection3d(Poly3DCollection(verts[faces] - 1, facecolor=colour, edgecolor="none", alpha=alpha))
    return True


def plot_3d(
    heatmap: np.ndarray,
    path: str | Path,
    *,
    lung_mask: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    iso: float = 0.5,
    title: str = "",
) -> Path:
    """3D view: the lung surface (grey, translucent; the volume's bounding box when there is no lung mask), the GT
    lesion (green) and the heatmap isosurface at ``iso`` × its maximum (red), by scikit-image marching cubes."""
    plt = _plt()
    h = np.asarray(heatmap, dtype=np.float32)
    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(111, projection="3d")
    step = max(1, min(h.shape) // 32)
    if lung_mask is not None and np.asarray(lung_mask).any():
        _surface(ax, lung_mask, 0.5, "lightgrey", 0.12, step + 1)
    else:
        d, hh, w = h.shape
        for a0 in (0, d):
            for b0 in (0, hh):
                ax.plot([a0, a0], [b0, b0], [0, w], color="grey", lw=0.6)
        for a0 in (0, d):
            for c0 in (0, w):
                ax.plot([a0, a0], [0, hh], [c0, c0], color="grey", lw=0.6)
        for b0 in (0, hh):
            for c0 in (0, w):
                ax.plot([0, d], [b0, b0], [c0, c0], color="grey", lw=0.6)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor="lightgrey", alpha=0.5, label="lung" if lung_mask is not None
                     and np.asarray(lung_mask).any() else "volume (box)")]
    if mask is not None and np.asarray(mask).any() and _surface(ax, mask, 0.5, "limegreen", 0.35, step):
        handles.append(Patch(facecolor="limegreen", alpha=0.6, label="GT lesion"))
    if h.max() > 0 and _surface(ax, h / h.max(), iso, "red", 0.45, step):
        handles.append(Patch(facecolor="red", alpha=0.6, label=f"heatmap ≥ {iso:g} × max"))
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    ax.set_xlim(0, h.shape[0])
    ax.set_ylim(0, h.shape[1])
    ax.set_zlim(0, h.shape[2])
    ax.set_xlabel("axis 0 (voxels)")
    ax.set_ylabel("axis 1 (voxels)")
    ax.set_zlabel("axis 2 (voxels)")
    ax.set_title((title + "\n" if title else "") + f"3D: heatmap ≥ {iso:g}·max (red), lesion (green)", fontsize=10)
    return _save(fig, Path(path))
