"""The dataset manifest: one CSV row per scan, the single contract between data producers and the pipeline.

A manifest is a CSV file with at least the columns :data:`REQUIRED_COLUMNS`::

    id,image,mask,lung_mask,distractor_mask,time,event,expected_time,age,sex,smoking_status
    dummy6_00000,images/dummy6_00000.nii.gz,masks/dummy6_00000.nii.gz,...,41.7,1,37.2,71,M,former

=================  ==========  =====================================================================================
column             required    meaning
=================  ==========  =====================================================================================
``id``             yes         unique case (patient) identifier, kept as a string
``image``          yes         path to the image volume (NIfTI/NRRD/...); relative paths are relative to the CSV
``time``           yes         observed time: time of death when ``event = 1``, of censoring when ``event = 0``; ≥ 0
``event``          yes         1 = death observed, 0 = right-censored
``mask``           no          ground-truth lesion mask (survival-relevant lesions only); may be blank per row
``lung_mask``      no          lung mask aligned with the image; may be blank per row
``distractor_mask`` no         mask of survival-irrelevant distractor objects (synthetic data)
``expected_time``  no          the noise-free time the generative model assigns (synthetic data), an oracle score
other columns      no          clinical covariates (``age``, ``sex``, ``smoking_status``, ...) and case metadata
=================  ==========  =====================================================================================

:func:`read_manifest` validates all of this and resolves paths, raising :class:`~survival3d.errors.InputError`
naming the file, the column and the offending row; :func:`write_manifest` writes atomically (temporary file and
rename), so a manifest on disk is always complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from survival3d.io import atomic_write
from survival3d.errors import InputError

__all__ = [
    "REQUIRED_COLUMNS",
    "PATH_COLUMNS",
    "OPTIONAL_PATH_COLUMNS",
    "read_manifest",
    "write_manifest",
]

REQUIRED_COLUMNS: tuple[str, ...] = ("id", "image", "time", "event")
OPTIONAL_PATH_COLUMNS: tuple[str, ...] = ("mask", "lung_mask", "distractor_mask")
PATH_COLUMNS: tuple[str, ...] = ("image",) + OPTIONAL_PATH_COLUMNS

_MAX_LISTED = 5  # offending rows quoted in one error message


def _rows(df: pd.DataFrame, bad: np.ndarray | pd.Series) -> str:
    """Describe the offending rows as CSV line numbers (header = line 1) with their ids."""
    idx = np.flatnonzero(np.asarray(bad))
    ids = df["id"].astype(str).to_numpy() if "id" in df.columns else None
    parts = [f"line {i + 2}" + (f" (id {ids[i]!r})" if ids is not None else "") for i in idx[:_MAX_LISTED]]
    more = f" and {len(idx) - _MAX_LISTED} more" if len(idx) > _MAX_LISTED else ""
    return ", ".join(parts) + more


def _numeric(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna() & (df[column].astype(str).str.strip() != "")
    if bad.any():
        raise InputError(f"non-numeric value(s) at {_rows(df, bad)}.", path=path, field=column)
    return values


def read_manifest(path: str | os.PathLike, *, check_files: bool = True, require_outcome: bool = True) -> pd.DataFrame:
    """Read and validate a manifest CSV.

    Args:
        path: the CSV file.
        check_files: check that every referenced file exists (disable only for manifests of files that are
            generated later).
        require_outcome: ``time`` and ``event`` must be given for every row (training, ``evaluate``). ``False``
            (``explain``, ``predict``): the columns may be missing or blank (NaN); values that are given are still
            validated.

    Returns:
        A DataFrame with ``id`` as ``str``, ``time`` as float, ``event`` as int (0/1), ``expected_time`` as float
        when present, and every path column (``image``, ``mask``, ``lung_mask``, ``distractor_mask``) as absolute
        path strings, or ``None`` where an optional path is blank. Other columns are passed through unchanged.

    Raises:
        InputError: naming the file, the column and the offending CSV lines, for a missing file or column, an empty
            manifest, blank/duplicate ids, NaN/negative/non-numeric times, events outside {0, 1}, or a referenced
            file that does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("manifest file not found.", path=path)
    try:
        df = pd.read_csv(path, dtype={"id": str}, keep_default_na=True, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"not a readable CSV file ({e}).", path=path) from e
    df.columns = [str(c).strip() for c in df.columns]
    if not require_outcome:
        for c in ("time", "event"):
            if c not in df.columns:
                df[c] = np.nan
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(
            f"missing required column(s) {missing}; the manifest has columns {list(df.columns)}.",
            path=path,
            field=missing[0],
        )
    if len(df) == 0:
        raise InputError("the manifest has no rows.", path=path)

    ids = df["id"]
    blank = ids.isna() | (ids.astype(str).str.strip() == "")
    if blank.any():
        raise InputError(f"blank id at {_rows(df, blank)}.", path=path, field="id")
    df["id"] = ids.astype(str).str.strip()
    dup = df["id"].duplicated(keep=False)
    if dup.any():
        names = sorted(set(df.loc[dup, "id"]))[:_MAX_LISTED]
        raise InputError(f"duplicate id(s) {names} at {_rows(df, dup)}.", path=path, field="id")

    time = _numeric(df, "time", path)
    given = np.ones(len(df), dtype=bool) if require_outcome else time.notna().to_numpy()
    bad = ~np.isfinite(time.to_numpy(dtype=float)) & given
    if bad.any():
        raise InputError(f"missing (NaN) or infinite time at {_rows(df, bad)}.", path=path, field="time")
    bad = time.to_numpy(dtype=float) < 0
    if bad.any():
        raise InputError(f"negative time at {_rows(df, bad)}; times must be ≥ 0.", path=path, field="time")
    df["time"] = time.astype(float)

    event = _numeric(df, "event", path)
    bad = ~event.isin([0, 1]).to_numpy() & (True if require_outcome else event.notna().to_numpy())
    if bad.any():
        raise InputError(
            f"event must be 0 (censored) or 1 (death observed); got {sorted(set(df.loc[bad, 'event'].astype(str)))} "
            f"at {_rows(df, bad)}.",
            path=path,
            field="event",
        )
    df["event"] = event.astype(int) if require_outcome else event.astype(float)

    if "expected_time" in df.columns:
        et = _numeric(df, "expected_time", path)
        bad = (et < 0).to_numpy()
        if bad.any():
            raise InputError(f"negative expected_time at {_rows(df, bad)}.", path=path, field="expected_time")
        df["expected_time"] = et.astype(float)

    root = path.resolve().parent
    for column in PATH_COLUMNS:
        if column not in df.columns:
            continue
        df[column] = _resolve_paths(df, column, root, path, required=column == "image", check_files=check_files)
    return df


