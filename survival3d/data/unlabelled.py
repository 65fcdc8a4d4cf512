"""Cases without survival labels, for self-supervised pretraining (``run.py pretrain``).

:func:`image_cases` reads the ``data`` section like :func:`survival3d.data.datasets.load_cases` but needs only the
images: a dummy level (its labels are ignored) or a manifest with at least ``id,image`` (``time``/``event`` and
other columns may be there or not; a ``lung_mask`` column is kept). The records carry placeholder labels
(``time`` NaN, ``event`` 0) so that the survival pipeline's cached, seeded datasets
(:func:`~survival3d.data.datasets.build_dataset`) serve them unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from survival3d.data.datasets import Cases, dummy_cases
from survival3d.errors import ConfigError, InputError

__all__ = ["image_cases", "read_image_manifest", "split_unlabelled"]


def read_image_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """``id,image[,lung_mask]`` of a CSV (paths relative to the CSV resolved), validated.

    Raises:
        InputError: naming the file and column: missing file or column, no rows, blank/duplicate ids, blank image
            paths, or files that do not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("manifest file not found.", path=path)
    try:
        df = pd.read_csv(path, dtype={"id": str}, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"not a readable CSV file ({e}).", path=path) from None
    df.columns = [str(c).strip() for c in df.columns]
    for col in ("id", "image"):
        if col not in df.columns:
            raise InputError(f"missing required column '{col}'; the manifest has columns {list(df.columns)}.",
                             path=path, field=col)
    if len(df) == 0:
        raise InputError("the manifest has no rows.", path=path)
    ids = df["id"].astype(str).str.strip()
    blank = df["id"].isna() | (ids == "")
    if blank.any():
        raise InputError(f"blank id at CSV line {int(np.flatnonzero(blank.to_numpy())[0]) + 2}.", path=path, field="id")
    dup = ids.duplicated(keep=False)
    if dup.any():
        raise InputError(f"duplicate id(s) {sorted(set(ids[dup]))[:5]}.", path=path, field="id")
    out = pd.DataFrame({"id": ids})
    root = path.resolve().parent
    for col in ("image", "lung_mask"):
        if col not in df.columns:
            continue
        raw = df[col]
        empty = raw.isna() | (raw.astype(str).str.strip() == "")
        if col == "lung_mask" and empty.all():
            continue
        if empty.any():
            line = int(np.flatnonzero(empty.to_numpy())[0]) + 2
            raise InputError(f"blank path at CSV line {line} (give it for every case or none).", path=path, field=col)
        resolved = [str(p if p.is_absolute() else root / p) for p in (Path(str(v).strip()).expanduser() for v in raw)]
        missing = [r for r in resolved if not os.path.exists(r)]
        if missing:
            raise InputError(f"{len(missing)} referenced file(s) do not exist, e.g. {missing[0]}.", path=path, field=col)
        out[col] = resolved
    return out


def image_cases(data_cfg) -> Cases:
    """The images named by the ``data`` section, without labels (see the module docstring)."""
    if data_cfg.source == "dummy":
        cases = dummy_cases(data_cfg.dummy)
        keep = [k for k in cases.mask_keys if k == "lung_mask"]
        records = []
        for r in cases.records:
            rec = {"id": r["id"], "image": r["image"], "time": float("nan"), "event": 0}
            rec.update({k: r[k] for k in keep})
            records.append(rec)
        return Cases(records, mask_keys=keep, load=False, source=cases.source)
    if data_cfg.source == "manifest":
        if not data_cfg.manifest:
            raise ConfigError("data.source=manifest needs data.manifest=<path to manifest.csv>.")
        df = read_image_manifest(data_cfg.manifest)
        records = [{**row, "time": float("nan"), "event": 0} for row in df.to_dict(orient="records")]
        keys = ["lung_mask"] if "lung_mask" in df.columns else []
        return Cases(records, mask_keys=keys, load=True, source=str(data_cfg.manifest))
    raise ConfigError(f"data.source must be 'dummy' or 'manifest', got '{data_cfg.source}'.")


def split_unlabelled(ids: list[str], val_frac: float, seed: int) -> dict[str, list[str]]:
    """A random train/validation split of unlabelled cases (at least one case on each side)."""
    if len(ids) < 2:
        raise ConfigError(f"pretraining needs at least 2 cases (one for validation), got {len(ids)}.")
    if not 0.0 < float(val_frac) < 1.0:
        raise ConfigError(f"data.val_frac must be in (0, 1), got {val_frac}.")
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    n_val = min(max(int(round(float(val_frac) * len(ids))), 1), len(ids) - 1)
    val = sorted(int(i) for i in order[:n_val])
    train = sorted(int(i) for i in order[n_val:])
    return {"train": [ids[i] for i in train], "val": [ids[i] for i in val]}
