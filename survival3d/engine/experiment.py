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
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from survival3d.config import save_config
from survival3d.data.datasets import load_cases
from survival3d.data.splits import kfold_splits, read_splits, train_val_split
from survival3d.engine.components import Components
from survival3d.engine.distributed import DistInfo, init_distributed
from survival3d.engine.survival_task import check_train_config, train_split
from survival3d.errors import ConfigError, InputError
from survival3d.io import FolderLock, remove_stale_temps, write_json
from survival3d.metrics.report import aggregate_folds

__all__ = ["run_experiment", "make_splits", "cv_summary", "run_dir_of"]

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


def cv_summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``cv_metrics.json``: the number of folds, the per-fold metrics and, for each of :data:`AGGREGATED`, the mean,
    sample sd and n over folds by :func:`survival3d.metrics.aggregate_folds` (NaN/None values ignored)."""
    return {"folds": len(results), "per_fold": list(results), **aggregate_folds(results, keys=AGGREGATED)}


def _json_write(obj: Any, path: Path) -> None:
    """JSON, atomically; values JSON cannot hold are written as null."""
    write_json(path, obj, default=lambda o: None)


def _checkpoint_stamps(run_dir: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in run_dir.glob("**/checkpoints/*.pt") if p.is_file()}


def write_bytes_atomic(path: Path, data: bytes) -> None:
    from survival3d.io import atomic_write

    with atomic_write(path, "wb") as f:
        f.write(data)


def _has_checkpoint(run_dir: Path) -> bool:
    """Whether any split of the run wrote a checkpoint (after that, the run folder holds resumable work)."""
    return any(p.is_file() for p in run_dir.glob("**/checkpoints/*.pt"))


def _clear_folder(run_dir: Path, keep: tuple[str, ...] = (FolderLock.NAME,)) -> None:
    for p in run_dir.iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def check_experiment_config(cfg, components: Components) -> None:
    """Config errors that would otherwise surface only after the run folder exists: the train section, the
    optimiser's learning rate and the model's constructor (built once on the CPU with placeholder covariates)."""
    from survival3d.contracts import CovariateSpec
    from survival3d.engine.optim import build_optimizer

    check_train_config(cfg)
    o = cfg.optim
    import torch

    build_optimizer("adamw", [torch.zeros(1, requires_grad=True)], lr=o.lr, betas=tuple(o.betas), eps=float(o.eps))
    cov = cfg.data.covariates
    spec = CovariateSpec(num_numeric=len(cov.numeric), cardinalities=[2] * len(cov.categorical))
    components.model(cfg, spec)


def _prepare_run_dir(cfg, resume: bool, info: DistInfo, lock: FolderLock | None = None) -> Path:
    """Create (or check, on resume) the run folder and take its lock (main process only).

    Raises:
        ConfigError: another process holds the folder, it exists without ``--resume``/``train.overwrite``, or
            ``--resume`` names a folder with nothing to resume.
    """
    run_dir = run_dir_of(cfg)
    if not info.is_main:
        return run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} is a file; pick another name=... or out_dir=...")
    lock = lock or FolderLock(run_dir)
    if not lock.acquire():
        raise ConfigError(f"run folder {run_dir} is in use by another train process (pid {lock.holder()}); "
                          f"wait for it or pick another name=...")
    # a start killed while writing config.yaml leaves only its temporary file: not a run's content
    remove_stale_temps(run_dir, "config.yaml")
    content = [p for p in run_dir.iterdir() if p.name != FolderLock.NAME]
    if resume:
        return run_dir
    if content and (run_dir / "config.yaml").is_file() and not _has_checkpoint(run_dir):
        # nobody holds the lock and no checkpoint was ever written: a start that failed or was killed
        log.warning("clearing %s: left by a run that stopped before its first checkpoint", run_dir)
        _clear_folder(run_dir)
    elif content:
        if cfg.train.overwrite:
            if not (run_dir / "config.yaml").is_file():  # never delete a folder that is not a run
                lock.release()
                lock.path.unlink(missing_ok=True)  # and leave no lock file in it
                raise ConfigError(f"train.overwrite=true but {run_dir} is not a run folder (no config.yaml); "
                                  f"refusing to delete it.")
            _clear_folder(run_dir)
        else:
            lock.release()
            raise ConfigError(f"run folder {run_dir} already exists: continue it with --resume {run_dir}, "
                              f"pick another name=..., or pass train.overwrite=true.")
    return run_dir


def _check_resumable(cfg, run_dir: Path) -> None:
    """``--resume`` needs the checkpoint of every started split; a missing ``last.pt`` is an error, not a restart."""
    folds = int(cfg.cv.folds)
    dirs = [run_dir] if folds == 1 else [p for p in run_dir.glob("fold*") if (p / "metrics.csv").is_file()]
    if folds > 1 and not dirs and not _has_checkpoint(run_dir):
        dirs = [run_dir]
    for d in dirs:
        last = d / "checkpoints" / "last.pt"
        if folds > 1 and (d / "final_metrics.json").is_file():
            continue
        if not last.is_file():
            raise InputError("missing: nothing to resume (restarting would overwrite metrics.csv and best.pt). "
                             "Start the run afresh without --resume (train.overwrite=true), or restore the file.",
                             path=last)


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
    check_experiment_config(cfg, components)  # before the run folder exists: a typo must not block the name
    info = dist or init_distributed(cfg.train.device)
    lock = FolderLock(run_dir_of(cfg))
    run_dir = _prepare_run_dir(cfg, resume, info, lock)
    saved_config, stamps = None, {}
    try:
        if resume and info.is_main:
            _check_resumable(cfg, run_dir)
            saved_config = (run_dir / "config.yaml").read_bytes()
            stamps = _checkpoint_stamps(run_dir)
        return _run(cfg, run_dir, resume, components, callbacks, info)
    except BaseException:
        if info.is_main and not resume and lock.held and run_dir.is_dir() and not _has_checkpoint(run_dir):
            # failed before its first checkpoint: leave nothing that would block the corrected command
            shutil.rmtree(run_dir, ignore_errors=True)
        if saved_config is not None and _checkpoint_stamps(run_dir) == stamps:
            # a resume that failed before writing a checkpoint must not leave its overrides in config.yaml
            write_bytes_atomic(run_dir / "config.yaml", saved_config)
        raise
    finally:
        lock.release()


def _run(cfg, run_dir: Path, resume: bool, components: Components, callbacks, info: DistInfo) -> dict[str, Any]:
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
    agg = cv_summary(results)
    if info.is_main and len(results) == folds:
        _json_write(agg, run_dir / "cv_metrics.json")
    return agg
