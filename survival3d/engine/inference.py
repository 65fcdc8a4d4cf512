"""Forward passes over a loader: the model call every part of the engine shares, and prediction tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from survival3d.runtime import autocast  # re-exported: the one bf16 autocast of the package

__all__ = ["model_inputs", "forward", "autocast", "predict_arrays", "predictions_frame", "to_device"]


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch dict to ``device`` (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


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


@torch.no_grad()
def predict_arrays(model: torch.nn.Module, loader, device: torch.device, *, amp: bool = False, loss_fn=None, progress=None,
                   time_grid=None) -> dict[str, Any]:
    """Predictions for every case of ``loader`` as numpy arrays (plus the summed loss when ``loss_fn`` is given).

    ``time_grid`` (:class:`~survival3d.time_grid.TimeGrid`): the model and loss work in grid units; the loss gets
    ``time / bin_width`` and ``pred_time`` is mapped back to the data's unit (``risk`` stays the model's score).
    ``None``: the identity grid.

    Returns:
        ``{"id": [...], "time", "event", "pred_time", "risk"[, "expected_time"], "loss_sum", "n"}``. Tensors are
        gathered on the device and copied to the host once at the end.
    """
    was_training = model.training
    model.eval()
    ids: list[str] = []
    cols: dict[str, list[torch.Tensor]] = {"time": [], "event": [], "pred_time": [], "risk": [], "expected_time": []}
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
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
        n += len(batch["id"])
    model.train(was_training)
    result: dict[str, Any] = {"id": ids}
    for k, v in cols.items():
        if v and (k != "expected_time" or len(v) == len(cols["time"])):
            result[k] = torch.cat(v).cpu().numpy().astype(np.float64)
    result["event"] = result["event"].astype(np.int64)
    result["loss_sum"] = float(loss_sum.cpu()) if loss_fn is not None else float("nan")
    result["n"] = n
    return result


def predictions_frame(arrays: Mapping[str, Any]) -> pd.DataFrame:
    """``id,time,event,pred_time,risk[,expected_time]`` as a DataFrame."""
    cols = ["id", "time", "event", "pred_time", "risk"] + (["expected_time"] if "expected_time" in arrays else [])
    return pd.DataFrame({c: arrays[c] for c in cols})
