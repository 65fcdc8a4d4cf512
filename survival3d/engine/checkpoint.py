"""Checkpoints: atomic writes, safe loads, and a trained model ready for prediction.

A checkpoint is a dict of plain types and tensors (loadable with ``torch.load(weights_only=True)``)::

    model, loss (state dicts), optimizer, scheduler, rng {python, numpy, torch, cuda}, epoch, step,
    covariate_encoder (state), config (resolved, as a dict), split {train: ids, val: ids}, best/early-stop state,
    metrics (the validation metrics of that epoch), time_grid {tmax, bin_width, unit, fitted} (the grid the model and
    loss work on; absent in older checkpoints = the identity grid of the config's integer loss.tmax)

It is written to a temporary file in the same folder, flushed to disk, then renamed over the target, so a crash
while saving leaves the previous checkpoint intact and never a partial file.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from survival3d.io import atomic_write
from survival3d.errors import ConfigError, InputError

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "load_trained",
    "TrainedModel",
    "rng_state",
    "set_rng_state",
    "find_checkpoint",
]


def save_checkpoint(path: str | os.PathLike, **state: Any) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + fsync + rename); returns the path."""
    path = Path(path)
    try:
        with atomic_write(path, "wb", fsync=True) as f:
            torch.save(state, f)
    except RuntimeError as e:  # torch reports a failed write as "enforce fail at inline_container.cc ... file write failed"
        if "write" not in str(e) and "inline_container" not in str(e):
            raise
        import errno
        import shutil

        full = shutil.disk_usage(path.parent).free < 64 * 2**20
        raise OSError(errno.ENOSPC if full else errno.EIO, "checkpoint write failed", str(path)) from e
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain types only).

    Raises:
        InputError: the file is missing or not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found.", path=path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several unrelated types for corrupt files
        raise InputError(f"not a readable checkpoint: {_load_error(e)}", path=path) from None
    if not isinstance(state, dict):
        raise InputError(f"a checkpoint must hold a dict, got {type(state).__name__}.", path=path)
    return state


def _load_error(e: BaseException) -> str:
    """A complete, one-line reason ``torch.load`` refused a file, without torch's advice to set
    ``weights_only=False`` (that would run arbitrary code from an untrusted file)."""
    if isinstance(e, torch.serialization.pickle.UnpicklingError) or "weights_only" in str(e):
        first = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln or "GLOBAL" in ln), "")
        first = first.split(". Please")[0].split(" was not an allowed")[0].replace("WeightsUnpickler error: ", "")
        detail = f" ({first.rstrip('.')})" if first else ""
        return (f"it holds Python objects other than tensors and plain types{detail}; checkpoints are loaded with "
                f"weights_only=True and only files written by run.py train are accepted.")
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:500]}{'...' if len(text) > 500 else ''} (a truncated or corrupt file?)"


def load_weights_checked(load_weights, state: dict[str, Any], path: str | os.PathLike) -> None:
    """``load_weights(state)``, with a state dict that does not fit the model (another config's checkpoint)
    reported in one line naming the file."""
    try:
        load_weights(state)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "size mismatch" in ln or "Missing key" in ln or "Unexpected key" in ln),
                      lines[0] if lines else type(e).__name__)
        raise InputError(f"the checkpoint does not fit the model of this config ({detail[:300]}); was it written "
                         f"with other model.* / head.* settings?", path=path, field="model") from None


def check_best_pair(ckpt_dir: str | os.PathLike, last_state: dict[str, Any], *, repair: bool) -> Path | None:
    """Check that ``best.pt`` holds the epoch ``last.pt`` records as best; returns the file that holds it.

    ``last.pt`` is written before ``best.pt``; a kill between the two leaves a ``best.pt`` older than the best epoch
    that ``last.pt`` records — that epoch is then ``last.pt``'s own, so ``last.pt`` holds the best weights: with
    ``repair`` it is copied over ``best.pt`` (atomically), without, ``last.pt`` is returned. ``None``: the run has no
    best epoch yet.

    Raises:
        InputError: ``best.pt`` holds another epoch and the best weights cannot be recovered.
    """
    import shutil

    from survival3d.io import atomic_path

    ckpt_dir = Path(ckpt_dir)
    best_epoch = (last_state.get("early_stop") or {}).get("best_epoch")
    if best_epoch is None:
        return None
    best, last = ckpt_dir / "best.pt", ckpt_dir / "last.pt"
    held = int(load_checkpoint(best).get("epoch", -1)) if best.is_file() else None
    if held == int(best_epoch):
        return best
    if int(best_epoch) == int(last_state.get("epoch", -1)):
        if repair:
            import logging

            logging.getLogger(__name__).warning("%s held epoch %s, not the best epoch %s (a run killed between checkpoint "
                                                "writes): restored it from %s", best, held, best_epoch, last)
            with atomic_path(best) as tmp:
                shutil.copyfile(last, tmp)
            return best
        return last
    raise InputError(f"holds epoch {held} but {last.name} records epoch {best_epoch} as best, and that epoch's "
                     f"weights are in neither file; use the last checkpoint ({last}).", path=best, field="epoch")


