"""OSIC Pulmonary Fibrosis Progression layout → preprocessed images, lung masks, QC and a manifest.

Layout::

    ROOT/train/<Patient>/*.dcm       one CT series per patient (any file names; ordered by position)
    ROOT/train.csv                   Patient, Weeks, FVC, Percent, Age, Sex, SmokingStatus (several visits each)
    SURVIVAL.csv                     Patient, time, event (event 1 = observed, 0 = censored)

Baseline covariates come from each patient's earliest visit (smallest ``Weeks``): ``fvc_baseline`` (ml),
``percent_baseline`` (% of predicted FVC); ``age``, ``sex``, ``smoking_status`` are taken from that row too.

:func:`run_preprocess_jobs` processes cases in parallel worker processes with a progress bar; cases already done
with the same settings are skipped (resumable), a failing case is logged and listed in ``failures.csv`` while the
others continue, and ``manifest.csv`` lists every case done.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from survival3d.data.preprocess import PreprocessSettings, case_is_done, preprocess_case
from survival3d.data.manifest import write_manifest
from survival3d.errors import InputError, Survival3DError
from survival3d.io import atomic_path, write_json

__all__ = [
    "CaseJob",
    "OSIC_COLUMNS",
    "SURVIVAL_COLUMNS",
    "MANIFEST_COLUMNS",
    "read_osic_clinical",
    "read_survival_csv",
    "osic_jobs",
    "run_preprocess_jobs",
    "save_manifest",
    "build_synthetic_osic",
]

logger = logging.getLogger(__name__)

OSIC_COLUMNS = ("Patient", "Weeks", "FVC", "Percent", "Age", "Sex", "SmokingStatus")
SURVIVAL_COLUMNS = ("Patient", "time", "event")
MANIFEST_COLUMNS = (
    "id", "image", "lung_mask", "time", "event", "age", "sex", "smoking_status", "fvc_baseline", "percent_baseline",
)  # fmt: skip


def _read_csv(path: str | Path, required: Sequence[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"cannot parse CSV: {e}", path=path) from e
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"missing column(s) {missing}; columns are {list(df.columns)}", path=path,
                         field=missing[0])  # fmt: skip
    return df


def _numeric(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"non-numeric value {df[column].iloc[i]!r} on line {i + 2}", path=path, field=column)
    return values


def read_osic_clinical(path: str | Path) -> pd.DataFrame:
    """Baseline covariates per patient from an OSIC ``train.csv``; indexed by Patient."""
    path = Path(path)
    df = _read_csv(path, OSIC_COLUMNS)
    for col in ("Weeks", "FVC", "Percent", "Age"):
        df[col] = _numeric(df, col, path)
    df["Patient"] = df["Patient"].astype(str)
    first = df.sort_values(["Patient", "Weeks"], kind="stable").groupby("Patient", sort=True).head(1)
    out = pd.DataFrame({
        "age": first["Age"].to_numpy(dtype=float),
        "sex": first["Sex"].astype(str).to_numpy(),
        "smoking_status": first["SmokingStatus"].astype(str).to_numpy(),
        "fvc_baseline": first["FVC"].to_numpy(dtype=float),
        "percent_baseline": first["Percent"].to_numpy(dtype=float),
    }, index=pd.Index(first["Patient"].to_numpy(), name="Patient"))  # fmt: skip
    return out


def read_survival_csv(path: str | Path, *, id_column: str = "Patient") -> pd.DataFrame:
    """Validated survival table (``id_column``, ``time``, ``event``) indexed by id.

    Raises:
        InputError: naming the file, column and line, for NaN or negative times, events not in {0, 1} and
            duplicated ids.
    """
    path = Path(path)
    if id_column not in ("Patient", "id"):
        raise ValueError(f"id_column must be 'Patient' or 'id', got {id_column!r}.")
    df = _read_csv(path, [id_column, "time", "event"] if id_column == "id" else list(SURVIVAL_COLUMNS))
    ids = df[id_column].astype(str)
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        raise InputError(f"duplicated id(s) {sorted(set(dup))[:5]} (lines {[i + 2 for i in dup.index[:5]]})",
                         path=path, field=id_column)  # fmt: skip
    time_ = _numeric(df, "time", path)
    bad = time_.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"missing (NaN) time for {ids.iloc[i]!r} on line {i + 2}", path=path, field="time")
    neg = time_ < 0
    if neg.any():
        i = int(np.flatnonzero(neg.to_numpy())[0])
        raise InputError(f"negative time {time_.iloc[i]} for {ids.iloc[i]!r} on line {i + 2}", path=path,
                         field="time")  # fmt: skip
    event = _numeric(df, "event", path)
    bad_ev = ~event.isin([0, 1])
    if bad_ev.any():
        i = int(np.flatnonzero(bad_ev.to_numpy())[0])
        raise InputError(f"event must be 0 or 1, got {df['event'].iloc[i]!r} for {ids.iloc[i]!r} on line {i + 2}",
                         path=path, field="event")  # fmt: skip
    return pd.DataFrame({"time": time_.to_numpy(dtype=float), "event": event.to_numpy(dtype=int)},
                        index=pd.Index(ids.to_numpy(), name="id"))  # fmt: skip


@dataclass
class CaseJob:
    """One case to preprocess: its id, input path and the manifest values that go with it."""

    id: str
    source: str
    series_uid: str | None = None
    row: dict[str, Any] = field(default_factory=dict)


def osic_jobs(root: str | Path, survival_csv: str | Path, *, train_csv: str | Path | None = None) -> list[CaseJob]:
    """Jobs for every patient of an OSIC tree that has a survival row.

    Raises:
        InputError: no ``train/`` folder; survival patients absent from the tree or from ``train.csv``.
    """
    root = Path(root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise InputError("no train/ folder (expected ROOT/train/<Patient>/*.dcm)", path=root)
    train_csv = root / "train.csv" if train_csv is None else Path(train_csv)
    clinical = read_osic_clinical(train_csv)
    surv = read_survival_csv(survival_csv, id_column="Patient")
    folders = {p.name: p for p in sorted(train_dir.iterdir()) if p.is_dir()}
    unknown = [p for p in surv.index if p not in folders]
    if unknown:
        raise InputError(f"unknown patient(s) {unknown[:5]}: no folder under {train_dir}", path=survival_csv,
                         field="Patient")  # fmt: skip
    no_clin = [p for p in surv.index if p not in clinical.index]
    if no_clin:
        raise InputError(f"unknown patient(s) {no_clin[:5]}: not in {train_csv}", path=survival_csv, field="Patient")
    skipped = sorted(set(folders) - set(surv.index))
    if skipped:
        logger.warning("%d patient folder(s) without a survival row are skipped: %s", len(skipped), skipped[:5])
    jobs = []
    for pid in surv.index:
        row = {"time": float(surv.loc[pid, "time"]), "event": int(surv.loc[pid, "event"]),
               **clinical.loc[pid].to_dict()}  # fmt: skip
        jobs.append(CaseJob(id=str(pid), source=str(folders[pid]), row=row))
    return jobs


def _run_job(job: CaseJob, out_dir: str, settings: PreprocessSettings, qc_png: bool) -> tuple[str, dict[str, Any]]:
    """Worker: preprocess one case; user-data problems and unexpected failures are returned, not raised."""
    t0 = time.perf_counter()
    try:
        side = preprocess_case(job.source, out_dir, job.id, settings, series_uid=job.series_uid, qc_png=qc_png)
    except Survival3DError as e:
        return "failed", {"id": job.id, "source": job.source, "error": str(e)}
    except Exception as e:  # noqa: BLE001 - one broken case must not stop a batch; the traceback is logged
        logger.exception("%s: unexpected failure", job.id)
        return "failed", {"id": job.id, "source": job.source, "error": f"{type(e).__name__}: {e}"}
    return "done", {"id": job.id, "seconds": round(time.perf_counter() - t0, 3), "sidecar": side}


def _atomic_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def save_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the manifest with :func:`survival3d.data.manifest.write_manifest` (validated, atomic)."""
    return write_manifest(df, path)


