"""Which scales of the Hessian blob filter (``model.dot_filter_sigmas``) tell lesion cases from healthy ones, before
any training: on a generated dataset, each case's score is the filter's maximum inside the lung mask, on the image the
model would see (the config's intensity window, size and ``data.outside_lung``), and each set of scales is scored
like a model's risk by :mod:`survival3d.bench.breakdown` (presence AUROC, AUROC per burden tertile, Spearman of
burden and score in the lesion cases).

    python -m survival3d.bench.blob_scales DATA/manifest.csv --config configs/ct1_cpu.yaml \\
        --scales 0.75 1 1.5 2 3 --max-set 2 [--out DIR]

Use a dataset that is neither trained on nor scored (its own generator seed): choosing scales on the cases a
model is later scored on would leak. Writes ``blob_scales.csv`` (one row per set of scales, best presence AUROC first)
into ``--out`` (default: the manifest's folder) and prints it. Exit 2 with one line naming the file and field when an
input is unusable.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from survival3d.bench.breakdown import BreakdownError, check_files, read_table, risk_scores
from survival3d.io import write_csv

__all__ = ["case_maxima", "main", "score_scale_sets"]


def case_maxima(manifest: Path, scales: list[float], *, image_size, intensity_window, outside_lung: str) -> pd.DataFrame:
    """One row per case: ``id`` and, per scale, the filter's maximum inside the case's lung mask."""
    from survival3d.data.transforms import deterministic_transforms
    from survival3d.models.blocks import HessianDotFilter

    frame = pd.read_csv(manifest)
    chain = deterministic_transforms(mask_keys=["lung_mask"], image_size=image_size, intensity_window=intensity_window,
                                     load=True, outside_lung=outside_lung)
    filters = {s: HessianDotFilter([s]) for s in scales}
    rows = []
    for rec in frame.to_dict("records"):
        case = chain({"image": str(manifest.parent / rec["image"]), "lung_mask": str(manifest.parent / rec["lung_mask"])})
        image = torch.as_tensor(case["image"]).float()[None]
        lung = torch.as_tensor(case["lung_mask"])[0] > 0
        row = {"id": rec["id"]}
        for s, f in filters.items():
            row[f"max_{s:g}"] = float(f(image)[0, 0][lung].max()) if lung.any() else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def score_scale_sets(manifest: pd.DataFrame, maxima: pd.DataFrame, scales: list[float], max_set: int,
                     burden: str = "lesion_volume_mm3") -> pd.DataFrame:
    """Every set of up to ``max_set`` scales: the case score is the maximum over its scales (the filter keeps the
    maximum over scales), scored by :func:`survival3d.bench.breakdown.risk_scores`."""
    d = manifest.merge(maxima, on="id", how="inner")
    rows = []
    for k in range(1, max_set + 1):
        for subset in itertools.combinations(scales, k):
            score = d[[f"max_{s:g}" for s in subset]].max(axis=1).to_numpy(np.float64)
            numbers, q1, q2 = risk_scores(d, score, burden)
            rows.append({"scales": " ".join(f"{s:g}" for s in subset), **numbers, "burden_q1": q1, "burden_q2": q2})
    table = pd.DataFrame(rows).drop(columns=["c_index", "c_index_lesion"])
    return table.sort_values("presence_auroc", ascending=False, kind="stable").reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m survival3d.bench.blob_scales", description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path, help="a generated dataset's manifest.csv (with lung_mask and the burden)")
    ap.add_argument("--config", required=True, help="the experiment config (data.image_size, intensity_window, "
                                                     "outside_lung)")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.75, 1.0, 1.5, 2.0, 3.0], help="candidate scales (voxels)")
    ap.add_argument("--max-set", type=int, default=2, help="largest number of scales in one set")
    ap.add_argument("--burden", default="lesion_volume_mm3", help="the manifest's burden column")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from survival3d.config import ExperimentConfig, load_config
    from survival3d.errors import ConfigError

    try:
        cfg = load_config(args.config, [], schema=ExperimentConfig)
        manifest = read_table(args.manifest, ("id", "time", "event", args.burden))
        check_files(manifest, args.manifest, ("image", "lung_mask"))
    except (ConfigError, BreakdownError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if any(s <= 0 for s in args.scales) or args.max_set < 1:
        print("error: --scales must be positive and --max-set >= 1", file=sys.stderr)
        return 2
    maxima = case_maxima(args.manifest, args.scales, image_size=list(cfg.data.image_size),
                         intensity_window=list(cfg.data.intensity_window), outside_lung=cfg.data.outside_lung)
    table = score_scale_sets(manifest, maxima, args.scales, args.max_set, args.burden)
    out = args.out or args.manifest.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "blob_scales.csv", table)
    except OSError as e:
        print(f"error: {out}: cannot write blob_scales.csv ({type(e).__name__}: {e.strerror or e})", file=sys.stderr)
        return 1
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(3).to_string(index=False))
    print(f"wrote {out / 'blob_scales.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
