"""Numerical faults of issue #16 (items 12-14): the Efron Cox loss's gradient, the censored NLL metric, td-AUC where
S(t) ~ 0 and the IBS range — each checked against a float64 reference, a closed form or scikit-survival."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from survival3d.losses.functional import censored_nll_log_pmf, cox_partial_nll
from survival3d.metrics.report import survival_metrics
from survival3d.metrics import survival as sm
from survival3d.metrics.survival import censored_nll_metric as censored_nll, cumulative_dynamic_auc, pmf_to_survival


def _efron_reference(risk: torch.Tensor, time: np.ndarray, event: np.ndarray) -> torch.Tensor:
    """-log L_Efron (sum) in float64 with explicit loops over distinct event times (an independent implementation)."""
    total = torch.zeros((), dtype=torch.float64)
    for t in np.unique(time[event == 1]):
        d_idx = np.flatnonzero((time == t) & (event == 1))
        r_idx = np.flatnonzero(time >= t)
        s_r = torch.exp(risk[r_idx]).sum()
        s_d = torch.exp(risk[d_idx]).sum()
        d = len(d_idx)
        total = total + risk[d_idx].sum()
        for l in range(d):
            total = total - torch.log(s_r - l / d * s_d)
    return -total


def test_12_issue_example_has_a_finite_gradient():
    risk = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    time, event = np.array([1.0, 2.0, 2.0]), np.array([1, 1, 0])
    loss = cox_partial_nll(risk, torch.tensor(time), torch.tensor(event), reduction="sum")
    (grad,) = torch.autograd.grad(loss, risk)
    ref_risk = risk.detach().clone().requires_grad_(True)
    ref = _efron_reference(ref_risk, time, event)
    (ref_grad,) = torch.autograd.grad(ref, ref_risk)
    assert torch.isfinite(grad).all(), grad
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("trial", range(20))
def test_12_gradient_matches_float64_reference_with_ties_and_censoring_at_the_max(rng, trial):
    n = int(rng.integers(3, 40))
    time = rng.integers(1, int(rng.integers(2, 6)) + 1, n).astype(float)  # few distinct times: many ties
    event = (rng.random(n) < rng.uniform(0.2, 0.9)).astype(int)
    i, j = np.sort(rng.choice(n, 2, replace=False))
    time[[i, j]] = time.max() + 1  # only these two share the largest time
    event[i], event[j] = 1, 0  # a censored case at the largest time listed after an event tied with it (gave NaN)
    risk64 = torch.tensor(rng.normal(0, 2, n), dtype=torch.float64)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-4)):
        r = risk64.to(dtype).requires_grad_(True)
        loss = cox_partial_nll(r, torch.tensor(time, dtype=dtype), torch.tensor(event), reduction="sum")
        (grad,) = torch.autograd.grad(loss, r)
        assert torch.isfinite(grad).all(), (time, event, grad)
        ref_r = risk64.clone().requires_grad_(True)
        (ref_grad,) = torch.autograd.grad(_efron_reference(ref_r, time, event), ref_r)
        torch.testing.assert_close(grad.double(), ref_grad, rtol=tol, atol=tol)
    # and the float64 reference against central finite differences of the loss itself
    r = risk64.clone().requires_grad_(True)
    f = lambda x: cox_partial_nll(x, torch.tensor(time), torch.tensor(event), reduction="sum")  # noqa: E731
    assert torch.autograd.gradcheck(f, (r,), eps=1e-6, atol=1e-6)


def test_13_censored_nll_metric_numbers_of_the_issue():
    uniform = np.full((1, 5), 0.2)
    assert censored_nll(uniform, [2.6], [0]) == pytest.approx(-np.log(0.6), rel=1e-12)  # 0.511, not 0.916
    assert round(censored_nll(uniform, [2.6], [0]), 3) == 0.511
    # censored at the horizon (tmax = 5): capped at tmax - 1, -log P(T = 5) = 1.609, not -log 1e-12 = 27.6
    assert censored_nll(uniform, [5.0], [0]) == pytest.approx(-np.log(0.2), rel=1e-12)
    loss = censored_nll_log_pmf(torch.log(torch.tensor(uniform)), torch.tensor([5.0]), torch.tensor([0]))
    assert float(loss) == pytest.approx(-np.log(0.2), rel=1e-12)


def test_13_metric_is_the_loss_on_random_pmfs(rng):
    n, tmax = 50, int(rng.integers(5, 60))
    pmf = rng.dirichlet(np.ones(tmax), n)
    time = rng.uniform(0, tmax + 5, n)
    event = rng.integers(0, 2, n)
    alpha = float(rng.uniform(0.5, 2))
    loss = censored_nll_log_pmf(torch.log(torch.tensor(pmf)), torch.tensor(time), torch.tensor(event), alpha_cens=alpha)
    assert censored_nll(pmf, time, event, alpha) == pytest.approx(float(loss), rel=1e-12)


def _tail_pmf(log_tails: np.ndarray, tmax: int, t: int) -> np.ndarray:
    """pmfs with all mass before ``t`` except P(T > t) = exp(log_tails[i]) (tiny), spread evenly after ``t``."""
    n = len(log_tails)
    pmf = np.zeros((n, tmax))
    tail = np.exp(log_tails)
    pmf[:, t:] = (tail / (tmax - t))[:, None]
    pmf[:, 0] = 1.0 - tail  # rounds to 1.0: 1 - S(t) cannot tell the cases apart
    return pmf


def test_14_td_auc_ranks_cases_whose_survival_is_almost_zero(rng):
    n, tmax, t = 30, 20, 10
    time = rng.uniform(1, 19, n).round()
    event = np.ones(n, dtype=int)
    # true ordering: cases that die early get the smaller (more negative) log S(t)
    log_tails = -60.0 + np.argsort(np.argsort(time)) * 0.5 + rng.uniform(0, 0.1, n)
    pmf = _tail_pmf(log_tails, tmax, t)
    naive = 1.0 - pmf_to_survival(pmf)[:, t - 1]
    assert np.ptp(naive) == 0.0  # the old quantity: every case tied
    log_s = sm.log_survival_at(sm.pmf_to_log_survival(pmf), [t])[:, 0]
    np.testing.assert_allclose(log_s, np.log(np.exp(log_tails)), rtol=1e-10)
    # closed form: every case (T <= t) has a smaller log S than every control (T > t) -> AUC 1 (no censoring: weights 1)
    assert cumulative_dynamic_auc(time, event, -log_s, [t])[0] == pytest.approx(1.0)
    m = survival_metrics(pd.DataFrame({"time": time, "event": event, "pred_time": time, "risk": -time}), pmf,
                         horizons=[t])
    assert m["td_auc_mean"] == pytest.approx(1.0)


def test_14_td_auc_and_ibs_match_scikit_survival(rng):
    sksurv_metrics = pytest.importorskip("sksurv.metrics")  # GPL: a test-time reference only
    from sksurv.util import Surv

    n, tmax = 80, 40
    time = rng.integers(3, 36, n).astype(float)
    event = (rng.random(n) < 0.7).astype(int)
    event[time >= np.sort(time)[-3]] = 1  # the latest cases are events: G > 0 up to the last time (sksurv checks)
    loc = time + rng.normal(0, 5, n)
    pmf = np.exp(-0.5 * ((np.arange(1, tmax + 1)[None, :] - loc[:, None]) / 4.0) ** 2)
    pmf /= pmf.sum(1, keepdims=True)
    df = pd.DataFrame({"time": time, "event": event, "pred_time": loc, "risk": -loc})
    h = np.array([10.0, 20.0, 30.0])
    m = survival_metrics(df, pmf, horizons=h)
    y = Surv.from_arrays(event.astype(bool), time)
    est = -sm.log_survival_at(sm.pmf_to_log_survival(pmf), h)
    auc, _ = sksurv_metrics.cumulative_dynamic_auc(y, y, est, h)
    np.testing.assert_allclose([m["td_auc"][str(int(x))] for x in h], auc, rtol=1e-10, atol=1e-12)
    lo, hi = m["ibs_range"]
    assert lo >= time.min()  # from the earliest observed time, as scikit-survival integrates
    grid = np.arange(lo, hi + 1)
    surv = pmf_to_survival(pmf)[:, grid.astype(int) - 1]
    ibs = sksurv_metrics.integrated_brier_score(y, y, surv, grid)
    assert m["ibs"] == pytest.approx(ibs, rel=1e-10, abs=1e-12)
