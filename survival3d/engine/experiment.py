"""An experiment: cases → patient-level split(s) → one :class:`~survival3d.engine.survival_task.SurvivalTask` per
split, each trained by the one :class:`~survival3d.engine.loop.Engine`.

``cv.folds = 1`` trains one split into ``runs/<name>/``; ``cv.folds = k`` trains every fold into
``runs/<name>/fold{i}/`` and writes ``runs/<name>/cv_metrics.json`` (per-fold metrics, mean and sample sd).
The split ids are saved in ``splits.json`` at the top of the run (and in every checkpoint), so a resumed run, an
evaluation or a later comparison uses exactly the same patients.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from survival3d.config import save_config
from survival3d.data.datasets import load_cases
from survival3d.data.splits import kfold_splits, read_splits, train_val_split
from survival3d.engine.components import Components
from survival3d.engine.distributed import DistInfo, init_distributed
from survival3d.engine.survival_task import train_split
from survival3d.errors import ConfigError, InputError
from survival3d.io import write_json
from survival3d.metrics.report import aggregate_folds as _aggregate_metrics

__all__ = ["run_experiment", "make_splits", "aggregate_folds", "run_dir_of"]

log = logging.getLogger(__name__)

AGGREGATED = ("c_index", "c_index_oracle", "mae_uncensored", "mae_censored", "val_loss", "epochs", "time", "p_on_lesion")


def run_dir_of(cfg) -> Path:
    return Path(cfg.out_dir) / cfg.name


def _file_splits(cfg, cases) -> list[dict[str, list[str]]]:
    """The folds of ``data.splits``: all of them when ``cv.folds`` is their number, one (``cv.fold``, default 0) as
    validation when ``cv.folds = 1``."""
    fold_of = read_splits(cfg.data.splits, cases.ids)
    k = max(fold_of.values()) + 1
    folds = int(cfg.cv.folds)
    if cases.groups is not None:  # patient-level: the scans of one patient share a fold
        seen: dict[str, int] = {}
        for cid, g in zip(cases.ids, cases.groups):
            if seen.setdefault(g, fold_of[cid]) != fold_of[cid]:
                raise InputError(f"patient {g!r} ({cfg.cv.group_column}) has scans in folds {seen[g]} and "
                                 f"{fold_of[cid]}.", path=cfg.data.splits, field="fold")
    order = cases.ids

    def split(k_val: int) -> dict[str, list[str]]:
        return {"train": [i for i in order if fold_of[i] != k_val], "val": [i for i in order if fold_of[i] == k_val]}

    if folds == k:
        return [split(j) for j in range(k)]
    if folds == 1:
        val = 0 if cfg.cv.fold is None else int(cfg.cv.fold)
        if not 0 <= val < k:
            raise ConfigError(f"cv.fold must be in [0, {k - 1}] for the {k} folds of {cfg.data.splits}, got {val}.")
        return [split(val)]
    raise ConfigError(f"data.splits {cfg.data.splits} has {k} folds but cv.folds={folds}: set cv.folds={k} (every "
                      f"fold) or cv.folds=1 (one fold, cv.fold, as validation).")


def make_splits(cfg, cases) -> list[dict[str, list[str]]]:
    """The patient-level split(s) the config asks for (``data.splits``: the folds of that file)."""
    if cfg.data.splits:
        return _file_splits(cfg, cases)
    folds = int(cfg.cv.folds)
    kw = dict(seed=int(cfg.cv.seed), groups=cases.groups, stratify=bool(cfg.cv.stratify))
    try:
        if folds == 1:
            train, val = train_val_split(cases.ids, cases.events, val_frac=float(cfg.data.val_frac), **kw)
            return [{"train": train, "val": val}]
        if folds < 1:
            raise ConfigError(f"cv.folds must be >= 1, got {folds}.")
        return [{"train": t, "val": v} for t, v in kfold_splits(cases.ids, cases.events, folds=folds, **kw)]
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"cannot split {len(cases)} cases ({cases.source}): {e}") from None


def aggregate_folds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``cv_metrics.json``: the number of folds, the per-fold metrics and, for each of :data:`AGGREGATED`, the mean,
    sample sd and n over folds by :func:`survival3d.metrics.aggregate_folds` (NaN/None values ignored)."""
    return {"folds": len(results), "per_fold": list(results), **_aggregate_metrics(results, keys=AGGREGATED)}


