"""`run.py evaluate` end to end with the engine/data glue replaced by synthetic predictions."""

import json

import numpy as np
import pandas as pd
import pytest
from lifelines.utils import concordance_index
from scipy.stats import norm

from survival3d.cli import main
from survival3d.time_grid import TimeGrid


def _fake_predictions(rng, n=40):
    expected = rng.uniform(10, 80, n)
    t = np.clip(np.rint(expected + rng.normal(0, 4, n)), 1, 100)
    e = (rng.random(n) < 0.7).astype(int)
    pred = expected + rng.normal(0, 8, n)
    pmf = norm.pdf(np.arange(1, 101)[None, :], pred[:, None], 10)
    pmf /= pmf.sum(1, keepdims=True)
    df = pd.DataFrame({"id": [f"c{i}" for i in range(n)], "time": t, "event": e, "pred_time": pred, "risk": -pred,
                       "expected_time": expected})
    return df, pmf


@pytest.fixture
def setup(tmp_path, monkeypatch, rng):
    calls = []

    def predict_manifest(checkpoint, manifest):
        calls.append(checkpoint)
        df, pmf = _fake_predictions(rng)
        return df, pmf, 1.0, TimeGrid(tmax=pmf.shape[1])

    monkeypatch.setattr("survival3d.cli.evaluate.predict_manifest", predict_manifest)
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image,time,event\n")
    return tmp_path, manifest, calls


def test_single_checkpoint(setup):
    tmp, manifest, _ = setup
    (tmp / "model.pt").write_bytes(b"x")
    out = tmp / "eval"
    assert main(["evaluate", "--checkpoint", str(tmp / "model.pt"), "--data", str(manifest), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    p = pd.read_csv(out / "predictions.csv")
    assert m["c_index"] == pytest.approx(concordance_index(p["time"], p["pred_time"], p["event"]), abs=1e-12)
    assert m["c_index_oracle"] == pytest.approx(concordance_index(p["time"], p["expected_time"], p["event"]))
    for k in ("c_index_uno", "mae_uncensored", "mae_censored_hinge", "ibs", "td_auc_mean", "nll"):
        assert isinstance(m[k], float), k
    for f in ("pred_vs_observed", "km_risk_tertiles", "calibration"):
        assert (out / "figures" / f"{f}.png").stat().st_size > 0


def test_kfold_run_dir_aggregates_mean_and_sd(setup):
    tmp, manifest, calls = setup
    run = tmp / "run"
    for k in (0, 1, 2):
        (run / f"fold{k}").mkdir(parents=True)
    out = tmp / "eval"
    rc = main(["evaluate", "--checkpoint", str(run), "--data", str(manifest), "--out", str(out), "--no-figures"])
    assert rc == 0 and [c.name for c in calls] == ["fold0", "fold1", "fold2"]
    m = json.loads((out / "metrics.json").read_text())
    per_fold = [f["c_index"] for f in m["folds"]]
    assert m["aggregate"]["c_index"]["mean"] == pytest.approx(np.mean(per_fold))
    assert m["aggregate"]["c_index"]["sd"] == pytest.approx(np.std(per_fold, ddof=1))
    for k in (0, 1, 2):
        fold = json.loads((out / f"fold{k}" / "metrics.json").read_text())
        assert fold["c_index"] == pytest.approx(per_fold[k])
    assert set(pd.read_csv(out / "predictions.csv")["fold"]) == {"fold0", "fold1", "fold2"}


def test_missing_inputs_fail_cleanly(setup, capsys):
    tmp, manifest, _ = setup
    out = tmp / "eval"
    assert main(["evaluate", "--checkpoint", str(tmp / "none.pt"), "--data", str(manifest), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.pt" in err[0] and not out.exists()


def test_fold_checkpoints_sorts_numerically_and_falls_back_to_single(tmp_path):
    from survival3d.cli.evaluate import fold_checkpoints
    from survival3d.errors import InputError

    for name in ("fold10", "fold_2", "fold-1", "foldx", "checkpoints"):
        (tmp_path / "run" / name).mkdir(parents=True)
    assert [n for n, _ in fold_checkpoints(tmp_path / "run")] == ["fold-1", "fold_2", "fold10"]
    (tmp_path / "single").mkdir()
    assert fold_checkpoints(tmp_path / "single") == [("model", tmp_path / "single")]
    with pytest.raises(InputError, match="checkpoint"):
        fold_checkpoints(tmp_path / "missing")


def test_bad_horizons_are_a_config_error(setup, capsys):
    tmp, manifest, _ = setup
    (tmp / "model.pt").write_bytes(b"x")
    rc = main(["evaluate", "--checkpoint", str(tmp / "model.pt"), "--data", str(manifest), "--out", str(tmp / "e"),
               "--horizons", "10,abc"])
    assert rc == 2 and "--horizons" in capsys.readouterr().err and not (tmp / "e").exists()
