"""bench.breakdown: the C-index breakdown by the generator's ground truth, against closed forms and brute-force
references on fresh random cases, and its command line (files written, one-line errors)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from survival3d.bench.breakdown import breakdown, covariate_shift, main
from survival3d.data.dummy import get_level


def _cases(rng, n=120):
    """A dummy6-like table: 40 % without a lesion, 1-3 lesions otherwise, covariates drawn as the generator does."""
    level = get_level("dummy6")
    n_les = np.where(rng.random(n) < 0.4, 0, rng.integers(1, 4, n))
    burden = np.where(n_les > 0, rng.gamma(2.0, 800.0, n) * n_les, 0.0)
    cov = [level.covariates.sample(rng) for _ in range(n)]
    frame = pd.DataFrame({"id": [f"c{i:03d}" for i in range(n)], "n_lesions": n_les, "lesion_volume_mm3": burden,
                          "age": [c["age"] for c in cov], "sex": [c["sex"] for c in cov],
                          "smoking_status": [c["smoking_status"] for c in cov]})
    s = covariate_shift(level, frame)
    frame["expected_time"] = 50.0 / (1.0 + burden / 1500.0) * np.exp(s)
    frame["time"] = frame["expected_time"] * np.exp(0.25 * rng.standard_normal(n))
    frame["event"] = (rng.random(n) < 0.6).astype(int)
    return level, frame, s


def _preds(frame, pred_time):
    return pd.DataFrame({"id": frame["id"], "pred_time": pred_time, "risk": -np.asarray(pred_time)})


def _pair_auc(pos, neg):
    diff = np.asarray(pos)[:, None] - np.asarray(neg)[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_the_oracle_as_predictions_is_the_oracle(rng):
    level, frame, _ = _cases(rng)
    res = breakdown(frame, _preds(frame, frame["expected_time"]), level=level)
    for k, v in res["model"].items():
        assert v == pytest.approx(res["oracle"][k], nan_ok=True), k
    assert res["coef_burden"] == pytest.approx(1.0, abs=1e-9) and res["coef_cov"] == pytest.approx(1.0, abs=1e-9)
    assert res["resid_sd"] < 1e-9 and all(abs(v) < 1e-9 for v in res["resid_by_n_lesions"].values())
    assert res["n"] == len(frame) and res["n_lesion"] == int((frame["n_lesions"] > 0).sum())


def test_a_model_blind_to_the_covariates_has_zero_covariate_coefficient(rng):
    level, frame, s = _cases(rng)
    pred = np.exp(np.log(frame["expected_time"]) - s)  # the lesion part only
    res = breakdown(frame, _preds(frame, pred), level=level)
    assert res["coef_cov"] == pytest.approx(0.0, abs=1e-9) and res["coef_burden"] == pytest.approx(1.0, abs=1e-9)
    assert res["model"]["c_index"] < res["oracle"]["c_index"]


def test_a_model_that_reads_the_mean_lesion_is_biased_by_lesion_count(rng):
    """pred from burden / n_lesions (one lesion's size instead of the sum): cases with more lesions are predicted to
    live longer than their burden warrants, so the mean residual rises with the lesion count."""
    level, frame, s = _cases(rng, n=300)
    per_lesion = frame["lesion_volume_mm3"] / frame["n_lesions"].clip(lower=1)
    pred = 50.0 / (1.0 + per_lesion / 1500.0) * np.exp(s)
    r = breakdown(frame, _preds(frame, pred), level=level)["resid_by_n_lesions"]
    assert r[1] < r[2] < r[3]


def test_aurocs_and_spearman_against_brute_force(rng):
    level, frame, _ = _cases(rng)
    risk = rng.normal(size=len(frame)) + (frame["lesion_volume_mm3"] > 0) * 0.8
    preds = pd.DataFrame({"id": frame["id"], "pred_time": np.exp(-risk), "risk": risk})
    res = breakdown(frame, preds, level=None)
    assert "coef_cov" not in res  # no level given: no covariate fit
    b = frame["lesion_volume_mm3"].to_numpy()
    has = b > 0
    assert res["model"]["presence_auroc"] == pytest.approx(_pair_auc(risk[has], risk[~has]))
    q1, q2 = np.quantile(b[has], [1 / 3, 2 / 3])
    assert (res["burden_q1"], res["burden_q2"]) == pytest.approx((q1, q2))
    large = has & (b >= q2)
    assert res["model"]["auroc_large"] == pytest.approx(_pair_auc(risk[large], risk[~has]))
    rb = np.argsort(np.argsort(b[has])).astype(float)
    rr = np.argsort(np.argsort(risk[has])).astype(float)
    assert res["model"]["burden_spearman"] == pytest.approx(np.corrcoef(rb, rr)[0, 1])


def test_lesion_c_index_is_nan_without_a_comparable_lesion_pair(rng):
    """The lesion cases' C is undefined, not an error, when their only event is their longest time (a 12-case CI
    draw of dummy6 hit this); the whole set's numbers are still computed."""
    _, frame, _ = _cases(rng, n=40)
    has = frame["lesion_volume_mm3"].to_numpy() > 0
    lesion_times = frame.loc[has, "time"]
    frame.loc[has, "event"] = (lesion_times == lesion_times.max()).astype(int)
    frame.loc[~has, "event"] = 1
    preds = _preds(frame, frame["expected_time"] * rng.uniform(0.8, 1.2, len(frame)))
    res = breakdown(frame, preds)
    assert np.isnan(res["model"]["c_index_lesion"]) and np.isnan(res["oracle"]["c_index_lesion"])
    assert 0.0 <= res["model"]["c_index"] <= 1.0
    frame.loc[has, "event"] = 1  # with a comparable lesion pair the C is a number again
    assert 0.0 <= breakdown(frame, preds)["model"]["c_index_lesion"] <= 1.0


