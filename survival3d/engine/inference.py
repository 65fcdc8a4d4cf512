"""Forward passes over a loader: the model call every part of the engine shares, and prediction tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from survival3d.metrics.localisation import cubelets_to_image, pointing_game
from survival3d.runtime import autocast  # re-exported: the one bf16 autocast of the package

__all__ = ["model_inputs", "forward", "autocast", "predict_arrays", "predictions_frame", "to_device", "output_diagnostics",
           "DIAGNOSTIC_SUMS"]


def to_device(batch: Any, device: torch.device) -> Any:
    """The tensors of a batch — a tensor, a dict (the 3D tasks) or a tuple/list (the 2D tasks) of tensors and other
    values — on ``device``, non-blocking (from pinned memory)."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(v.to(device, non_blocking=True) if torch.is_tensor(v) else v for v in batch)
    return batch


#: Batch keys passed to the model's forward besides the image, with the dtype each is given.
_MODEL_KEYS = {"cov_num": torch.float32, "cov_cat": torch.long, "lung_mask": torch.float32}


def model_inputs(batch: Mapping[str, Any], *, device: torch.device | str | None = None) -> dict[str, Any]:
    """Keyword arguments of the model's forward besides the image: ``cov_num`` (float32), ``cov_cat`` (int64) and
    ``lung_mask`` (float32) from a batch dict.

    Empty covariate blocks are passed as ``None``; ``lung_mask`` only when the batch has one. ``device``: move the
    tensors there (default: leave them where they are).
    """
    kw: dict[str, Any] = {}
    for key, dtype in _MODEL_KEYS.items():
        v = batch.get(key)
        if v is None or not torch.is_tensor(v) or (key != "lung_mask" and v.shape[-1] == 0):
            if key != "lung_mask":
                kw[key] = None
            continue
        kw[key] = v.to(device=device, dtype=dtype)
    return kw


def forward(model: torch.nn.Module, batch: Mapping[str, Any], *, amp: bool = False):
    """``model(image, cov_num=, cov_cat=, lung_mask=)`` under the right precision; returns the ``SurvivalOutput``."""
    image = batch["image"]
    with autocast(image.device, amp):
        return model(image, **model_inputs(batch))


#: The per-case sums :func:`output_diagnostics` returns (each with its count ``n_<name>``, see there).
DIAGNOSTIC_SUMS = ("p_entropy", "p_max", "loc_sd", "p_lesion", "p_distractor", "p_lesion_chance", "p_distractor_chance",
                   "pointing")


def _cubelet_any(mask: torch.Tensor, grid: tuple[int, ...], patch_size: int) -> torch.Tensor:
    """(B, 1, D, H, W) voxel mask -> (B, 1, d, h, w) bool: cubelets of the model's grid holding any mask voxel."""
    shape = mask.shape[-3:]
    pad = (0, grid[2] * patch_size - shape[2], 0, grid[1] * patch_size - shape[1], 0, grid[0] * patch_size - shape[0])
    return torch.nn.functional.max_pool3d(torch.nn.functional.pad((mask > 0.5).float(), pad), patch_size) > 0


