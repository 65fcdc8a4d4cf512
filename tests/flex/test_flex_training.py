"""End-to-end: FlexNet with the `threshold` method learns scikit-learn digits, and its robustness curves behave."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from survival3d.flex.attacks import accuracy
from survival3d.flex.config import load_flex_config
from survival3d.flex.data import load_flex_data
from survival3d.flex.train import build_network, run_flex

N_EVAL = 200


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("flex_digits")
    cfg = load_flex_config("flex/base.yaml", [
        "model.logits.name=threshold", "train.epochs=10", "attack.eps_max=0.1", "attack.eps_steps=4",
        "attack.pgd_steps=5", f"attack.n_eval={N_EVAL}",
    ])
    result = run_flex(cfg, out, progress=False)
    return cfg, out, result


@pytest.mark.timeout(120)
def test_threshold_flexnet_learns_digits(trained):
    cfg, out, result = trained
    assert result["val_acc"] >= 0.90
    assert result["n_val"] == 360 and result["n_train"] == 1437
    saved = json.loads((out / "result.json").read_text())
    assert saved["val_acc"] == result["val_acc"]
    hist = pd.read_csv(out / "history.csv")
    assert sorted(hist.epoch.unique()) == list(range(1, 11)) and hist.layer.nunique() == 2
    for col in ("val_conv_ratio", "val_binariness", "val_homogeneity", "train_conv_ratio"):
        assert hist[col].between(0, 1).all()
    assert hist.groupby("epoch").train_loss.first().iloc[-1] < hist.groupby("epoch").train_loss.first().iloc[0]


def test_eps_zero_keeps_accuracy_and_accuracy_never_increases_with_eps(trained):
    cfg, out, result = trained
    data = load_flex_data(cfg.data)
    model = build_network(cfg.model, data)
    model.load_state_dict(torch.load(out / "model.pt"))
    model.eval()
    clean = accuracy(model, DataLoader(Subset(data.val, range(N_EVAL)), batch_size=256))
    for attack in ("fgsm", "pgd"):
        curve = np.asarray(result["curves"][attack])
        assert curve[0] == pytest.approx(clean, abs=1e-12)  # ε = 0 changes nothing
        # monotone up to one image (PGD's random start makes single images flip either way)
        assert np.all(np.diff(curve) <= 1 / N_EVAL + 1e-12), curve
        assert curve[-1] < clean - 0.1  # the attack is effective, not a no-op
        assert 0 <= result[f"{attack}_auc"] <= clean
    # PGD (10 steps) is at least as strong as FGSM at the largest ε, up to a couple of images
    assert result["curves"]["pgd"][-1] <= result["curves"]["fgsm"][-1] + 2 / N_EVAL
