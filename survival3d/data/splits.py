"""Patient-level k-fold splits stratified by the event indicator.

All rows of one patient (several scans) fall in the same fold (``StratifiedGroupKFold``); folds hold similar
fractions of observed events, so each validation fold has events to rank (C-index needs comparable pairs).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from survival3d.errors import ConfigError, InputError

__all__ = ["patient_kfold", "write_splits"]


def patient_kfold(
    df: pd.DataFrame, folds: int = 5, *, seed: int = 0, id_column: str = "id", group_column: str | None = None
) -> pd.DataFrame:
    """Assign a fold (0 … ``folds``-1) to every row.

    Args:
        df: a manifest (needs ``id_column`` and ``event``).
        folds: number of folds (>= 2).
        seed: shuffling seed (splits are reproducible for a given seed).
        id_column: the case id column.
        group_column: patient column when a patient has several rows (default: each id is its own patient).

    Returns:
        A frame with ``id`` and ``fold`` (and the group column when given), in the input order.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if folds < 2:
        raise ConfigError(f"folds must be >= 2, got {folds}")
    for col in [id_column, "event"] + ([group_column] if group_column else []):
        if col not in df.columns:
            raise InputError(f"missing column {col!r}", field=col)
    groups = df[group_column if group_column else id_column].astype(str)
    n_groups = groups.nunique()
    if n_groups < folds:
        raise ConfigError(f"{n_groups} patients cannot fill {folds} folds")
    event = pd.to_numeric(df["event"], errors="coerce")
    if event.isna().any() or not event.isin([0, 1]).all():
        raise InputError("event must be 0 or 1 in every row", field="event")
    per_group = event.groupby(groups).nunique()
    if (per_group > 1).any():
        # a patient's rows may differ in event only if they are separate scans; stratify on the patient's max
        event = groups.map(event.groupby(groups).max())
    fold = pd.Series(-1, index=df.index, dtype=int)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(splitter.split(df, event.astype(int), groups)):
        fold.iloc[val] = k
    out = pd.DataFrame({"id": df[id_column].astype(str).to_numpy(), "fold": fold.to_numpy()})
    if group_column:
        out[group_column] = groups.to_numpy()
    return out


def write_splits(splits: pd.DataFrame, path: str | Path) -> Path:
    """Write a splits table as CSV atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        splits.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