@torch.no_grad()
def output_diagnostics(out, batch: Mapping[str, Any], patch_size: int | None = None) -> dict[str, torch.Tensor]:
    r"""Per-batch *sums* over cases of what the head's softmin map looks like (for training diagnostics).

    For each case with a map ``p`` over its valid cubelets :math:`V` and per-cubelet times :math:`\ell`:

    * ``p_entropy``: :math:`H(p) = -\sum_i p_i \log p_i` in nats (0 = one cubelet, :math:`\log |V|` = uniform);
    * ``p_max``: :math:`\max_i p_i`;
    * ``loc_sd``: the population sd of :math:`\ell` over :math:`V` (time units): the contrast the softmin sees;
    * ``p_lesion``: :math:`\sum_{i \in L} p_i` over cubelets holding any voxel of the case's ``mask`` (cases
      with a lesion only);
    * ``p_distractor``: the same for ``distractor_mask`` (cases with a distractor only);
    * ``p_lesion_chance``, ``p_distractor_chance``: what a uniform map over :math:`V` would put there,
      :math:`|L \cap V| / |V|` (the same cases): the level a map that ignores the lesions (distractors) sits at;
    * ``pointing``: the voxel-level pointing game of the ``head_grid`` map (p on valid cells, nearest-upsampled to
      the voxels of the model's input) against ``mask`` inside ``lung_mask`` (cases with a lesion there only):
      :func:`survival3d.metrics.localisation.pointing_game`, the rule ``run.py explain`` scores with.

    Returns float64 tensors on the batch's device: each name of :data:`DIAGNOSTIC_SUMS` and ``n_<name>``, the
    number of cases it summed over. Empty for heads without a map. Pure reads of the model's output: no random
    numbers, no change to the forward.
    """
    if out.p is None:
        return {}
    p = out.p.detach().float()
    b = p.shape[0]
    grid = tuple(p.shape[-3:])
    valid = (out.valid if out.valid is not None else p > 0).expand_as(p)
    ones = p.new_ones((), dtype=torch.float64) * b
    sums: dict[str, torch.Tensor] = {
        "p_entropy": -torch.xlogy(p, p).flatten(1).sum(1).double().sum(), "n_p_entropy": ones,
        "p_max": p.flatten(1).max(1).values.double().sum(), "n_p_max": ones,
    }
    if out.loc is not None:
        loc = out.loc.detach().float().expand_as(p)
        v = valid.float()
        nv = v.flatten(1).sum(1).clamp_min(1.0)
        mean = (loc * v).flatten(1).sum(1) / nv
        var = ((loc - mean.reshape(-1, 1, 1, 1, 1)).square() * v).flatten(1).sum(1) / nv
        sums.update(loc_sd=var.sqrt().double().sum(), n_loc_sd=ones)
    image_shape = batch["image"].shape[-3:]
    ps = int(patch_size) if patch_size else 0
    if not ps or any(-(-int(s) // ps) != g for s, g in zip(image_shape, grid)):  # a map finer than the cubelets
        ps = -(-int(image_shape[0]) // grid[0])
    for name, key in (("p_lesion", "mask"), ("p_distractor", "distractor_mask")):
        m = batch.get(key)
        if m is None or not torch.is_tensor(m):
            continue
        cub = _cubelet_any(m, grid, ps)
        has = cub.flatten(1).any(1)
        mass = (p * cub).flatten(1).sum(1)
        sums[name] = (mass * has).double().sum()
        sums[f"n_{name}"] = has.double().sum()
        chance = (cub & valid).flatten(1).sum(1).double() / valid.flatten(1).sum(1).clamp_min(1).double()
        sums[f"{name}_chance"] = (chance * has).sum()
        sums[f"n_{name}_chance"] = sums[f"n_{name}"]
    if torch.is_tensor(batch.get("mask")):
        sums.update(_pointing_sums(torch.where(valid, p, torch.zeros_like(p)), batch["mask"], batch.get("lung_mask"),
                                   image_shape, ps))
    return sums


def _pointing_sums(p: torch.Tensor, mask: torch.Tensor, lung_mask, image_shape, cell: int) -> dict[str, torch.Tensor]:
    """``pointing`` and ``n_pointing`` of :func:`output_diagnostics`: the map's cells brought to voxels as explain does
    (:func:`~survival3d.metrics.localisation.cubelets_to_image`, nearest: each cell's value fills its voxels), cropped
    to the image, scored case by case on the host."""
    up = cubelets_to_image(p, image_shape, cell, "nearest")[:, 0].cpu().numpy()
    masks = mask[:, 0].cpu().numpy()
    lungs = lung_mask[:, 0].cpu().numpy() if torch.is_tensor(lung_mask) else [None] * len(up)
    hits = [pointing_game(hm, mk, lung_mask=lg) for hm, mk, lg in zip(up, masks, lungs)]
    scored = [x for x in hits if not np.isnan(x)]
    total = p.new_tensor(float(sum(scored)), dtype=torch.float64)
    return {"pointing": total, "n_pointing": p.new_tensor(float(len(scored)), dtype=torch.float64)}


@torch.no_grad()
def predict_arrays(model: torch.nn.Module, loader, device: torch.device, *, amp: bool = False, loss_fn=None, progress=None,
                   time_grid=None, diagnostics: bool = False) -> dict[str, Any]:
    """Predictions for every case of ``loader`` as numpy arrays (plus the summed loss when ``loss_fn`` is given).

    ``time_grid`` (:class:`~survival3d.time_grid.TimeGrid`): the model and loss work in grid units; the loss gets
    ``time / bin_width`` and ``pred_time`` is mapped back to the data's unit (``risk`` stays the model's score).
    ``None``: the identity grid.

    ``diagnostics``: also accumulate :func:`output_diagnostics` of the same forward passes (returned as
    ``"diag"``: ``{name: sum, "n_<name>": count}`` floats); the predictions are the same either way.

    Returns:
        ``{"id": [...], "time", "event", "pred_time", "risk"[, "expected_time"], "loss_sum", "n"[, "diag"]}``.
        ``event`` is int64, or float64 with NaN where a case has no outcome (a manifest read with
        ``require_outcome=False``). Tensors are gathered on the device and copied to the host once at the end.
    """
    was_training = model.training
    model.eval()
    ids: list[str] = []
    cols: dict[str, list[torch.Tensor]] = {"time": [], "event": [], "pred_time": [], "risk": [], "expected_time": []}
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    diag: dict[str, torch.Tensor] = {}
    patch_size = getattr(model, "patch_size", None)
    n = 0
    for batch in loader if progress is None else progress(loader):
        batch = to_device(batch, device)
        out = forward(model, batch, amp=amp)
        ids += list(batch["id"])
        cols["time"].append(batch["time"])
        cols["event"].append(batch["event"])
        pred = out.pred.detach().float()
        cols["pred_time"].append(pred if time_grid is None else time_grid.from_grid(pred))
        cols["risk"].append(out.risk.detach().float())
        if "expected_time" in batch:
            cols["expected_time"].append(batch["expected_time"])
        if loss_fn is not None:
            with autocast(device, amp):
                losses = loss_fn(out, batch["time"] if time_grid is None else time_grid.to_grid(batch["time"]), batch["event"])
            loss_sum += losses["loss"].detach().double() * len(batch["id"])
        if diagnostics:
            for k, v in output_diagnostics(out, batch, patch_size).items():
                diag[k] = diag[k] + v if k in diag else v
        n += len(batch["id"])
    model.train(was_training)
    result: dict[str, Any] = {"id": ids}
    for k, v in cols.items():
        if v and (k != "expected_time" or len(v) == len(cols["time"])):
            result[k] = torch.cat(v).cpu().numpy().astype(np.float64)
    if np.isfinite(result["event"]).all():  # cases without an outcome (predict, explain) keep NaN, not a junk integer
        result["event"] = result["event"].astype(np.int64)
    result["loss_sum"] = float(loss_sum.cpu()) if loss_fn is not None else float("nan")
    result["n"] = n
    if diagnostics:
        result["diag"] = {k: float(v.cpu()) for k, v in diag.items()}
    return result


def predictions_frame(arrays: Mapping[str, Any]) -> pd.DataFrame:
    """``id,time,event,pred_time,risk[,expected_time]`` as a DataFrame."""
    cols = ["id", "time", "event", "pred_time", "risk"] + (["expected_time"] if "expected_time" in arrays else [])
    return pd.DataFrame({c: arrays[c] for c in cols})