def _resolve_paths(
    df: pd.DataFrame, column: str, root: Path, path: Path, *, required: bool, check_files: bool
) -> list[str | None]:
    raw = df[column]
    blank = (raw.isna() | (raw.astype(str).str.strip() == "")).to_numpy()
    if required and blank.any():
        raise InputError(f"blank path at {_rows(df, blank)}.", path=path, field=column)
    resolved: list[str | None] = []
    for value, is_blank in zip(raw.astype(str), blank):
        if is_blank:
            resolved.append(None)
            continue
        p = Path(value.strip()).expanduser()
        resolved.append(str(p if p.is_absolute() else (root / p)))
    if check_files:
        missing = np.array([r is not None and not os.path.exists(r) for r in resolved])
        if missing.any():
            first = resolved[int(np.flatnonzero(missing)[0])]
            raise InputError(
                f"{int(missing.sum())} referenced file(s) do not exist, e.g. {first} ({_rows(df, missing)}).",
                path=path,
                field=column,
            )
    return resolved


def _relative(value, root: Path):
    """A path inside ``root`` as a POSIX path relative to it; anything else unchanged."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value) == "":
        return ""
    p = Path(str(value))
    if p.is_absolute():
        try:
            return p.resolve().relative_to(root).as_posix()
        except ValueError:
            return str(p)
    return p.as_posix()


def write_manifest(df: pd.DataFrame | Iterable[dict], path: str | os.PathLike) -> Path:
    """Write a manifest CSV atomically (a temporary file in the same folder, then ``os.replace``).

    Absolute paths that lie inside the manifest's folder are written relative to it, so the folder can be moved;
    ``None`` in an optional path column is written as a blank cell. Required columns come first.

    Raises:
        ValueError: when a required column is missing (a bug in the producer, not a user error).
    """
    frame = df.copy() if isinstance(df, pd.DataFrame) else pd.DataFrame(list(df))
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"cannot write a manifest without column(s) {missing}; got {list(frame.columns)}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    for column in PATH_COLUMNS:
        if column in frame.columns:
            frame[column] = [_relative(v, root) for v in frame[column]]
    order = ["id", "image", *[c for c in OPTIONAL_PATH_COLUMNS if c in frame.columns], "time", "event"]
    frame = frame[order + [c for c in frame.columns if c not in order]]
    with atomic_write(path, newline="") as fh:
        frame.to_csv(fh, index=False)
    return path
