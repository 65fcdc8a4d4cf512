"""Trained models for prediction: one run, the folds of a k-fold run, or several runs averaged as an ensemble."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from survival3d.data.plan import describe_plan
from survival3d.engine.checkpoint import TrainedModel, find_checkpoint, load_trained
from survival3d.errors import InputError

__all__ = ["Ensemble", "load_ensemble", "time_unit", "member_paths", "distribution_summary"]

_FOLD_DIR = re.compile(r"^fold[_-]?(\d+)$")

#: Config sections that must agree between ensemble members (they share inputs; the time grid is compared too).
_SHARED = ("data.image_size", "data.intensity_window", "data.spatial", "data.outside_lung", "data.covariates",
           "data.time_unit")


def time_unit(cfg) -> str:
    """The unit of the model's times: ``data.time_unit`` when the config schema has it, else ``"time units"``."""
    unit = OmegaConf.select(cfg, "data.time_unit", default=None) if cfg is not None else None
    return str(unit) if unit else "time units"


def member_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Expand ``--model`` arguments: a k-fold run folder gives its ``fold<k>`` sub-folders (sorted by k); a run
    folder or a ``.pt`` file is one member."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError("no such run folder or checkpoint file.", path=p, field="--model")
        if p.is_dir() and not (p / "checkpoints").is_dir():
            folds = sorted(((int(m.group(1)), q) for q in p.iterdir()
                            if q.is_dir() and (m := _FOLD_DIR.match(q.name))), key=lambda kq: kq[0])
            if folds:
                out += [q for _, q in folds]
                continue
        out.append(p)
    return out


def member_pmf(member: TrainedModel, pred: torch.Tensor) -> np.ndarray | None:
    """The member's predicted distribution over its time grid's bins for the model's output ``pred`` (grid units),
    normalised to sum 1; ``None`` for losses without a distribution."""
    fn = getattr(member.loss_fn, "pmf", None)
    if not callable(fn):
        return None
    with torch.no_grad():
        pmf = fn(pred).double().cpu().numpy()
    total = pmf.sum(axis=1, keepdims=True)
    return pmf / np.where(total > 0, total, 1.0)


def distribution_summary(pmf: np.ndarray, times: np.ndarray | None = None, lo: float = 0.1,
                         hi: float = 0.9) -> dict[str, float]:
    """Mean, median and the ``lo``–``hi`` quantiles of a pmf (normalised to sum 1) whose bins lie at ``times`` (the
    time grid's times in the data's unit; default t = 1..T)."""
    pmf = np.asarray(pmf, dtype=np.float64)
    pmf = pmf / pmf.sum()
    t = np.arange(1, len(pmf) + 1, dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
    cdf = np.cumsum(pmf)

    def q(level):
        return float(t[min(int(np.searchsorted(cdf, level - 1e-12)), len(t) - 1)])

    return {"mean_time": float((t * pmf).sum()), "median_time": q(0.5), f"q{int(lo * 100)}_time": q(lo),
            f"q{int(hi * 100)}_time": q(hi), "p_at_tmax": float(pmf[-1])}


@dataclass
class Ensemble:
    """One or more trained models with the same inputs and time grid.

    Attributes:
        members: the trained models (eval mode).
        names: a short name per member (``fold0``, run folder name or checkpoint stem).
        plan: the preprocessing plan they share (``None``: trained on data without a plan).
        uses_lung_mask: the models were trained with the lung mask as an input.
    """

    members: list[TrainedModel]
    names: list[str]
    plan: dict[str, Any] | None
    uses_lung_mask: bool

    @property
    def cfg(self):
        return self.members[0].cfg

    @property
    def unit(self) -> str:
        return time_unit(self.cfg)

    @property
    def time_grid(self):
        """The members' :class:`~survival3d.time_grid.TimeGrid` (grid units ↔ the data's unit)."""
        return self.members[0].time_grid

    @property
    def tmax(self) -> int:
        return int(self.time_grid.tmax)

    def times(self) -> np.ndarray:
        """The time of each pmf bin in the data's unit."""
        return self.time_grid.times()

    @property
    def encoder(self):
        return self.members[0].covariate_encoder

    def digest(self) -> str:
        """Identifies the members' checkpoints (path, size, mtime): a finished case is redone when it changes."""
        parts = []
        for m in self.members:
            st = Path(m.path).stat()
            parts.append(f"{Path(m.path).resolve()}:{st.st_size}:{int(st.st_mtime)}")
        return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]

    def describe(self) -> dict[str, Any]:
        return {"members": [{"name": n, "checkpoint": str(m.path), "epoch": m.checkpoint.get("epoch")}
                            for n, m in zip(self.names, self.members)],
                "plan": self.plan, "plan_description": describe_plan(self.plan), "time_unit": self.unit,
                "time_grid": self.time_grid.state_dict(), "digest": self.digest()}


def _shared(cfg) -> dict[str, Any]:
    return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k in _SHARED for v in [OmegaConf.select(cfg, k)]}


def load_ensemble(paths: Sequence[str | Path], *, device: str = "cpu") -> Ensemble:
    """Load every member of ``--model`` (see :func:`member_paths`) and check they can be averaged.

    Raises:
        InputError: a member cannot be loaded, or members differ in preprocessing plan, inputs, covariates or time
            grid (named, with both values).
    """
    members, names = [], []
    for p in member_paths(paths):
        ckpt = find_checkpoint(p)
        members.append(load_trained(ckpt, device=device))
        names.append(p.name if p.is_dir() else p.stem)
    if len(set(names)) < len(names):
        names = [f"m{i}_{n}" for i, n in enumerate(names)]
    first = members[0]
    plan = first.checkpoint.get("preprocessing")
    ref = _shared(first.cfg)
    for name, m in zip(names[1:], members[1:]):
        other = m.checkpoint.get("preprocessing")
        if (plan or {}).get("digest") != (other or {}).get("digest"):
            raise InputError(f"ensemble members differ in preprocessing: {names[0]} has {describe_plan(plan)}; "
                             f"{name} has {describe_plan(other)}.", path=m.path, field="preprocessing")
        if m.time_grid.state_dict() != first.time_grid.state_dict():
            raise InputError(f"ensemble members differ in time grid: {names[0]} has {first.time_grid.state_dict()}, "
                             f"{name} has {m.time_grid.state_dict()}.", path=m.path, field="time_grid")
        cur = _shared(m.cfg)
        for k in _SHARED:
            if cur[k] != ref[k]:
                raise InputError(f"ensemble members differ in {k}: {names[0]} has {ref[k]}, {name} has {cur[k]}.",
                                 path=m.path, field=k)
    uses_mask = bool((first.checkpoint.get("model_inputs") or {}).get("lung_mask", False))
    if "model_inputs" not in first.checkpoint:  # checkpoints written before predict existed
        uses_mask = plan is not None
    return Ensemble(members=members, names=names, plan=plan, uses_lung_mask=uses_mask)
