"""The run's closing picture: where the softmin head put its weight p for a validation case with a lesion.

Writes, for one case, ``<id>_p.nii.gz`` (p upsampled from cubelets to voxels, on the affine of the volume the model
saw), ``<id>_image.nii.gz`` (that volume, windowed to [0, 1]) and ``<id>.png`` (three orthogonal slices through the
lesion centre: image, p overlay and the true lesion outline), plus ``heatmap.json`` with the share of p that falls
on cubelets touching the lesion.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from survival3d.data.datasets import collate_cases
from survival3d.engine.inference import forward, to_device

__all__ = ["pick_lesion_case", "write_heatmap", "upsample_cubelets"]

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


def upsample_cubelets(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """(B,1,d,h,w) cubelet map → (B,1,D,H,W) voxels: nearest-neighbour blow-up, cropped to the image (the model pads
    the volume up to a multiple of the cubelet size)."""
    d, h, w = x.shape[-3:]
    factor = [int(np.ceil(s / c)) for s, c in zip(shape, (d, h, w))]
    up = F.interpolate(x.float(), scale_factor=factor, mode="nearest")
    return up[..., : shape[0], : shape[1], : shape[2]]


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.asarray(affine, dtype=np.float64)), str(path))


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
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def write_heatmap(model: torch.nn.Module, dataset, out_dir: str | Path, device: torch.device, *, amp: bool = False) -> dict[str, Any] | None:
    """Write the heatmap files for a validation case with a lesion; ``None`` when there is none or no p map."""
    index = pick_lesion_case(dataset)
    if index is None:
        log.info("heatmap skipped: no validation case with a lesion mask")
        return None
    batch = to_device(collate_cases([dataset[index]]), device)
    was_training = model.training
    model.eval()
    out = forward(model, batch, amp=amp)
    model.train(was_training)
    if out.p is None:
        log.info("heatmap skipped: the model's head gives no localisation map")
        return None
    shape = tuple(batch["image"].shape[-3:])
    pvox = upsample_cubelets(out.p, shape)[0, 0].cpu().numpy()
    image = batch["image"][0, 0].float().cpu().numpy()
    mask = batch["mask"][0, 0].cpu().numpy() > 0.5
    grid = out.p.shape[-3:]
    ps = [int(np.ceil(s / g)) for s, g in zip(shape, grid)]
    pad = (0, grid[2] * ps[2] - shape[2], 0, grid[1] * ps[1] - shape[1], 0, grid[0] * ps[0] - shape[0])
    touching = F.max_pool3d(F.pad(batch["mask"].float(), pad), ps)  # cubelets that hold any lesion voxel
    p_on_lesion = float((out.p.float() * (touching > 0)).sum())
    centres = {"lesion centre": np.round(np.argwhere(mask).mean(axis=0)).astype(int),
               "p peak": np.array(np.unravel_index(int(np.argmax(pvox)), pvox.shape))}
    affine = batch["affine"][0].cpu().numpy()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cid = str(batch["id"][0])
    paths = {"nifti": out_dir / f"{cid}_p.nii.gz", "image": out_dir / f"{cid}_image.nii.gz", "png": out_dir / f"{cid}.png"}
    _save_nifti(pvox, affine, paths["nifti"])
    _save_nifti(image, affine, paths["image"])
    pred, t, e = float(out.pred[0]), float(batch["time"][0]), int(batch["event"][0])
    _png(image, pvox, mask, centres, f"{cid}: time {t:.1f} ({'event' if e else 'censored'}), predicted {pred:.1f}, "
         f"p on lesion {p_on_lesion:.2f} (cyan: true lesion)", paths["png"])
    info = {"id": cid, "p_on_lesion": p_on_lesion, "lesion_cubelet_frac": float((touching > 0).float().mean()),
            "pred_time": pred, "time": t, "event": e, **{k: str(v) for k, v in paths.items()}}
    (out_dir / "heatmap.json").write_text(json.dumps(info, indent=2))
    return info
