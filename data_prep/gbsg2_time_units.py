"""GBSG2 (lifelines' ``load_gbsg2``, times in days) with constant images, trained in days and in months with the
default time settings (``loss.tmax: auto``), against lifelines' CoxPH on the same folds.

    PYTHONPATH=. python data_prep/gbsg2_time_units.py --out /tmp/gbsg2 [--folds 5] [--rows 686] [--epochs 40] [key=value ...]

Writes ``<out>/{days,months}/`` (manifest + run folders) and prints, per fold, Harrell's C on the validation fold of
the model in days, the model in months and CoxPH (all through :func:`survival3d.metrics.survival.harrell_c_index`),
and the range of the predicted times; ``<out>/summary.json`` holds the same numbers. Covariates go through FiLM:
age, tsize, pnodes, progrec, estrec (numeric), horTh, menostat, tgrade (categorical).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NUMERIC = ["age", "tsize", "pnodes", "progrec", "estrec"]
CATEGORICAL = ["horTh", "menostat", "tgrade"]
UNITS = {"days": 1.0, "months": 30.44}


def gbsg2(rows: int | None = None, seed: int = 0) -> pd.DataFrame:
    from lifelines.datasets import load_gbsg2

    df = load_gbsg2().rename(columns={"cens": "event"})
    if rows is not None and rows < len(df):
        df = df.sample(n=rows, random_state=seed).reset_index(drop=True)
    return df


def train_unit(df: pd.DataFrame, out: Path, unit: str, *, folds: int, epochs: int, overrides=()) -> Path:
    """Train ``folds``-fold on ``df`` with times in ``unit``; returns the run folder."""
    from survival3d.config import ExperimentConfig, load_config
    from survival3d.data.tabular import table_manifest
    from survival3d.engine.experiment import run_experiment

    manifest = table_manifest(df, out / unit / "data", time="time", event="event", covariates=NUMERIC + CATEGORICAL,
                              time_scale=UNITS[unit])
    cfg = load_config(None, [
        f"name={unit}", f"out_dir={out / unit}", "data.source=manifest", f"data.manifest={manifest}",
        f"data.time_unit={unit}", f"data.covariates.numeric={NUMERIC}", f"data.covariates.categorical={CATEGORICAL}",
        "data.image_size=[8,8,8]", "data.augment=false", "data.batch_size=32", "model.patch_size=4",
        "model.window_size=2", "optim.lr=1e-3", f"train.epochs={epochs}", "train.heatmap=false",
        "train.overwrite=true", "logging.wandb=false", "logging.progress=false", f"cv.folds={folds}", *overrides,
    ], schema=ExperimentConfig)
    run_experiment(cfg)
    return out / unit / unit


def cox_c_index(df: pd.DataFrame, train_idx, val_idx) -> float:
    """lifelines CoxPH on the training fold (one-hot categoricals), Harrell's C of its partial hazard on validation."""
    from lifelines import CoxPHFitter

    from survival3d.metrics.survival import harrell_c_index

    x = pd.get_dummies(df[NUMERIC + CATEGORICAL], columns=CATEGORICAL, drop_first=True, dtype=float)
    x["time"], x["event"] = df["time"].to_numpy(float), df["event"].to_numpy(int)
    cph = CoxPHFitter().fit(x.iloc[train_idx], duration_col="time", event_col="event")
    val = x.iloc[val_idx]
    risk = np.log(cph.predict_partial_hazard(val).to_numpy(float))
    return harrell_c_index(val["time"].to_numpy(float), risk, val["event"].to_numpy(int))


def compare(df: pd.DataFrame, out: Path, *, folds: int, epochs: int, overrides=()) -> dict:
    from survival3d.metrics.survival import harrell_c_index

    runs = {u: train_unit(df, out, u, folds=folds, epochs=epochs, overrides=overrides) for u in UNITS}
    splits = json.loads((runs["days"] / "splits.json").read_text())["splits"]
    assert splits == json.loads((runs["months"] / "splits.json").read_text())["splits"]
    ids = [f"case{i:04d}" for i in range(len(df))]
    pos = {c: i for i, c in enumerate(ids)}
    rows = []
    for k, split in enumerate(splits):
        if not all(((run / f"fold{k}") if folds > 1 else run).joinpath("predictions.csv").is_file() for run in runs.values()):
            continue  # a fold not trained (cv.fold=K)
        row = {"fold": k, "n_val": len(split["val"])}
        for u, run in runs.items():
            fold_dir = run / f"fold{k}" if folds > 1 else run
            p = pd.read_csv(fold_dir / "predictions.csv")
            row[f"c_{u}"] = harrell_c_index(p["time"].to_numpy(), -p["pred_time"].to_numpy(), p["event"].to_numpy())
            row[f"pred_{u}"] = [float(p["pred_time"].min()), float(np.median(p["pred_time"])), float(p["pred_time"].max())]
            row[f"obs_{u}"] = [float(p["time"].min()), float(np.median(p["time"])), float(p["time"].max())]
            row[f"mae_{u}"] = json.loads((fold_dir / "final_metrics.json").read_text())["mae_uncensored"]
            row[f"grid_{u}"] = json.loads((fold_dir / "final_metrics.json").read_text())["time_grid"]
        row["c_cox"] = cox_c_index(df, [pos[i] for i in split["train"]], [pos[i] for i in split["val"]])
        rows.append(row)
    summary = {"folds": rows, "mean": {k: float(np.mean([r[k] for r in rows])) for k in ("c_days", "c_months", "c_cox")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("overrides", nargs="*", help="extra config overrides for both units")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    s = compare(gbsg2(args.rows), Path(args.out), folds=args.folds, epochs=args.epochs, overrides=args.overrides)
    print("fold  C days  C months  C CoxPH  pred days (min/med/max)  pred months (min/med/max)")
    for r in s["folds"]:
        print(f"{r['fold']:>4}  {r['c_days']:.4f}  {r['c_months']:.4f}    {r['c_cox']:.4f}   "
              f"{'/'.join(f'{v:.0f}' for v in r['pred_days'])}   {'/'.join(f'{v:.1f}' for v in r['pred_months'])}")
    m = s["mean"]
    print(f"mean  {m['c_days']:.4f}  {m['c_months']:.4f}    {m['c_cox']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
