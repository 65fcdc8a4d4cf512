"""Survival metrics against lifelines, scikit-survival reference values and closed-form toy cases."""

import numpy as np
import pandas as pd
import pytest
from lifelines.utils import concordance_index
from scipy.stats import norm

from survival3d.metrics import (
    brier_score,
    censored_nll_metric,
    censoring_km,
    cumulative_dynamic_auc,
    harrell_c_index,
    integrated_brier_score,
    mae_censored_hinge,
    mae_hinge,
    mae_uncensored,
    pmf_to_survival,
    survival_metrics,
    uno_c_index,
)

# A fixed data set with tied times, tied risks and censoring at tied times. Reference values computed with
# scikit-survival 0.28.0 (concordance_index_ipcw / brier_score / cumulative_dynamic_auc with train = test data);
# scikit-survival is GPL and is only a reference here, never a dependency.
T = np.array([2, 3, 3, 5, 6, 6, 6, 8, 9, 11, 12, 12, 14, 15, 17.0])
E = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 0])
R = np.array([5, 4, 4, 3, 1, 3, 2, 2, 2, 1, 0, 1, -1, 0, -2.0])
SCALE = np.array([3, 9, 5, 4, 9, 7, 12, 8, 6, 10, 5, 12, 15, 13, 16.0])
HORIZONS = np.array([4.0, 7.0, 10.0])
SKSURV_UNO = 0.9675402627839679
SKSURV_UNO_TAU10 = 0.9669871653702596
SKSURV_BRIER = np.array([0.16835977, 0.23867069, 0.23671627])
SKSURV_AUC = np.array([0.76166667, 0.7508132, 0.83941231])


def _random_survival(rng, n):
    time = rng.integers(1, 25, n).astype(float)  # many ties
    event = (rng.random(n) < 0.6).astype(int)
    risk = rng.integers(0, 8, n).astype(float)  # tied risks
    return time, event, risk


def test_harrell_equals_lifelines_on_random_data(rng):
    for _ in range(5):
        t, e, r = _random_survival(rng, 50)
        if e.sum() == 0:
            continue
        assert harrell_c_index(t, r, e) == pytest.approx(concordance_index(t, -r, e), abs=1e-12)


def test_c_index_perfect_and_reversed(rng):
    t = rng.permutation(np.arange(1, 31)).astype(float)
    e = np.ones(30)
    e[rng.choice(30, 8, replace=False)] = 0
    e[np.argmin(t)] = 1
    assert harrell_c_index(t, -t, e) == 1.0
    assert harrell_c_index(t, t, e) == 0.0
    assert uno_c_index(t, -t, e) == 1.0
    assert uno_c_index(t, t, e) == 0.0
    assert harrell_c_index(t, np.zeros(30), e) == 0.5


def test_uno_equals_harrell_without_censoring(rng):
    t, _, r = _random_survival(rng, 60)
    e = np.ones_like(t)
    assert uno_c_index(t, r, e) == pytest.approx(harrell_c_index(t, r, e), abs=1e-12)


def test_uno_matches_scikit_survival_reference():
    assert uno_c_index(T, R, E) == pytest.approx(SKSURV_UNO, abs=1e-12)
    assert uno_c_index(T, R, E, tau=10) == pytest.approx(SKSURV_UNO_TAU10, abs=1e-12)


def test_uno_hand_computed_weights():
    # times 1(event) 2(censored) 3(event) 4(censored): censoring at 2 with {2,3,4} at risk gives G = 2/3 from t = 2;
    # the last censoring leaves nobody at risk, so G(4) = 0.
    t = np.array([1.0, 2.0, 3.0, 4.0])
    e = np.array([1, 0, 1, 0])
    knots, g = censoring_km(t, e)
    np.testing.assert_allclose(g, [1.0, 2 / 3, 2 / 3, 0.0])
    # comparable pairs: (1,2),(1,3),(1,4) weight 1; (3,4) weight 1/G(3)^2 = 9/4. Risk ranks pair (3,4) wrong.
    r = np.array([3.0, 2.0, 0.0, 1.0])
    expected = (3 * 1.0 + 0 * 9 / 4) / (3 * 1.0 + 9 / 4)
    assert uno_c_index(t, r, e) == pytest.approx(expected, abs=1e-12)


def test_censoring_km_equals_lifelines_reverse_km(rng):
    from lifelines import KaplanMeierFitter

    t = rng.uniform(1, 50, 40).round(3)  # no ties: the tie convention does not matter
    e = (rng.random(40) < 0.5).astype(int)
    knots, g = censoring_km(t, e)
    km = KaplanMeierFitter().fit(t, 1 - e)
    np.testing.assert_allclose(g, km.survival_function_at_times(knots).to_numpy(), atol=1e-12)