def run_preprocess_jobs(
    jobs: Sequence[CaseJob],
    out_dir: str | Path,
    settings: PreprocessSettings,
    *,
    workers: int = 1,
    resume: bool = True,
    qc_png: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Preprocess ``jobs`` into ``out_dir`` and write ``manifest.csv``, ``failures.csv`` and ``summary.json``.

    Args:
        jobs: the cases.
        out_dir: output root (``images/``, ``lung_masks/``, ``qc/``, ``manifest.csv``).
        settings: preprocessing settings; a case done earlier with the same settings digest is skipped when
            ``resume``.
        workers: worker processes (1 = in this process).
        qc_png: write the QC montage.
        progress: show a tqdm progress bar.

    Returns:
        The summary: counts of done / skipped / failed cases, failures, seconds, manifest path.
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers {workers} must be >= 1.")
    ids = [j.id for j in jobs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"duplicated case id(s) {dup[:5]}", field="id")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sidecars: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        side = case_is_done(out_dir, job.id, settings) if resume else None
        if side is not None:
            sidecars[job.id] = side
        else:
            todo.append(job)
    skipped = len(sidecars)
    if skipped:
        logger.info("%d case(s) already done with settings %s: skipped", skipped, settings.digest())
    failures: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), desc="preprocess", unit="case", disable=None if progress and todo else True)

    def handle(status: str, info: dict[str, Any]) -> None:
        if status == "done":
            sidecars[info["id"]] = info["sidecar"]
            logger.debug("%s done in %.1f s", info["id"], info["seconds"])
        else:
            failures.append(info)
            logger.error("%s failed: %s", info["id"], info["error"])
        bar.update(1)

    if workers == 1 or len(todo) <= 1:
        for job in todo:
            handle(*_run_job(job, str(out_dir), settings, qc_png))
    else:
        # spawn, not fork: forking a process whose torch/OpenMP thread pools are running can deadlock the children
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
            futures = [pool.submit(_run_job, job, str(out_dir), settings, qc_png) for job in todo]
            for fut in as_completed(futures):
                handle(*fut.result())
    bar.close()

    rows = []
    for job in jobs:
        side = sidecars.get(job.id)
        if side is None:
            continue
        rows.append({
            "id": job.id,
            "image": f"images/{job.id}.nii.gz",
            "lung_mask": f"lung_masks/{job.id}.nii.gz",
            "time": job.row.get("time", np.nan),
            "event": job.row.get("event", np.nan),
            **{k: v for k, v in job.row.items() if k not in ("time", "event")},
        })  # fmt: skip
    extra = sorted({k for r in rows for k in r} - set(MANIFEST_COLUMNS))
    columns = [c for c in MANIFEST_COLUMNS if any(c in r for r in rows)] + extra
    manifest = out_dir / "manifest.csv"
    if rows:
        save_manifest(pd.DataFrame(rows, columns=columns or None), manifest)
    fail_csv = out_dir / "failures.csv"
    if failures:
        _atomic_csv(pd.DataFrame(failures, columns=["id", "source", "error"]), fail_csv)
    else:
        fail_csv.unlink(missing_ok=True)
    summary = {
        "cases": len(jobs),
        "done": len(todo) - len(failures),
        "skipped": skipped,
        "failed": len(failures),
        "failures": failures,
        "seconds": round(time.perf_counter() - t0, 2),
        "workers": workers,
        "settings_digest": settings.digest(),
        "manifest": str(manifest) if rows else None,
    }
    write_json(out_dir / "summary.json", summary, default=str)
    logger.info(
        "preprocess: %d done, %d skipped (already done), %d failed of %d in %.1f s%s", summary["done"], skipped,
        len(failures), len(jobs), summary["seconds"], f"; failures listed in {fail_csv}" if failures else "",
    )  # fmt: skip
    return summary


