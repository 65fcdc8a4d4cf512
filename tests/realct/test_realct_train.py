"""Real CT → preprocess → train: the synthetic OSIC tree (copies of a real DICOM series) feeds a short training run."""

import json
import math
from pathlib import Path

import pandas as pd

from survival3d.config import ExperimentConfig, load_config
from survival3d.engine.checkpoint import load_trained
from survival3d.engine.experiment import run_experiment


def test_preprocessed_osic_trains(osic_preprocessed, tmp_path):
    assert osic_preprocessed["rc"] == 0
    manifest = pd.read_csv(osic_preprocessed["manifest"])
    assert {"lung_mask", "age", "sex", "smoking_status", "fvc_baseline"} <= set(manifest.columns)
    cfg = load_config(None, [
        f"out_dir={tmp_path / 'runs'}", "name=osic", "data.source=manifest",
        f"data.manifest={osic_preprocessed['manifest']}", "data.image_size=[48,48,48]", "data.batch_size=2",
        "data.val_frac=0.34", "data.covariates.numeric=[age,fvc_baseline]",
        "data.covariates.categorical=[sex,smoking_status]", "model.patch_size=8", "model.embed_dim=12",
        "model.num_heads=2", "model.depth=2", "head.hidden=[8]", "head.lung_frac_min=0.0", "train.epochs=2",
        "optim.warmup_epochs=0", "logging.wandb=false", "logging.progress=false",
    ], schema=ExperimentConfig)  # fmt: skip
    run_experiment(cfg)
    run = Path(cfg.out_dir) / cfg.name
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["n_train"] + final["n_val"] == len(manifest) and final["epochs"] == 2
    assert math.isfinite(final["val_loss"])
    preds = pd.read_csv(run / "predictions.csv")
    assert len(preds) == final["n_val"] and preds["pred_time"].gt(0).all()
    tm = load_trained(run)
    assert tm.model.uses_film  # the clinical covariates condition the model
    again = tm.predict(tm.dataset(osic_preprocessed["manifest"]))
    assert len(again) == len(manifest) and again["pred_time"].notna().all()
