import json
import time

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, recall_score

from survival3d.config import load_config
from survival3d.glsa.config import GLSAConfig
from survival3d.glsa.data import build_dataset
from survival3d.glsa.trainer import classification_metrics, load_classifier, make_run_name, train




def test_classification_metrics_match_sklearn(rng):
    y = rng.integers(0, 5, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 5, 300))
    m = classification_metrics(y, p, 6)  # class 5 never occurs
    assert m["accuracy"] == pytest.approx((y == p).mean())
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, labels=range(6), average="macro", zero_division=0))
    assert np.allclose(m["per_class_recall"], recall_score(y, p, labels=range(6), average=None, zero_division=0))
    assert np.array_equal(m["confusion_matrix"], confusion_matrix(y, p, labels=range(6)))


def test_run_name_pattern():
    assert make_run_name("exp", "learnable_gate", {"name": "progressive", "mode": "rezero"}, "CBAM") == "exp_learnable_gate_progressive_cbam"


@pytest.mark.slow
def test_learns_sklearn_digits(tmp_path):
    """A real create_model GLSA network (narrow ResNet-18 + CBAM) on scikit-learn's digits 0-6 (8x8 upsampled to
    32x32): >= 90% validation accuracy on CPU in under two minutes."""
    cfg = load_config("configs/glsa/digits.yaml", [f"train.output_dir={tmp_path}", "train.seed=" + str(int(time.time()) % 1000)],
                      schema=GLSAConfig)
    t0 = time.perf_counter()
    res = train(cfg)
    elapsed = time.perf_counter() - t0
    assert res["accuracy"] >= 0.90, res
    assert elapsed < 120, elapsed
    run = tmp_path / "digits_resnet18_original_original_cbam"
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3, 4]
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    saved = json.loads((run / "results.json").read_text())
    assert saved["accuracy"] == res["accuracy"] and saved["params"] > 0 and saved["device"] == "cpu"
    ckpt = torch.load(run / "best.pt", weights_only=False)
    assert ckpt["epoch"] == saved["best_epoch"] and ckpt["class_names"] == [str(i) for i in range(7)]
    for png in ("confusion_matrix.png", "gradcam.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"
    # the checkpoint alone rebuilds the model and reproduces the validation accuracy
    model, classes, saved_cfg = load_classifier(run)
    data = build_dataset("digits", image_size=saved_cfg.data.image_size, split_seed=saved_cfg.data.split_seed)
    with torch.no_grad():
        pred = model(torch.stack([data.val[i][0] for i in range(len(data.val))])).argmax(1).numpy()
    assert (pred == data.val_labels).mean() == pytest.approx(res["accuracy"])


def test_early_stopping_and_sgd_plateau(tmp_path):
    cfg = load_config(
        "configs/glsa/digits.yaml",
        [f"train.output_dir={tmp_path}", "data.max_samples=60", "model.width=8", "model.num_heads=2", "optim.name=sgd",
         "optim.lr=1e-4", "optim.scheduler=plateau", "train.epochs=6", "train.early_stopping_patience=2",
         "train.monitor=loss", "train.gradcam_images=0", "loss.name=focal"],
        schema=GLSAConfig,
    )
    res = train(cfg)
    # training stops `patience` epochs after the best one (or at the last epoch)
    assert res["epochs_run"] == min(6, res["best_epoch"] + 2)
    assert len(pd.read_csv(tmp_path / res["run_name"] / "metrics.csv")) == res["epochs_run"]
    assert not (tmp_path / res["run_name"] / "gradcam.png").exists()
