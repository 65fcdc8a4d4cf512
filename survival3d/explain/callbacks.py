"""Training callbacks built on the explainers: the run's closing heatmap.

:class:`HeatmapCallback` writes, for the validation case with the largest lesion, ``<id>_p.nii.gz`` (the softmin
head's p upsampled from cubelets to voxels, on the affine of the volume the model saw), ``<id>_image.nii.gz`` (that
volume, windowed to [0, 1]) and ``<id>.png`` (three orthogonal slices through the lesion centre and through p's
peak: image, p overlay and the true lesion outline), plus ``heatmap.json`` with the share of p that falls on
cubelets touching the lesion. The map is the ``head_grid`` explainer's (one pass on the model's own grid).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from survival3d.data.datasets import collate_cases
from survival3d.engine.inference import forward, to_device
from survival3d.explain.base import cubelets_to_image, patch_size_of
from survival3d.io import atomic_path, write_json, write_nifti

__all__ = ["HeatmapCallback", "pick_lesion_case"]

log = logging.getLogger(__name__)


def pick_lesion_case(dataset) -> int | None:
    """Index of the case to show: the uncensored case with the largest lesion (else any case with a lesion)."""
    best, best_key = None, None
    for i in range(len(dataset)):
        item = dataset[i]
        if "mask" not in item:
            return None
        size = float(torch.as_tensor(item["mask"]).sum())
        if size <= 0:
            continue
        key = (item["event"], size)
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best


def _png(image: np.ndarray, pmap: np.ndarray, mask: np.ndarray | None, centres: dict, title: str, path: Path) -> None:
    """One row of three orthogonal slices per entry of ``centres`` (e.g. through the lesion and through p's peak)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(centres)
    fig, axes = plt.subplots(rows, 3, figsize=(12, 4.2 * rows), squeeze=False)
    vmax = float(pmap.max()) or 1.0
    shown = np.ma.masked_where(pmap < 1e-3 * vmax, pmap)  # no colour where p is ~0: the scan stays readable
    for r, (label, centre) in enumerate(centres.items()):
        for axis in range(3):
            ax = axes[r, axis]
            sl = [slice(None)] * 3
            sl[axis] = int(centre[axis])
            sl = tuple(sl)
            ax.imshow(image[sl].T, cmap="gray", origin="lower", vmin=0, vmax=1)
            im = ax.imshow(shown[sl].T, cmap="inferno", origin="lower", alpha=0.55, vmin=0, vmax=vmax)
            if mask is not None and mask[sl].any():
                ax.contour(mask[sl].T.astype(float), levels=[0.5], colors="cyan", linewidths=1.0)
            ax.set_title(f"{label}: axis {axis} = {int(centre[axis])}", fontsize=9)
            ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8, label="softmin p (per cubelet)")
    fig.suptitle(title)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


class HeatmapCallback:
    """Write the softmin-p heatmap of a validation case with a lesion when training ends (see the module docstring).

    Args:
        folder: sub-folder of the run directory for the files.
    """

    def __init__(self, folder: str = "heatmap"):
        self.folder = folder

    def on_final_model(self, engine) -> dict[str, Any] | None:
        """Engine hook, called by the survival task with its final weights loaded: write the heatmap of the task's
        validation set; returns ``{"heatmap": png, "heatmap_nifti": nifti, "p_on_lesion": share}`` for the run's
        final metrics (``None`` when there is nothing to show)."""
        task = engine.task
        info = self.write(engine.run_dir, task.model, task.val_ds, engine.device, getattr(task, "amp", False),
                          time_grid=getattr(task, "time_grid", None))
        if info is None:
            return None
        return {"heatmap": info["png"], "heatmap_nifti": info["nifti"], "p_on_lesion": info["p_on_lesion"]}

    @torch.no_grad()
    def write(self, run_dir: str | Path, model: torch.nn.Module, val_dataset, device: torch.device,
              amp: bool = False, time_grid=None) -> dict[str, Any] | None:
        """Write the files under ``run_dir/<folder>``; returns ``heatmap.json``'s content (``png``, ``nifti``,
        ``image`` paths, ``p_on_lesion``, ``lesion_cubelet_frac``, ``id``, ``pred_time``, ``time``, ``event``), or
        ``None`` when no validation case has a lesion mask or the model's head gives no p map."""
        index = pick_lesion_case(val_dataset)
        if index is None:
            log.info("heatmap skipped: no validation case with a lesion mask")
            return None
        batch = to_device(collate_cases([val_dataset[index]]), device)
        was_training = model.training
        model.eval()
        try:
            out = forward(model, batch, amp=amp)  # the engine's forward: the precision the run validated with
        finally:
            model.train(was_training)
        if out.p is None:
            log.info("heatmap skipped: the model's head gives no localisation map")
            return None
        shape = tuple(batch["image"].shape[-3:])
        grid = tuple(out.p.shape[-3:])
        ps = patch_size_of(model, shape, grid)
        if ps is None:
            raise ValueError(f"cannot tell the cubelet size of a {grid} grid over a {shape} image.")
        pvox = cubelets_to_image(out.p, shape, ps, "nearest")[0, 0].cpu().numpy()
        image = batch["image"][0, 0].float().cpu().numpy()
        mask = batch["mask"][0, 0].cpu().numpy() > 0.5
        pad = (0, grid[2] * ps - shape[2], 0, grid[1] * ps - shape[1], 0, grid[0] * ps - shape[0])
        touching = F.max_pool3d(F.pad(batch["mask"].float(), pad), ps)  # cubelets that hold any lesion voxel
        p_on_lesion = float((out.p.float() * (touching > 0)).sum())
        centres = {"lesion centre": np.round(np.argwhere(mask).mean(axis=0)).astype(int),
                   "p peak": np.array(np.unravel_index(int(np.argmax(pvox)), pvox.shape))}
        affine = batch["affine"][0].cpu().numpy()
        out_dir = Path(run_dir) / self.folder
        cid = str(batch["id"][0])
        paths = {"nifti": out_dir / f"{cid}_p.nii.gz", "image": out_dir / f"{cid}_image.nii.gz",
                 "png": out_dir / f"{cid}.png"}
        write_nifti(paths["nifti"], pvox, affine, dtype=np.float32)
        write_nifti(paths["image"], image, affine, dtype=np.float32)
        pred, t, e = float(out.pred[0]), float(batch["time"][0]), int(batch["event"][0])
        if time_grid is not None:  # the model predicts in grid units (survival3d.time_grid)
            pred = float(time_grid.from_grid(pred))
        _png(image, pvox, mask, centres, f"{cid}: time {t:.1f} ({'event' if e else 'censored'}), predicted "
             f"{pred:.1f}, p on lesion {p_on_lesion:.2f} (cyan: true lesion)", paths["png"])
        info = {"id": cid, "p_on_lesion": p_on_lesion, "lesion_cubelet_frac": float((touching > 0).float().mean()),
                "pred_time": pred, "time": t, "event": e, **{k: str(v) for k, v in paths.items()}}
        write_json(out_dir / "heatmap.json", info)
        return info
