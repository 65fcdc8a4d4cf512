"""A survival table as a manifest with constant images: every row points at one tiny all-zero NIfTI, so the model
can only learn from the covariates (through FiLM). Used to check the pipeline on real survival tables (e.g.
lifelines' GBSG2, ``data_prep/gbsg2_time_units.py``) against a Cox model fitted on the same columns.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from survival3d.errors import InputError
from survival3d.io import write_csv, write_nifti

__all__ = ["table_manifest"]


def table_manifest(table: pd.DataFrame, out_dir: str | os.PathLike, *, time: str = "time", event: str = "event",
                   covariates: Sequence[str] = (), id_column: str | None = None, size: int = 8,
                   time_scale: float = 1.0) -> Path:
    """Write ``out_dir/constant.nii.gz`` (``size``³ zeros, 1 mm) and ``out_dir/manifest.csv``
    (``id,image,time,event`` + ``covariates``); returns the manifest's path.

    Args:
        table: one row per patient.
        time, event: the table's time and event (1 = event, 0 = censored) columns.
        covariates: columns copied to the manifest (name them in ``data.covariates.numeric``/``categorical``).
        id_column: patient ids (default: ``case0000``, ``case0001``, ... by row).
        size: edge of the constant volume in voxels.
        time_scale: divide the times by this (e.g. 30.44 for days → months).
    """
    missing = [c for c in (time, event, *covariates, *([id_column] if id_column else [])) if c not in table.columns]
    if missing:
        raise InputError(f"table has no column(s) {missing}.", field=missing[0])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_nifti(out / "constant.nii.gz", np.zeros((size,) * 3, dtype=np.float32), np.eye(4))
    ids = table[id_column].astype(str) if id_column else [f"case{i:04d}" for i in range(len(table))]
    frame = pd.DataFrame({"id": list(ids), "image": "constant.nii.gz",
                          "time": table[time].to_numpy(dtype=np.float64) / float(time_scale),
                          "event": table[event].to_numpy().astype(int)})
    for c in covariates:
        frame[c] = table[c].to_numpy()
    path = out / "manifest.csv"
    write_csv(path, frame)
    return path