def test_mae_variants_closed_form():
    t = np.array([10.0, 20.0, 30.0, 40.0])
    e = np.array([1, 1, 0, 0])
    pred = np.array([12.0, 15.0, 25.0, 50.0])
    assert mae_uncensored(t, pred, e) == pytest.approx((2 + 5) / 2)
    assert mae_censored_hinge(t, pred, e) == pytest.approx((5 + 0) / 2)  # only the under-prediction costs
    assert mae_hinge(t, pred, e) == pytest.approx((2 + 5 + 5 + 0) / 4)
    assert np.isnan(mae_censored_hinge(t, pred, np.ones(4)))


def _step_pmf(times, tmax):
    pmf = np.zeros((len(times), tmax))
    pmf[np.arange(len(times)), np.asarray(times, int) - 1] = 1.0
    return pmf


def test_brier_of_perfect_step_prediction_is_zero(rng):
    t = rng.integers(1, 40, 30).astype(float)
    e = np.ones(30)
    surv = pmf_to_survival(_step_pmf(t, 50))
    h = np.arange(1, t.max())
    np.testing.assert_allclose(brier_score(t, e, surv, h), 0.0, atol=1e-15)
    assert integrated_brier_score(t, e, surv, h) == pytest.approx(0.0, abs=1e-15)


def test_brier_of_constant_half_is_quarter(rng):
    t = rng.integers(1, 40, 30).astype(float)
    surv = np.full((30, 50), 0.5)
    h = np.arange(1, t.max())
    np.testing.assert_allclose(brier_score(t, np.ones(30), surv, h), 0.25, atol=1e-12)


def test_brier_and_td_auc_match_scikit_survival_reference():
    grid = np.arange(1, 21, dtype=float)
    surv = np.exp(-grid[None, :] / SCALE[:, None])
    np.testing.assert_allclose(brier_score(T, E, surv, HORIZONS), SKSURV_BRIER, atol=1e-8)
    risk_t = 1.0 - np.exp(-HORIZONS[None, :] / SCALE[:, None])
    np.testing.assert_allclose(cumulative_dynamic_auc(T, E, risk_t, HORIZONS), SKSURV_AUC, atol=1e-8)


def test_td_auc_perfect_and_reversed(rng):
    t = rng.permutation(np.arange(1, 41)).astype(float)
    e = np.ones(40)
    h = np.array([10.0, 20.0, 30.0])
    np.testing.assert_allclose(cumulative_dynamic_auc(t, e, -t, h), 1.0)
    np.testing.assert_allclose(cumulative_dynamic_auc(t, e, t, h), 0.0)


def test_censored_nll_closed_form():
    tmax = 10
    pmf = np.full((3, tmax), 0.1)
    t = np.array([3.0, 4.0, 7.0])
    e = np.array([1, 0, 0])
    # event: -log 0.1; censored at 4: S = P(T > 4) = 0.6; at 7: 0.3; alpha = 2 weighs the censored terms
    expected = -(np.log(0.1) + 2 * np.log(0.6) + 2 * np.log(0.3)) / 3
    assert censored_nll_metric(pmf, t, e, alpha_cens=2.0) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="alpha_cens"):
        censored_nll_metric(pmf, t, e, alpha_cens=-1)


def test_survival_metrics_report(rng):
    n = 60
    expected = rng.uniform(10, 80, n)
    t = np.clip(np.rint(expected + rng.normal(0, 4, n)), 1, 100)
    e = (rng.random(n) < 0.7).astype(int)
    pred = expected + rng.normal(0, 6, n)
    pmf = norm.pdf(np.arange(1, 101)[None, :], pred[:, None], 10)
    pmf /= pmf.sum(1, keepdims=True)
    df = pd.DataFrame({"time": t, "event": e, "pred_time": pred, "risk": -pred, "expected_time": expected})
    m = survival_metrics(df, pmf, alpha_cens=1.0)
    assert m["c_index"] == pytest.approx(concordance_index(t, pred, e), abs=1e-12)
    assert m["c_index_oracle"] == pytest.approx(concordance_index(t, expected, e), abs=1e-12)
    assert 0.0 <= m["ibs"] <= 0.25 and m["nll"] > 0 and 0.5 < m["td_auc_mean"] <= 1.0
    assert set(m["brier"]) == set(m["td_auc"]) and len(m["horizons"]) >= 1
    m2 = survival_metrics(df.drop(columns="expected_time"))
    assert "c_index_oracle" not in m2 and "ibs" not in m2


