"""Quick-look figures for a manifest: a montage of central slices with mask contours, and a histogram of the
observed times split by lesion presence. Used by ``run.py dummy --preview``; works for any manifest."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

import numpy as np

from survival3d.data.manifest import read_manifest

__all__ = ["save_preview"]

logger = logging.getLogger(__name__)

_CONTOURS = (("mask", "red", "lesion"), ("lung_mask", "cyan", "lung"), ("distractor_mask", "yellow", "distractor"))


def _load(path: Optional[str]) -> Optional[np.ndarray]:
    if path is None:
        return None
    import nibabel as nib

    return np.asanyarray(nib.load(path).dataobj)


def _has_lesion(df) -> np.ndarray:
    if "n_lesions" in df.columns:
        return df["n_lesions"].to_numpy() > 0
    if "mask" in df.columns:
        return np.array([m is not None and bool(_load(m).any()) for m in df["mask"]])
    return np.zeros(len(df), dtype=bool)


def save_preview(
    manifest: Union[str, Path],
    out_dir: Optional[Union[str, Path]] = None,
    *,
    n_cases: int = 8,
    window: tuple[float, float] = (-1024.0, 400.0),
) -> list[Path]:
    """Write ``preview.png`` and ``times_hist.png`` next to the manifest (or into ``out_dir``).

    The montage shows half cases with and half without a lesion, each as the axial slice through its largest
    lesion section (else a distractor, else the centre) with contours: lesion red, lung cyan, distractor yellow.
    The histogram shows observed times with/without a lesion, deaths filled and censored hatched.
    Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = read_manifest(manifest)
    out_dir = Path(manifest).parent if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lesion = _has_lesion(df)
    half = n_cases // 2
    picks = list(np.flatnonzero(lesion)[:half]) + list(np.flatnonzero(~lesion)[: n_cases - half])
    picks += [i for i in range(len(df)) if i not in picks][: n_cases - len(picks)]
    cols = min(4, max(1, len(picks)))
    rows = -(-len(picks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks):
        row = df.iloc[i]
        image = _load(row["image"])
        masks = {key: _load(row.get(key)) if key in df.columns else None for key, _, _ in _CONTOURS}
        z = image.shape[2] // 2
        for key in ("mask", "distractor_mask"):  # through the largest lesion section, else a distractor
            if masks[key] is not None and masks[key].any():
                z = int(np.argmax(masks[key].sum(axis=(0, 1))))
                break
        im = ax.imshow(image[:, :, z].T, cmap="gray", vmin=window[0], vmax=window[1], origin="lower")
        for key, colour, _ in _CONTOURS:
            m = masks[key]
            if m is not None and m[:, :, z].any():
                ax.contour(m[:, :, z].T, levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title(
            f"{row['id']} (z={z})\nt={row['time']:.1f} {'death' if row['event'] else 'censored'}", fontsize=8
        )
    handles = [
        plt.Line2D([], [], color=c, label=name)
        for key, c, name in _CONTOURS
        if key in df.columns and df[key].notna().any()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 0.9, 1))
    if picks:
        fig.colorbar(im, cax=fig.add_axes((0.92, 0.15, 0.015, 0.7)), label="CT intensity (HU, display window)")
    montage = out_dir / "preview.png"
    fig.savefig(montage, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, float(df["time"].max()) * 1.02 + 1e-9, 31)
    event = df["event"].to_numpy() == 1
    time = df["time"].to_numpy()
    for has, colour, name in ((True, "tab:red", "lesion"), (False, "tab:blue", "no lesion")):
        sel = lesion == has
        n_death = int((sel & event).sum())
        ax.hist(time[sel & event], bins=bins, color=colour, alpha=0.5, label=f"{name}: death (n={n_death})")
        ax.hist(
            time[sel & ~event],
            bins=bins,
            histtype="step",
            hatch="//",
            color=colour,
            label=f"{name}: censored (n={int((sel & ~event).sum())})",
        )
    ax.set_xlabel("observed time")
    ax.set_ylabel("cases")
    ax.legend(fontsize=8)
    ax.set_title(f"{Path(manifest).parent.name}: observed times by lesion presence")
    fig.tight_layout()
    hist = out_dir / "times_hist.png"
    fig.savefig(hist, dpi=110)
    plt.close(fig)
    logger.info("wrote %s and %s", montage, hist)
    return [montage, hist]