def _json_write(obj: Any, path: Path) -> None:
    """JSON, atomically; values JSON cannot hold are written as null."""
    write_json(path, obj, default=lambda o: None)


def _prepare_run_dir(cfg, resume: bool, info: DistInfo) -> Path:
    run_dir = run_dir_of(cfg)
    if not info.is_main:
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if cfg.train.overwrite:
            if not (run_dir / "config.yaml").is_file():  # never delete a folder that is not a run
                raise ConfigError(f"train.overwrite=true but {run_dir} is not a run folder (no config.yaml); "
                                  f"refusing to delete it.")
            shutil.rmtree(run_dir)
        else:
            raise ConfigError(f"run folder {run_dir} already exists: continue it with --resume {run_dir}, "
                              f"pick another name=..., or pass train.overwrite=true.")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _splits_for_run(cfg, cases, run_dir: Path, resume: bool, info: DistInfo) -> list[dict[str, list[str]]]:
    splits = make_splits(cfg, cases)
    path = run_dir / "splits.json"
    if resume and path.is_file():
        saved = json.loads(path.read_text())["splits"]
        if saved != splits:
            raise InputError("the data or cv settings now give different splits than the run was started with; "
                             "resume with the original config.", path=path, field="splits")
    if info.is_main:
        _json_write({"folds": int(cfg.cv.folds), "seed": int(cfg.cv.seed), "splits": splits}, path)
    return splits


def run_experiment(cfg, *, resume: bool = False, components: Components | None = None, callbacks: Sequence[Any] = (),
                   dist: DistInfo | None = None) -> dict[str, Any]:
    """Train every split of the experiment; returns the final metrics (k-fold: the aggregate with ``per_fold``).

    Args:
        cfg: the experiment config.
        resume: continue an existing ``runs/<name>`` from its ``last.pt`` checkpoints (finished folds are kept).
        components: model/loss/dummy factories (default: the project's).
        callbacks: passed to every split's :class:`~survival3d.engine.loop.Engine`.
        dist: process-group position; default: joined from the ``torchrun`` environment.
    """
    components = components or Components()
    info = dist or init_distributed(cfg.train.device)
    run_dir = _prepare_run_dir(cfg, resume, info)
    cases = load_cases(cfg.data, generate_case=components.generate_case if cfg.data.source == "dummy" else None,
                       group_column=cfg.cv.group_column)
    if info.is_main:
        save_config(cfg, run_dir / "config.yaml")
        from survival3d.data.plan import cases_plan

        plan = cases_plan(cases.records, source=cases.source)
        if plan is not None:  # the preprocessing `run.py predict` applies to raw CTs (also in every checkpoint)
            _json_write(plan, run_dir / "plan.json")
    splits = _splits_for_run(cfg, cases, run_dir, resume, info)
    folds = int(cfg.cv.folds)
    if folds == 1:
        return train_split(cfg, run_dir, cases, splits[0], components=components, dist=info, callbacks=callbacks, resume=resume)

    selected = range(folds) if cfg.cv.fold is None else [int(cfg.cv.fold)]
    if any(not 0 <= k < folds for k in selected):
        raise ConfigError(f"cv.fold must be in [0, {folds - 1}], got {cfg.cv.fold}.")
    for k in selected:
        fold_dir = run_dir / f"fold{k}"
        done = fold_dir / "final_metrics.json"
        if resume and done.is_file():
            log.info("fold %d already finished (%s)", k, done)
            continue
        log.info("fold %d/%d", k + 1, folds)
        train_split(cfg, fold_dir, cases, splits[k], components=components, dist=info, callbacks=callbacks, resume=resume)
    results = []
    for k in range(folds):
        p = run_dir / f"fold{k}" / "final_metrics.json"
        if p.is_file():
            results.append({"fold": k, **json.loads(p.read_text())})
    agg = aggregate_folds(results)
    if info.is_main and len(results) == folds:
        _json_write(agg, run_dir / "cv_metrics.json")
    return agg