def rng_state() -> dict[str, Any]:
    """The state of every random stream training touches, as plain types and tensors."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the streams saved by :func:`rng_state`."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def run_final(run_dir: str | os.PathLike) -> str:
    """The checkpoint a run reports, ``"last"`` or ``"best"``: its ``train.final`` (from ``config.yaml``; the
    schema default ``"last"`` when the file or key is missing)."""
    import yaml

    cfg_path = Path(run_dir) / "config.yaml"
    final = "last"
    if cfg_path.is_file():
        try:
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"unreadable run config: {e}", path=cfg_path) from None
        final = ((cfg.get("train") or {}).get("final")) or "last"
    if final not in ("last", "best"):
        raise InputError(f"train.final must be 'last' or 'best', got {final!r}.", path=cfg_path, field="train.final")
    return final


def find_checkpoint(path_or_run_dir: str | os.PathLike, prefer: str | None = None) -> Path:
    """``path`` itself if it is a file, else ``<run>/checkpoints/{prefer}.pt`` (falling back to the other one).

    ``prefer=None`` picks the checkpoint the run reported (its ``train.final``; see :func:`run_final`), so that
    ``evaluate``/``explain`` on a run folder judge the same model as its ``final_metrics.json``.
    """
    p = Path(path_or_run_dir)
    if p.is_file():
        return p
    if not p.is_dir():
        raise InputError("no such checkpoint file or run folder.", path=p)
    if prefer is None:
        prefer = run_final(p)
    order = [prefer, "last" if prefer == "best" else "best"]
    for name in order:
        cand = p / "checkpoints" / f"{name}.pt"
        if cand.is_file():
            last = p / "checkpoints" / "last.pt"
            if name == "best" and last.is_file():  # a run killed between its last.pt and best.pt writes
                return check_best_pair(cand.parent, load_checkpoint(last), repair=False) or cand
            return cand
    folds = sorted(q.name for q in p.glob("fold*") if q.is_dir())
    hint = f" This is a cross-validation run: pick one of {folds} (e.g. {p / folds[0]})." if folds else ""
    raise InputError(f"no checkpoints/best.pt or checkpoints/last.pt in the run folder.{hint}", path=p)


@dataclass
class TrainedModel:
    """A model restored from a checkpoint, in eval mode, with what is needed to feed it new cases.

    Attributes:
        model: the network (eval mode) on ``device``.
        loss_fn: the loss it was trained with (its ``pmf``/``variance`` give predicted distributions).
        cfg: the resolved experiment config (OmegaConf).
        covariate_encoder: the fitted :class:`~survival3d.data.covariates.CovariateEncoder`.
        checkpoint: the raw checkpoint dict (epoch, metrics, split ids...).
        path: where it was loaded from.
        time_grid: the :class:`~survival3d.time_grid.TimeGrid` the model and loss work on (grid units); times
            in and predictions out of :meth:`predict` are in the data's unit (``time_grid.unit``).
    """

    model: torch.nn.Module
    loss_fn: torch.nn.Module
    cfg: Any
    covariate_encoder: Any
    checkpoint: dict
    path: Path
    device: torch.device
    time_grid: Any = None

    @property
    def split(self) -> dict[str, list[str]]:
        return self.checkpoint.get("split", {})

    def dataset(self, manifest: str | os.PathLike | None = None, ids=None, *, require_outcome: bool = True):
        """Validation-style dataset (no augmentation, the run's transforms and encoder).

        Args:
            manifest: cases to predict (a manifest CSV); ``None`` = the run's own data (``cfg.data``).
            ids: restrict to these ids (e.g. ``self.split["val"]``); ``None`` = all cases.
            require_outcome: ``False`` accepts a manifest without time/event (explain, predict).
        """
        from survival3d.data.datasets import build_dataset, load_cases, manifest_cases

        if manifest is None:
            cases = load_cases(self.cfg.data, generate_case=getattr(self, "_generate_case", None))
        else:
            cases = manifest_cases(str(manifest), require_outcome=require_outcome)
        return build_dataset(cases, cases.ids if ids is None else ids, self.covariate_encoder, self.cfg.data, train=False)

    def predict(self, dataset_or_loader, *, batch_size: int | None = None) -> pd.DataFrame:
        """``id,time,event,pred_time,risk[,expected_time]`` for every case of a dataset or loader."""
        from survival3d.data.datasets import collate_cases
        from survival3d.engine.inference import predict_arrays, predictions_frame

        loader = dataset_or_loader
        if isinstance(dataset_or_loader, torch.utils.data.Dataset):
            loader = torch.utils.data.DataLoader(
                dataset_or_loader, batch_size=batch_size or int(self.cfg.data.batch_size), shuffle=False, collate_fn=collate_cases
            )
        arrays = predict_arrays(self.model, loader, self.device, amp=bool(self.cfg.train.amp), time_grid=self.time_grid)
        return predictions_frame(arrays)

    @torch.no_grad()
    def pmf(self, pred_time) -> tuple[Any, Any]:
        """Predicted distributions for predicted times in the data's unit: ``(pmf (n, tmax), times (tmax,))``, the
        probability of each grid bin and its time in the data's unit; ``(None, times)`` when the loss defines none."""
        grid = self.time_grid
        fn = getattr(self.loss_fn, "pmf", None)
        if not callable(fn):
            return None, grid.times()
        dev = next(self.loss_fn.parameters(), next(self.loss_fn.buffers(), torch.empty(0))).device
        pred = torch.as_tensor(np.asarray(pred_time, dtype=np.float32), device=dev)
        return fn(grid.to_grid(pred)).float().cpu().numpy(), grid.times()


def config_from_checkpoint(state: dict[str, Any]):
    """The experiment config stored in a checkpoint, validated against the current schema."""
    from omegaconf import OmegaConf

    from survival3d.config.schema import ExperimentConfig

    cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), state["config"])
    OmegaConf.set_struct(cfg, True)
    return cfg


