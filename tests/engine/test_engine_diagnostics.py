"""Training diagnostics: output_diagnostics against a float64 numpy reference on fresh random maps, the
diagnostics columns of metrics.csv, and predictions that do not depend on whether diagnostics are computed."""

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from survival3d.contracts import SurvivalOutput
from survival3d.engine.experiment import run_experiment
from survival3d.engine.inference import output_diagnostics, predict_arrays
from survival3d.engine.survival_task import METRICS_COLUMNS, diagnostics


def _reference(p, loc, valid, mask, ps):
    """Per-case float64 values computed voxel by voxel with plain loops."""
    b, _, d, h, w = p.shape
    rows = []
    for k in range(b):
        pk, lk, vk = p[k, 0].astype(np.float64), loc[k, 0].astype(np.float64), valid[k, 0]
        nz = pk[pk > 0]
        ent = float(-(nz * np.log(nz)).sum())
        sd = float(np.std(lk[vk]))
        lesion = np.zeros((d, h, w), bool)
        for z, y, x in np.argwhere(mask[k, 0] > 0.5):
            lesion[z // ps, y // ps, x // ps] = True
        mass = float(pk[lesion].sum()) if lesion.any() else None
        chance = float((lesion & vk).sum() / vk.sum()) if lesion.any() else None
        rows.append({"p_entropy": ent, "p_max": float(pk.max()), "loc_sd": sd, "p_lesion": mass,
                     "p_lesion_chance": chance})
    return rows


def test_output_diagnostics_matches_reference(rng):
    b, ps, grid, size = 5, 4, (3, 3, 2), (12, 11, 7)  # the image does not fill the grid: padded cubelets
    valid = rng.random((b, 1, *grid)) < 0.7
    valid[:, 0, 0, 0, 0] = True
    logits = rng.normal(0, 2, (b, 1, *grid))
    p = np.where(valid, np.exp(logits), 0.0)
    p = p / p.reshape(b, -1).sum(1).reshape(b, 1, 1, 1, 1)
    loc = rng.uniform(5, 90, (b, 1, *grid))
    mask = np.zeros((b, 1, *size), np.float32)
    for k in range(b - 1):  # the last case has no lesion
        z, y, x = rng.integers(0, size[0]), rng.integers(0, size[1]), rng.integers(0, size[2])
        mask[k, 0, max(z - 2, 0):z + 2, max(y - 1, 0):y + 3, x:x + 2] = 1
    out = SurvivalOutput(pred=torch.zeros(b), risk=torch.zeros(b), p=torch.tensor(p, dtype=torch.float32),
                         loc=torch.tensor(loc, dtype=torch.float32), valid=torch.tensor(valid))
    batch = {"image": torch.zeros(b, 1, *size), "mask": torch.tensor(mask)}
    sums = {k: float(v) for k, v in output_diagnostics(out, batch, ps).items()}
    ref = _reference(p, loc, valid, mask, ps)
    for name in ("p_entropy", "p_max", "loc_sd"):
        assert sums[f"n_{name}"] == b
        assert sums[name] == pytest.approx(sum(r[name] for r in ref), rel=1e-5)
    with_lesion = [r["p_lesion"] for r in ref if r["p_lesion"] is not None]
    assert sums["n_p_lesion"] == len(with_lesion) == b - 1
    assert sums["p_lesion"] == pytest.approx(sum(with_lesion), rel=1e-5)
    chance = [r["p_lesion_chance"] for r in ref if r["p_lesion_chance"] is not None]
    assert sums["n_p_lesion_chance"] == b - 1
    assert sums["p_lesion_chance"] == pytest.approx(sum(chance), rel=1e-9)
    assert "p_distractor" not in sums  # no distractor masks in the batch

    means = diagnostics(torch.nn.Module(), torch.nn.Module(), sums)
    assert means["p_lesion"] == pytest.approx(np.mean(with_lesion), rel=1e-5)
    assert means["p_lesion_chance"] == pytest.approx(np.mean(chance), rel=1e-9)
    # no head parameters, no learnable var
    assert set(means) == {"p_entropy", "p_max", "loc_sd", "p_lesion", "p_lesion_chance", "pointing"}


@pytest.mark.parametrize("cell", [4, 2])  # the model's cubelets, and a map finer than them (head.map_upsample 2)
def test_pointing_is_the_head_grid_pointing_game_of_explain(rng, cell):
    """``pointing`` against what ``run.py explain`` scores: the head_grid map (p on valid cells, each cell's value
    filling its voxels — built here with numpy, independently of ``cubelets_to_image``, and cropped) through
    ``localisation_metrics``, inside a lung mask; cases whose lesion lies outside the lung and cases without a lesion
    are not counted."""
    from survival3d.metrics.localisation import localisation_metrics

    b, size = 7, (14, 12, 9)
    grid = tuple(-(-s // cell) for s in size)
    valid = rng.random((b, 1, *grid)) < 0.8
    valid[:, 0, 0, 0, 0] = True
    p = np.where(valid, np.exp(rng.normal(0, 3, (b, 1, *grid))), 0.0)
    p = (p / p.reshape(b, -1).sum(1).reshape(b, 1, 1, 1, 1)).astype(np.float32)
    lung = np.zeros((b, 1, *size), np.float32)
    lung[:, :, 1:13, 2:11, 1:8] = 1
    mask = np.zeros((b, 1, *size), np.float32)
    for k in range(b - 2):
        z, y, x = rng.integers(2, 11), rng.integers(2, 9), rng.integers(1, 6)
        mask[k, 0, z:z + 4, y:y + 3, x:x + 3] = 1
    mask[b - 2, 0, 0, 0, 0] = 1  # outside the lung: not scored
    # a case whose peak is pinned: its cell's centre voxels inside the lesion -> a hit
    valid[0, 0, 1, 1, 1] = True
    p[0] = 0
    p[0, 0, 1, 1, 1] = 1.0
    mask[0] = 0
    mask[0, 0, cell:2 * cell, cell:2 * cell, cell:2 * cell] = 1
    out = SurvivalOutput(pred=torch.zeros(b), risk=torch.zeros(b), p=torch.tensor(p), loc=None,
                         valid=torch.tensor(valid))
    batch = {"image": torch.zeros(b, 1, *size), "mask": torch.tensor(mask), "lung_mask": torch.tensor(lung)}
    sums = output_diagnostics(out, batch, 4)
    heat = np.where(valid, p, 0.0)
    for axis in (2, 3, 4):
        heat = np.repeat(heat, cell, axis=axis)
    heat = heat[:, :, : size[0], : size[1], : size[2]]
    ref = [localisation_metrics(heat[k, 0], mask[k, 0], lung_mask=lung[k, 0])["pointing_game"] for k in range(b)]
    scored = [r for r in ref if not np.isnan(r)]
    assert ref[0] == 1.0 and np.isnan(ref[-1]) and np.isnan(ref[-2]) and len(scored) == b - 2
    assert float(sums["n_pointing"]) == len(scored)
    assert float(sums["pointing"]) == sum(scored)
    assert 0 < sum(scored)


def test_uniform_and_one_hot_maps_give_closed_form_entropy():
    grid = (2, 2, 2)
    p = torch.zeros(2, 1, *grid)
    p[0] = 1 / 8
    p[1, 0, 1, 0, 1] = 1.0
    loc = torch.full((2, 1, *grid), 30.0)
    out = SurvivalOutput(pred=torch.zeros(2), risk=torch.zeros(2), p=p, loc=loc, valid=torch.ones(2, 1, *grid, dtype=torch.bool))
    s = output_diagnostics(out, {"image": torch.zeros(2, 1, 8, 8, 8)}, 4)
    assert float(s["p_entropy"]) == pytest.approx(math.log(8), rel=1e-6)  # log 8 + 0
    assert float(s["p_max"]) == pytest.approx(1 / 8 + 1.0)
    assert float(s["loc_sd"]) == 0.0
    assert output_diagnostics(SurvivalOutput(pred=torch.zeros(2), risk=torch.zeros(2)), {"image": torch.zeros(2, 1, 8, 8, 8)}) == {}


def test_metrics_csv_has_diagnostics_and_predictions_do_not_depend_on_them(tiny_cfg, components):
    cfg = tiny_cfg("loss.learn_var=true")
    run_experiment(cfg, components=components)
    run = Path(cfg.out_dir) / cfg.name
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(METRICS_COLUMNS)
    for r in rows:
        for col in ("p_entropy", "p_max", "loc_sd", "p_lesion", "var", "pointing"):
            assert r[col] != "" and math.isfinite(float(r[col])), col
        assert 0 < float(r["p_max"]) <= 1 and 0 <= float(r["p_lesion"]) <= 1 and float(r["var"]) > 0
        assert 0 <= float(r["pointing"]) <= 1
    # the same weights give the same predictions with and without the diagnostics pass
    from survival3d.engine.checkpoint import load_trained

    from survival3d.data.datasets import collate_cases

    trained = load_trained(run / "checkpoints" / "last.pt", device="cpu", components=components)
    ds = trained.dataset(ids=trained.split["val"])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False, collate_fn=collate_cases)
    a = predict_arrays(trained.model, loader, torch.device("cpu"))
    b = predict_arrays(trained.model, loader, torch.device("cpu"), diagnostics=True)
    np.testing.assert_array_equal(a["pred_time"], b["pred_time"])
    assert "diag" in b and "diag" not in a
    assert a["event"].dtype == np.int64
    # cases without an outcome (predict/explain read a manifest with blank time/event): NaN stays NaN, no junk integer
    blank = [{**case, "time": float("nan"), "event": float("nan")} for case in ds]
    loader = torch.utils.data.DataLoader(blank, batch_size=3, shuffle=False, collate_fn=collate_cases)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "invalid value encountered in cast"
        c = predict_arrays(trained.model, loader, torch.device("cpu"))
    assert np.isnan(c["event"]).all() and np.isnan(c["time"]).all()
    np.testing.assert_array_equal(c["pred_time"], a["pred_time"])
