"""Patient-level train/validation splits, stratified by the event indicator.

All scans of one patient (``groups``; by default every id is its own patient) land on the same side of a split, so
no patient is seen in training and validation at once. Strata are the patients' event status (a patient counts
as an event if any of their scans is), so censoring rates match between sides. Splits are seeded and therefore
reproducible; the ids are saved with every run (``splits.json`` and the checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from survival3d.errors import ConfigError, InputError
from survival3d.io import atomic_path

__all__ = ["train_val_split", "kfold_splits", "patient_kfold", "write_splits", "read_splits"]


def _patients(ids: Sequence[str], events: Sequence[int], groups: Sequence[str] | None):
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("case ids must be unique to split them.")
    if len(events) != len(ids) or (groups is not None and len(groups) != len(ids)):
        raise ValueError(f"ids ({len(ids)}), events ({len(events)}) and groups must have the same length.")
    groups = ids if groups is None else [str(g) for g in groups]
    members: dict[str, list[str]] = {}
    status: dict[str, int] = {}
    for i, e, g in zip(ids, events, groups):
        members.setdefault(g, []).append(i)
        status[g] = max(status.get(g, 0), int(e))
    return members, status


def _strata(status: dict[str, int], stratify: bool, rng: np.random.Generator) -> list[list[str]]:
    keys = sorted(status)
    strata = [[g for g in keys if status[g] == s] for s in (0, 1)] if stratify else [keys]
    return [list(rng.permutation(s)) for s in strata if s]


def train_val_split(
    ids: Sequence[str],
    events: Sequence[int],
    *,
    val_frac: float,
    seed: int = 0,
    groups: Sequence[str] | None = None,
    stratify: bool = True,
) -> tuple[list[str], list[str]]:
    """Split case ids into (train, val) at the patient level.

    Each event stratum contributes ``round(val_frac * n_patients_in_stratum)`` patients to validation (at least one
    when the stratum has two or more patients), so both sides keep the censoring rate.
    """
    if not 0.0 < val_frac < 1.0:
        raise ValueError(f"val_frac must be in (0, 1), got {val_frac}.")
    members, status = _patients(ids, events, groups)
    if len(members) < 2:
        raise ValueError(f"need at least 2 patients to split, got {len(members)}.")
    rng = np.random.default_rng(seed)
    val_groups: set[str] = set()
    for stratum in _strata(status, stratify, rng):
        k = int(round(val_frac * len(stratum)))
        if len(stratum) >= 2:
            k = min(max(k, 1), len(stratum) - 1)
        val_groups.update(stratum[:k])
    order = {i: n for n, i in enumerate(str(i) for i in ids)}
    val = sorted((i for g in val_groups for i in members[g]), key=order.get)
    train = sorted((i for g in members if g not in val_groups for i in members[g]), key=order.get)
    return train, val


def kfold_splits(
    ids: Sequence[str],
    events: Sequence[int],
    *,
    folds: int,
    seed: int = 0,
    groups: Sequence[str] | None = None,
    stratify: bool = True,
) -> list[tuple[list[str], list[str]]]:
    """``folds`` (train, val) pairs whose validation sides are disjoint and together cover every case.

    Patients of each event stratum are shuffled and dealt round-robin onto the folds (the deal continues across
    strata, so fold sizes differ by at most one patient).
    """
    if folds < 2:
        raise ValueError(f"k-fold needs folds >= 2, got {folds}.")
    members, status = _patients(ids, events, groups)
    if len(members) < folds:
        raise ValueError(f"cannot make {folds} folds from {len(members)} patients.")
    rng = np.random.default_rng(seed)
    assign: dict[str, int] = {}
    n = 0
    for stratum in _strata(status, stratify, rng):
        for g in stratum:
            assign[g] = n % folds
            n += 1
    order = [str(i) for i in ids]
    group_of = {i: g for g, ms in members.items() for i in ms}
    out = []
    for k in range(folds):
        val = [i for i in order if assign[group_of[i]] == k]
        train = [i for i in order if assign[group_of[i]] != k]
        out.append((train, val))
    return out


def patient_kfold(
    df: pd.DataFrame, folds: int = 5, *, seed: int = 0, id_column: str = "id", group_column: str | None = None
) -> pd.DataFrame:
    """Assign a fold (0 … ``folds`` − 1) to every row of a manifest, as :func:`kfold_splits` does for training.

    Args:
        df: a manifest with ``id_column`` and ``event``.
        folds: number of folds (>= 2).
        seed: shuffling seed; the same seed gives the folds ``cv.folds`` training uses.
        id_column: the case id column.
        group_column: the patient column when a patient has several rows (default: every id is its own patient).

    Returns:
        A frame with ``id`` and ``fold`` (and the group column when given), in the input order.
    """
    if folds < 2:
        raise ConfigError(f"folds must be >= 2, got {folds}.")
    for col in [id_column, "event"] + ([group_column] if group_column else []):
        if col not in df.columns:
            raise InputError(f"missing column {col!r}", field=col)
    event = pd.to_numeric(df["event"], errors="coerce")
    if event.isna().any() or not event.isin([0, 1]).all():
        raise InputError("event must be 0 or 1 in every row", field="event")
    ids = df[id_column].astype(str).tolist()
    groups = df[group_column].astype(str).tolist() if group_column else None
    n_groups = len(set(groups if groups is not None else ids))
    if n_groups < folds:
        raise ConfigError(f"{n_groups} patients cannot fill {folds} folds.")
    try:
        pairs = kfold_splits(ids, event.astype(int).tolist(), folds=folds, seed=seed, groups=groups)
    except ValueError as e:
        raise InputError(str(e), field=id_column) from None
    fold_of = {i: k for k, (_, val) in enumerate(pairs) for i in val}
    out = pd.DataFrame({"id": ids, "fold": [fold_of[i] for i in ids]})
    if group_column:
        out[group_column] = groups
    return out


def write_splits(splits: pd.DataFrame, path: str | Path) -> Path:
    """Write a splits table as CSV atomically (temporary file + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        splits.to_csv(tmp, index=False)
    return path


def read_id_table(path: str | Path, *, field: str, columns: Sequence[str] = ("id",), what: str = "file",
                  duplicate_hint: str = "") -> pd.DataFrame:
    """An id-keyed CSV (splits, covariates): one-line :class:`InputError` naming the file for a missing file, an
    unreadable CSV, a missing column or duplicate ids; ``id`` is read as stripped text.

    Args:
        path: the CSV.
        field: the option or config key the path came from (named when the file is missing).
        columns: columns that must exist.
        what: what the file is, for the messages.
        duplicate_hint: appended to the duplicate-id message.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found.", path=path, field=field)
    try:
        df = pd.read_csv(path, dtype={"id": str}, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"not a readable CSV file ({e}).", path=path) from None
    for col in columns:
        if col not in df.columns:
            raise InputError(f"missing column {col!r} (columns: {list(df.columns)}).", path=path, field=col)
    df["id"] = df["id"].astype(str).str.strip()
    dup = sorted(set(df.loc[df["id"].duplicated(), "id"]))
    if dup:
        hint = f": {duplicate_hint}" if duplicate_hint else ""
        raise InputError(f"duplicate id(s) {dup[:5]}{hint}.", path=path, field="id")
    return df


def read_splits(path: str | Path, ids: Sequence[str]) -> dict[str, int]:
    """Read a splits CSV (``id,fold``, as :func:`patient_kfold` / ``data_prep/make_splits.py`` write it) for the cases
    ``ids``: ``{id: fold}`` with folds numbered 0 … k − 1.

    Raises:
        InputError: missing file or column, blank/non-integer folds, folds not numbered 0 … k − 1, duplicate ids, ids
            that are not cases of the data, or cases the file does not list (naming the file, the column and ids).
    """
    path = Path(path)
    df = read_id_table(path, field="data.splits", columns=("id", "fold"), what="splits file",
                       duplicate_hint="every case belongs to one fold")
    fold = pd.to_numeric(df["fold"], errors="coerce")
    bad = fold.isna() | (fold != fold.round())
    if bad.any():
        raise InputError(f"non-integer fold for id(s) {df.loc[bad, 'id'].tolist()[:5]}.", path=path, field="fold")
    fold = fold.astype(int)
    k = int(fold.max()) + 1
    if sorted(set(fold)) != list(range(k)):
        raise InputError(f"folds must be numbered 0 … k-1, got {sorted(set(fold))}.", path=path, field="fold")
    known = {str(i) for i in ids}
    unknown = [i for i in df["id"] if i not in known]
    if unknown:
        raise InputError(f"{len(unknown)} id(s) are not cases of the data, e.g. {unknown[:5]}.", path=path, field="id")
    listed = set(df["id"])
    absent = [str(i) for i in ids if str(i) not in listed]
    if absent:
        raise InputError(f"{len(absent)} case(s) of the data are not in the splits file, e.g. {absent[:5]}.",
                         path=path, field="id")
    return dict(zip(df["id"], fold.tolist()))