def load_trained(path_or_run_dir: str | os.PathLike, device: str | torch.device = "cpu", *, prefer: str | None = None, components=None) -> TrainedModel:
    """Rebuild the model (and loss, covariate encoder, config) of a run in a single process.

    Args:
        path_or_run_dir: a ``.pt`` file or a run folder (``runs/<name>`` or ``runs/<name>/fold{k}``).
        device: where to put the model.
        prefer: ``best`` or ``last`` when given a run folder; ``None``: the one the run reported (``train.final``).
        components: a :class:`~survival3d.engine.components.Components` to build with (default: the project's).
    """
    from survival3d.data.covariates import CovariateEncoder
    from survival3d.time_grid import TimeGrid, grid_from_config, resolved_config
    from survival3d.engine.components import Components

    components = components or Components()
    path = find_checkpoint(path_or_run_dir, prefer)
    device = torch.device(device)
    state = load_checkpoint(path, map_location=device)
    for key in ("model", "config", "covariate_encoder"):
        if key not in state:
            raise InputError(f"checkpoint has no '{key}' entry (not written by run.py train?).", path=path, field=key)
    cfg = config_from_checkpoint(state)
    encoder = CovariateEncoder.from_state(state["covariate_encoder"])
    grid = TimeGrid.from_state(state["time_grid"]) if state.get("time_grid") else grid_from_config(cfg)
    grid_cfg = resolved_config(cfg, grid)
    try:
        model = components.model(grid_cfg, encoder.spec)
    except ConfigError as e:
        raise InputError(f"the checkpoint's config does not build a model: {e}", path=path, field="config") from None
    load_weights_checked(model.load_state_dict, state["model"], path)
    model.to(device).eval()
    loss_fn = components.loss(grid_cfg.loss)
    if state.get("loss"):
        loss_fn.load_state_dict(state["loss"])
    loss_fn.to(device).eval()
    tm = TrainedModel(model=model, loss_fn=loss_fn, cfg=cfg, covariate_encoder=encoder, checkpoint=state, path=path, device=device,
                      time_grid=grid)
    tm._generate_case = components.generate_case
    return tm