@pytest.mark.parametrize(
    "fn", [lambda: harrell_c_index([1, 2], [0.1], [1, 1]), lambda: mae_uncensored([1, 2], [1, 2], [1, 2])]
)
def test_ill_arguments(fn):
    with pytest.raises(ValueError):
        fn()


@pytest.mark.parametrize("fn", [uno_c_index, harrell_c_index])
def test_all_censored_has_no_comparable_pair(fn):
    with pytest.raises(ValueError, match="comparable"):
        fn([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [0, 0, 0])


def test_censored_nll_metric_equals_training_loss(rng):
    """The evaluate metric is the ``censored`` loss's nll on the pmf that loss implies (one formula)."""
    import torch

    from survival3d.losses import CensoredLoss
    from survival3d.losses import censored_nll as censored_loss
    from survival3d.losses import discretised_gaussian_log_pmf

    tmax, n = 50, 64
    loss = CensoredLoss(alpha_cens=float(rng.uniform(0.5, 3.0)), var_init=float(rng.uniform(10, 200)), tmax=tmax)
    pred = torch.tensor(rng.uniform(-5, tmax + 5, n), dtype=torch.float64)  # float64: compare formulas, not rounding
    time = rng.uniform(0, tmax + 10, n)  # off-grid, below 1 and beyond tmax
    event = rng.integers(0, 2, n)
    # the nll term of CensoredLoss.forward
    nll = censored_loss(pred, torch.tensor(time), torch.tensor(event),
                        variance=loss.variance_tensor(), tmax=tmax, alpha_cens=loss.alpha_cens)
    pmf = discretised_gaussian_log_pmf(pred, loss.variance_tensor(), tmax).exp().numpy()  # what loss.pmf gives
    assert censored_nll_metric(pmf, time, event, alpha_cens=loss.alpha_cens) == pytest.approx(float(nll), abs=1e-6, rel=1e-6)


def test_censored_nll_off_grid_censoring_follows_the_loss():
    """Uniform pmf on 1..5 censored at 2.6: the loss (and so the metric) takes P(T > 2.6) = P(T >= 3) = 3/5, without
    rounding 2.6 to 3 (which would give P(T > 3) = 2/5); an event at 2.6 is rounded: P(T = 3) = 1/5."""
    import torch

    from survival3d.losses.functional import censored_nll_log_pmf

    pmf = np.full((1, 5), 0.2)
    assert censored_nll_metric(pmf, [2.6], [0]) == pytest.approx(-np.log(0.6), rel=1e-12)
    assert censored_nll_metric(pmf, [2.6], [0], alpha_cens=2.0) == pytest.approx(-2 * np.log(0.6), rel=1e-12)
    assert censored_nll_metric(pmf, [2.6], [1]) == pytest.approx(-np.log(0.2), rel=1e-12)
    loss = censored_nll_log_pmf(torch.log(torch.tensor(pmf)), torch.tensor([2.6]), torch.tensor([0]))
    assert float(loss) == pytest.approx(-np.log(0.6), rel=1e-12)
    # censored at or beyond tmax: capped at tmax - 1, i.e. P(T = 5) (not log 0)
    assert censored_nll_metric(pmf, [7.0], [0]) == pytest.approx(-np.log(0.2), rel=1e-12)
    # no floor: zero mass where the likelihood needs it is an infinite loss
    assert censored_nll_metric(np.array([[1.0, 0, 0, 0, 0]]), [3.0], [1]) == np.inf


def test_aggregate_folds_ignores_missing_and_nan():
    from survival3d.metrics import aggregate_folds

    folds = [{"c_index": 0.6, "n": 10, "fold": "fold0", "ok": True},
             {"c_index": float("nan"), "n": 12, "fold": "fold1"},
             {"c_index": 0.8, "n": 14, "mae": None},
             {"n": 16}]
    agg = aggregate_folds(folds)
    assert set(agg) == {"c_index", "n"}  # strings, booleans, None-only keys are no metrics
    assert agg["c_index"] == {"mean": pytest.approx(0.7), "sd": pytest.approx(np.std([0.6, 0.8], ddof=1)), "n": 2}
    assert agg["n"]["n"] == 4 and agg["n"]["sd"] == pytest.approx(np.std([10, 12, 14, 16], ddof=1))
    assert aggregate_folds(folds, keys=["c_index", "mae"]) == {"c_index": agg["c_index"]}
    assert aggregate_folds(folds[:1], keys=["c_index"])["c_index"]["sd"] == 0.0