def build_synthetic_osic(
    root: str | Path,
    series_dir: str | Path,
    *,
    n_patients: int = 4,
    rng: np.random.Generator | None = None,
    visits: int = 3,
) -> dict[str, Path]:
    """Build an OSIC-layout tree from one real DICOM series, for tests and smoke runs.

    Each patient ``ID00000000000000000000`` … gets a copy of the series under ``train/<Patient>/`` with shuffled
    random ``.dcm`` names (so slice order must come from the headers), made-up clinical visits in ``train.csv``
    (``visits`` rows per patient, the baseline at the smallest week, which is not the first row) and a row in
    ``survival.csv`` (time in weeks, event 0/1, at least one of each when ``n_patients >= 2``).

    Returns:
        ``{"root": ..., "train_csv": ..., "survival_csv": ...}``.
    """
    import shutil

    rng = np.random.default_rng() if rng is None else rng
    root, series_dir = Path(root), Path(series_dir)
    files = sorted(p for p in series_dir.iterdir() if p.is_file())
    if not files:
        raise InputError("no files in the source series", path=series_dir)
    train = root / "train"
    clinical, survival = [], []
    events = rng.permutation([i % 2 for i in range(n_patients)])
    for n in range(n_patients):
        pid = f"ID{n:05d}{rng.integers(10**14, 10**15):015d}"
        (train / pid).mkdir(parents=True, exist_ok=True)
        for f, new in zip(files, rng.permutation(len(files))):
            shutil.copyfile(f, train / pid / f"{new + 1}.dcm")
        weeks = np.sort(rng.integers(-5, 60, size=visits))
        fvc0 = float(rng.integers(1800, 4200))
        sex, smoke = rng.choice(["Male", "Female"]), rng.choice(["Ex-smoker", "Never smoked", "Currently smokes"])
        age = int(rng.integers(50, 85))
        for w in rng.permutation(weeks):
            fvc = fvc0 - 4.0 * (w - weeks[0]) + float(rng.normal(0, 30))
            clinical.append({"Patient": pid, "Weeks": int(w), "FVC": round(fvc), "Percent": round(fvc / 40.0, 3),
                             "Age": age, "Sex": sex, "SmokingStatus": smoke})  # fmt: skip
        survival.append({"Patient": pid, "time": round(float(rng.uniform(5, 150)), 1), "event": int(events[n])})
    out = {"root": root, "train_csv": root / "train.csv", "survival_csv": root / "survival.csv"}
    _atomic_csv(pd.DataFrame(clinical), out["train_csv"])
    _atomic_csv(pd.DataFrame(survival), out["survival_csv"])
    return out
