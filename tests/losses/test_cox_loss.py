"""Cox partial likelihood (Efron, Breslow) against lifelines and a direct closed-form implementation."""

import math

import numpy as np
import pytest
import torch

from survival3d.losses import cox_partial_nll


def direct_partial_loglik(eta, time, event, ties):
    """Textbook partial log-likelihood: a loop over the distinct event times."""
    eta, time, event = map(np.asarray, (eta, time, event))
    ll = 0.0
    for t in np.unique(time[event == 1]):
        d_idx = np.where((time == t) & (event == 1))[0]
        risk_sum = np.exp(eta[time >= t]).sum()
        tie_sum = np.exp(eta[d_idx]).sum()
        d = len(d_idx)
        ll += eta[d_idx].sum()
        if ties == "breslow":
            ll -= d * math.log(risk_sum)
        else:
            ll -= sum(math.log(risk_sum - l / d * tie_sum) for l in range(d))
    return ll


def test_efron_matches_lifelines_rossi():
    lifelines = pytest.importorskip("lifelines")
    from lifelines.datasets import load_rossi

    df = load_rossi()
    cph = lifelines.CoxPHFitter().fit(df, "week", "arrest")
    x = df.drop(columns=["week", "arrest"]).to_numpy(dtype=float)
    eta = torch.tensor(x @ cph.params_.to_numpy())
    ll = -cox_partial_nll(eta, torch.tensor(df["week"].to_numpy(float)), torch.tensor(df["arrest"].to_numpy()),
                          ties="efron", reduction="sum")
    assert abs(ll.item() - cph.log_likelihood_) < 1e-5
    # the partial likelihood only depends on risk differences: a shift changes nothing
    ll_shift = -cox_partial_nll(eta + 3.7, torch.tensor(df["week"].to_numpy(float)),
                                torch.tensor(df["arrest"].to_numpy()), reduction="sum")
    assert abs(ll_shift.item() - cph.log_likelihood_) < 1e-5


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_matches_direct_implementation_with_ties(rng, ties):
    n = 40
    time = rng.integers(1, 8, n).astype(float)  # many ties
    event = rng.integers(0, 2, n)
    event[0] = 1
    eta = rng.normal(0, 1.5, n)
    want = direct_partial_loglik(eta, time, event, ties)
    got = -cox_partial_nll(torch.tensor(eta), torch.tensor(time), torch.tensor(event), ties=ties, reduction="sum")
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-9)
    mean = cox_partial_nll(torch.tensor(eta), torch.tensor(time), torch.tensor(event), ties=ties)
    assert mean.item() == pytest.approx(-want / event.sum(), rel=1e-10)


def test_efron_equals_breslow_without_ties(rng):
    n = 25
    time = rng.permutation(n).astype(float) + rng.uniform(0, 0.5)
    event = rng.integers(0, 2, n)
    eta = torch.tensor(rng.normal(size=n))
    a = cox_partial_nll(eta, torch.tensor(time), torch.tensor(event), ties="efron")
    b = cox_partial_nll(eta, torch.tensor(time), torch.tensor(event), ties="breslow")
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_efron_and_breslow_differ_with_ties():
    eta, time, event = torch.tensor([0.3, -0.2, 1.0]), torch.tensor([2.0, 2.0, 3.0]), torch.tensor([1, 1, 0])
    assert cox_partial_nll(eta, time, event, ties="efron") < cox_partial_nll(eta, time, event, ties="breslow")


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_all_censored_and_extreme_risks_finite(ties):
    risk = torch.tensor([1e4, -1e4, 0.0, 30.0], requires_grad=True)
    loss = cox_partial_nll(risk, torch.tensor([1.0, 2.0, 2.0, 5.0]), torch.zeros(4), ties=ties)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(risk.grad).all()
    risk.grad = None
    loss = cox_partial_nll(risk, torch.tensor([1.0, 2.0, 2.0, 5.0]), torch.tensor([1, 1, 1, 0]), ties=ties)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(risk.grad).all()


def test_ill_arguments():
    with pytest.raises(ValueError, match="ties"):
        cox_partial_nll(torch.rand(3), torch.rand(3), torch.ones(3), ties="exact")