def test_cli_writes_csv_and_json_and_reads_the_level(tmp_path, rng, capsys):
    level, frame, _ = _cases(rng, n=40)
    data = tmp_path / "fresh"
    data.mkdir()
    frame.to_csv(data / "manifest.csv", index=False)
    (data / "dummy_params.json").write_text(json.dumps({"level": "dummy6"}))
    _preds(frame, frame["expected_time"] * 1.1).to_csv(tmp_path / "p.csv", index=False)
    assert main([str(data / "manifest.csv"), str(tmp_path / "p.csv"), "--out", str(tmp_path / "bd")]) == 0
    table = pd.read_csv(tmp_path / "bd" / "breakdown.csv")
    assert table.loc[0, "coef_cov"] == pytest.approx(1.0, abs=1e-9)  # a constant factor changes only the intercept
    assert table.loc[0, "model_c_index"] == pytest.approx(table.loc[0, "oracle_c_index"])
    assert set(json.loads((tmp_path / "bd" / "breakdown.json").read_text())) == {str(tmp_path / "p.csv")}
    assert "model_c_index" in capsys.readouterr().out


@pytest.mark.parametrize("drop, target", [("risk", "p.csv"), ("expected_time", "manifest.csv")])
def test_cli_names_the_file_and_the_missing_column(tmp_path, rng, capsys, drop, target):
    _, frame, _ = _cases(rng, n=20)
    preds = _preds(frame, frame["expected_time"])
    (frame.drop(columns=[drop]) if target == "manifest.csv" else frame).to_csv(tmp_path / "manifest.csv", index=False)
    (preds.drop(columns=[drop]) if target == "p.csv" else preds).to_csv(tmp_path / "p.csv", index=False)
    rc = main([str(tmp_path / "manifest.csv"), str(tmp_path / "p.csv"), "--out", str(tmp_path / "bd")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and target in err[0] and drop in err[0]
    assert not (tmp_path / "bd").exists()


def _generated(tmp_path, rng, level="dummy6", n=12):
    """A small generated dataset (``run.py dummy``'s writer) and predictions made on it by ``run.py evaluate``."""
    from survival3d.data.dummy import get_level, write_dummy_dataset

    seed = int(rng.integers(1 << 30))
    manifest = write_dummy_dataset(tmp_path / "fresh", level, n=n, size=get_level(level).min_size, seed=seed,
                                   progress=False)
    frame = pd.read_csv(manifest)
    preds = _preds(frame, frame["expected_time"] * rng.uniform(0.8, 1.2, len(frame)))
    preds[["time", "expected_time"]] = frame[["time", "expected_time"]]
    return manifest, frame, preds, seed


def test_largest_lesion_ceiling_reads_only_the_biggest_lesion(tmp_path, rng):
    """dummy6's expected time sums the lesions' volumes: keeping only the largest gives the time of each case with
    at most one lesion and a longer time (less burden) for each case with several, in the closed form of the
    generator's burden model; the ceiling's C is Harrell's C of those times."""
    from lifelines.utils import concordance_index

    from survival3d.bench.breakdown import largest_lesion_times
    from survival3d.data.dummy import get_level, sample_case

    manifest, frame, preds, seed = _generated(tmp_path, rng, n=24)  # P(no case with several lesions) ~ (2/3)^24
    params = json.loads((manifest.parent / "dummy_params.json").read_text())
    largest = largest_lesion_times(frame, params)
    times = get_level("dummy6").times
    several = 0
    for i, (cid, full, one) in enumerate(zip(frame["id"], frame["expected_time"], largest)):
        case = sample_case("dummy6", i, seed=seed)
        radii = [r for _, r in case.lesions]
        if len(radii) <= 1:
            assert one == pytest.approx(full, abs=0.006), cid
        elif 1.0 < full and one < params["tmax"]:  # unclipped: T = t0 (1 + b)^-beta e^s, so the ratio of the
            b_all, b_one = times.burden(radii), times.burden(radii[:1])  # two times is ((1 + b) / (1 + b_1))^beta
            ratio = ((1 + b_all) / (1 + b_one)) ** times.beta
            assert ratio > 1 and one == pytest.approx(full * ratio, abs=0.006 * ratio), cid  # full: rounded to 0.01
            several += 1
    assert several > 0
    res = breakdown(frame, preds, level=get_level("dummy6"), largest=largest)
    ref = concordance_index(frame["time"], largest, frame["event"])
    assert res["oracle_largest_c_index"] == pytest.approx(ref, abs=1e-9)
    assert largest_lesion_times(frame, {**params, "level": "dummy1"}) is None  # one lesion at most: no sum to read


def test_cli_reports_the_ceiling_and_refuses_foreign_cases(tmp_path, rng, capsys):
    manifest, frame, preds, _ = _generated(tmp_path, rng)
    preds.to_csv(tmp_path / "p.csv", index=False)
    assert main([str(manifest), str(tmp_path / "p.csv"), "--out", str(tmp_path / "bd")]) == 0
    assert "oracle_largest_c_index" in pd.read_csv(tmp_path / "bd" / "breakdown.csv")
    # the same ids from another generator seed: predictions on other cases
    preds.assign(expected_time=preds["expected_time"][::-1].to_numpy()).to_csv(tmp_path / "q.csv", index=False)
    capsys.readouterr()
    assert main([str(manifest), str(tmp_path / "q.csv"), "--out", str(tmp_path / "bd2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "q.csv" in err[0] and "expected_time" in err[0] and not (tmp_path / "bd2").exists()
    # a manifest whose expected times are not the generator's for dummy_params.json's seed
    frame.assign(expected_time=frame["expected_time"] + 1.0).to_csv(manifest, index=False)
    assert main([str(manifest), str(tmp_path / "p.csv"), "--out", str(tmp_path / "bd3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.csv" in err[0] and "not the generator's" in err[0]


def test_cli_reads_predict_output_as_the_same_predictions(tmp_path, rng):
    """``run.py predict``'s predictions.csv (``mean_time``, a ``status`` per case) gives the numbers of the same
    predictions written as ``run.py evaluate``'s ``pred_time``; cases predict did not finish are left out."""
    _, frame, _ = _cases(rng, n=60)
    data = tmp_path / "fresh"
    data.mkdir()
    frame.to_csv(data / "manifest.csv", index=False)
    (data / "dummy_params.json").write_text(json.dumps({"level": "dummy6"}))
    pred = frame["expected_time"] * rng.uniform(0.7, 1.3, len(frame))
    done = rng.random(len(frame)) < 0.8
    _preds(frame[done], pred[done]).to_csv(tmp_path / "evaluate.csv", index=False)
    pd.DataFrame({"id": frame["id"], "status": np.where(done, "done", "failed"),
                  "mean_time": np.where(done, pred, np.nan), "median_time": np.where(done, pred.round(), np.nan),
                  "risk": np.where(done, -pred, np.nan)}).to_csv(tmp_path / "predict.csv", index=False)
    assert main([str(data / "manifest.csv"), str(tmp_path / "evaluate.csv"), str(tmp_path / "predict.csv"),
                 "--out", str(tmp_path / "bd")]) == 0
    table = pd.read_csv(tmp_path / "bd" / "breakdown.csv").drop(columns=["predictions"])
    pd.testing.assert_series_equal(table.iloc[0], table.iloc[1], check_names=False)
    assert table.loc[0, "model_c_index"] != table.loc[0, "oracle_c_index"]


def _ct1_like(rng, n=150):
    """A ct1-like table: no covariates, lesion-free cases at one time t0, the time falling with the volume."""
    has = rng.random(n) < 0.55
    burden = np.where(has, rng.uniform(30.0, 14000.0, n), 0.0)
    expected = np.where(has, 75.0 * np.exp(-0.3) / (1.0 + burden / 4000.0), 75.0)
    frame = pd.DataFrame({"id": [f"ct1_{i:05d}" for i in range(n)], "lesion_volume_mm3": burden,
                          "expected_time": expected})
    frame["time"] = frame["expected_time"] * np.exp(0.2 * rng.standard_normal(n))
    frame["event"] = (rng.random(n) < 0.7).astype(int)
    return frame


def test_the_blind_oracle_gives_small_lesions_the_lesion_free_time(rng):
    from survival3d.bench.breakdown import blind_times
    from survival3d.metrics.survival import harrell_c_index

    frame = _ct1_like(rng)
    below = float(np.quantile(frame.loc[frame["lesion_volume_mm3"] > 0, "lesion_volume_mm3"], 0.4))
    t, marked = blind_times(frame, "lesion_volume_mm3", below)
    b = frame["lesion_volume_mm3"].to_numpy()
    blind = (b > 0) & (b < below)
    assert np.array_equal(marked, blind)
    assert np.all(t[blind] == 75.0) and np.array_equal(t[~blind], frame["expected_time"].to_numpy()[~blind])
    res = breakdown(frame, _preds(frame, frame["expected_time"]), blind_below=below)
    assert res["n_blind"] == int(blind.sum()) > 0
    assert res["oracle_blind_c_index"] == pytest.approx(harrell_c_index(frame["time"], -t, frame["event"]))
    assert res["oracle_blind_c_index"] < res["oracle"]["c_index"]  # the small lesions carry part of the C
    # a threshold under every lesion changes nothing; the model reading exactly the blind times matches it
    assert breakdown(frame, _preds(frame, frame["expected_time"]), blind_below=1.0)["oracle_blind_c_index"] == \
        pytest.approx(res["oracle"]["c_index"])
    assert breakdown(frame, _preds(frame, t), blind_below=below)["model"]["c_index"] == \
        pytest.approx(res["oracle_blind_c_index"])


def test_cli_blind_below_needs_one_lesion_free_time(tmp_path, rng, capsys):
    frame = _ct1_like(rng, n=60)
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    _preds(frame, frame["expected_time"]).to_csv(tmp_path / "p.csv", index=False)
    args = [str(tmp_path / "manifest.csv"), str(tmp_path / "p.csv"), "--out", str(tmp_path / "bd")]
    assert main([*args, "--blind-below", "2000"]) == 0
    table = pd.read_csv(tmp_path / "bd" / "breakdown.csv")
    assert {"oracle_blind_c_index", "n_blind"} <= set(table.columns)
    _, dummy6, _ = _cases(rng, n=40)  # lesion-free times vary with the covariates: refused, naming the manifest
    dummy6.to_csv(tmp_path / "m6.csv", index=False)
    _preds(dummy6, dummy6["expected_time"]).to_csv(tmp_path / "p6.csv", index=False)
    rc = main([str(tmp_path / "m6.csv"), str(tmp_path / "p6.csv"), "--blind-below", "2000", "--out",
               str(tmp_path / "bd6")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "m6.csv" in err[0] and "expected_time" in err[0]
    assert not (tmp_path / "bd6").exists()
    with pytest.raises(SystemExit) as e:
        main([*args, "--blind-below", "-3"])
    assert e.value.code == 2
