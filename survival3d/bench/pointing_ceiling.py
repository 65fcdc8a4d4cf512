"""How well can a map that is constant on each of the model's cubelets point at a lesion? The voxel pointing game
and energy of the *best* such map, scored by the same code as ``run.py explain`` (:func:`localisation_metrics`).

    python -m survival3d.bench.pointing_ceiling DATA/manifest.csv --config configs/ct1_cpu.yaml [--out DIR]

The head's single-pass map (``head_grid``) gives each cubelet one weight, so every voxel of a cubelet is tied and the
pointing game takes the tied voxel nearest their centroid, the cubelet's centre. A lesion smaller than a cubelet is
hit only when it covers that centre, however right the map is. The best cubelet map here puts all of its mass on
the cubelet(s) holding the most lesion voxels (inside the lung mask): its ``pointing_cubelet`` and
``energy_pg_cubelet`` are 1 by construction, and its ``pointing_game`` is the ceiling of any cubelet map's, the
number to read a ``head_grid`` pointing game against. Masks are put on the model's grid by the config's own
deterministic transforms (``data.image_size``, ``data.spatial``), as ``explain`` does; the cubelet is
``model.patch_size``.

Writes ``pointing_ceiling.csv`` (one row per lesion case: ``id``, the burden, ``pointing_game``, ``energy_pg``)
into ``--out`` (default: the manifest's folder) and prints the mean over all lesion cases and per tertile of the
burden over those cases (drawn as :mod:`survival3d.bench.breakdown` draws its tertiles). Exit 2 with one line naming the file and field when an
input is unusable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from survival3d.bench.breakdown import BreakdownError, burden_tertiles, check_files, read_table
from survival3d.io import write_csv
from survival3d.metrics.localisation import cubelet_sum, cubelets_to_image, localisation_metrics

__all__ = ["best_cubelet_map", "ceiling", "main"]


def best_cubelet_map(mask: np.ndarray, lung_mask: np.ndarray | None, patch_size: int) -> np.ndarray:
    """(D, H, W) map, 1 on every voxel of the cubelet(s) holding the most lesion voxels in the valid region, else 0
    (an empty lung mask counts as the whole volume, as in :func:`localisation_metrics`)."""
    m = np.asarray(mask) > 0
    valid = np.ones_like(m) if lung_mask is None or not np.asarray(lung_mask).any() else np.asarray(lung_mask) > 0
    count = cubelet_sum((m & valid).astype(np.float64), patch_size)
    if count.max() <= 0:
        raise ValueError("the mask has no voxel in the valid region")
    best = torch.from_numpy((count == count.max()).astype(np.float64))[None, None]
    return cubelets_to_image(best, m.shape, patch_size)[0, 0].numpy().astype(np.float64)  # as head_grid is drawn


def ceiling(manifest: Path, frame: pd.DataFrame, *, patch_size: int, image_size, intensity_window=(-1000.0, 400.0),
            spatial: str = "resize", burden: str = "lesion_volume_mm3") -> pd.DataFrame:
    """One row per case whose lesion mask has voxels in the lung mask on the model's grid: ``id``, ``burden``, and
    the best cubelet map's ``pointing_game`` and ``energy_pg``."""
    from survival3d.data.transforms import deterministic_transforms

    keys = ["mask", "lung_mask"]
    chain = deterministic_transforms(mask_keys=keys, image_size=image_size, intensity_window=list(intensity_window),
                                     spatial=spatial, load=True)
    rows = []
    for rec in frame.to_dict("records"):
        case = chain({"image": str(manifest.parent / rec["image"]),
                      **{k: str(manifest.parent / rec[k]) for k in keys}})
        m, lung = (np.asarray(case[k])[0] > 0 for k in keys)
        try:
            best = best_cubelet_map(m, lung, patch_size)
        except ValueError:  # no lesion voxel in the lung mask: nothing to point at
            continue
        s = localisation_metrics(best, m, lung_mask=lung, patch_size=patch_size)
        rows.append({"id": rec["id"], burden: float(rec[burden]), "pointing_game": s["pointing_game"],
                     "energy_pg": s["energy_pg"]})
    return pd.DataFrame(rows, columns=["id", burden, "pointing_game", "energy_pg"])


def _summary(table: pd.DataFrame, burden: str) -> pd.DataFrame:
    b = table[burden].to_numpy(np.float64)
    q1, q2, tertiles = burden_tertiles(b, np.ones(len(b), bool))
    labels = {"small": f"small (< {q1:.0f})", "mid": f"mid ({q1:.0f}-{q2:.0f})", "large": f"large (>= {q2:.0f})"}
    groups = {"all": np.ones(len(b), bool), **{labels[k]: sel for k, sel in tertiles.items()}}
    return pd.DataFrame([{"cases": name, "n": int(sel.sum()),
                          "pointing_game": float(table.loc[sel, "pointing_game"].mean()) if sel.any() else np.nan,
                          "energy_pg": float(table.loc[sel, "energy_pg"].mean()) if sel.any() else np.nan}
                         for name, sel in groups.items()])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m survival3d.bench.pointing_ceiling",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path, help="a dataset's manifest.csv with mask and lung_mask columns")
    ap.add_argument("--config", required=True, help="the experiment config (data.image_size, data.spatial, "
                                                     "model.patch_size)")
    ap.add_argument("--burden", default="lesion_volume_mm3", help="the manifest's burden column")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from survival3d.config import ExperimentConfig, load_config
    from survival3d.errors import ConfigError

    try:
        cfg = load_config(args.config, [], schema=ExperimentConfig)
        frame = read_table(args.manifest, ("id", args.burden))
        check_files(frame, args.manifest, ("image", "mask", "lung_mask"))
    except (ConfigError, BreakdownError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = ceiling(args.manifest, frame, patch_size=int(cfg.model.patch_size), image_size=list(cfg.data.image_size),
                    intensity_window=list(cfg.data.intensity_window), spatial=cfg.data.spatial, burden=args.burden)
    if table.empty:
        print(f"error: {args.manifest}: no case has a lesion mask inside its lung mask", file=sys.stderr)
        return 2
    out = args.out or args.manifest.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "pointing_ceiling.csv", table)
    except OSError as e:
        print(f"error: {out}: cannot write pointing_ceiling.csv ({type(e).__name__}: {e.strerror or e})",
              file=sys.stderr)
        return 1
    print(f"the best map constant on {cfg.model.patch_size}-voxel cubelets ({args.burden} tertiles):")
    print(_summary(table, args.burden).round(3).to_string(index=False))
    print(f"wrote {out / 'pointing_ceiling.csv'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
