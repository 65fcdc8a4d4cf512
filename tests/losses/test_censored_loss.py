"""The censored and classical losses against hand-computed values (explicit sums, scipy.stats.norm)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from survival3d.losses import CensoredLoss, ClassicalLoss, censored_nll, classical_nll, discretised_gaussian_log_pmf
from survival3d.contracts import SurvivalOutput


def reference_pmf(mu: float, var: float, tmax: int) -> np.ndarray:
    """P(T = t), t = 1..tmax: the Gaussian density at the integers, renormalised (explicit sum)."""
    t = np.arange(1, tmax + 1)
    dens = norm.pdf(t, loc=mu, scale=math.sqrt(var))
    return dens / dens.sum()


def reference_censored(pred, time, event, var, tmax, alpha):
    out = []
    for mu, t, e in zip(pred, time, event):
        pmf = reference_pmf(mu, var, tmax)
        t = min(max(t, 1), tmax)
        if e:
            out.append(-math.log(pmf[int(round(t)) - 1]))
        else:
            c = min(t, tmax - 1)
            out.append(-alpha * math.log(pmf[np.arange(1, tmax + 1) > c].sum()))
    return np.array(out)


def test_log_pmf_matches_normalised_density(rng):
    tmax = int(rng.integers(5, 60))
    mu = rng.uniform(-5, tmax + 5, size=4)
    var = float(rng.uniform(0.5, 50))
    got = discretised_gaussian_log_pmf(torch.tensor(mu), var, tmax).exp().numpy()
    want = np.stack([reference_pmf(m, var, tmax) for m in mu])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_small_case_by_hand():
    # mu = 3, var = 1, tmax = 5: P(T = 3) = 1 / (1 + 2 e^{-1/2} + 2 e^{-2}); P(T > 3) = (e^{-1/2} + e^{-2}) / same.
    z = 1 + 2 * math.exp(-0.5) + 2 * math.exp(-2)
    nll = censored_nll(torch.tensor([3.0, 3.0]), torch.tensor([3.0, 3.0]), torch.tensor([1, 0]), variance=1.0,
                       tmax=5, alpha_cens=2.0, reduction="none")
    np.testing.assert_allclose(nll.numpy(), [math.log(z), -2.0 * math.log((math.exp(-0.5) + math.exp(-2)) / z)],
                               rtol=1e-6)


def test_random_cases_match_reference(rng):
    n, tmax = 12, int(rng.integers(10, 120))
    pred = rng.uniform(-10, tmax + 10, n)
    time = rng.integers(-3, tmax + 5, n).astype(float)  # includes times outside [1, tmax] (clipped)
    event = rng.integers(0, 2, n)
    var, alpha = float(rng.uniform(1, 200)), float(rng.uniform(0.5, 5))
    got = censored_nll(torch.tensor(pred), torch.tensor(time), torch.tensor(event), variance=var, tmax=tmax,
                       alpha_cens=alpha, reduction="none").numpy()
    np.testing.assert_allclose(got, reference_censored(pred, time, event, var, tmax, alpha), rtol=1e-7, atol=1e-9)
    mean = censored_nll(torch.tensor(pred), torch.tensor(time), torch.tensor(event), variance=var, tmax=tmax,
                        alpha_cens=alpha)
    assert mean.item() == pytest.approx(got.mean(), rel=1e-9)


def test_censored_at_horizon_is_finite():
    nll = censored_nll(torch.tensor([10.0]), torch.tensor([500.0]), torch.tensor([0]), variance=4.0, tmax=20)
    want = -math.log(reference_pmf(10.0, 4.0, 20)[-1])
    assert nll.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("mu", [1e6, -1e6, 3e4, 0.0])
def test_extreme_predictions_all_censored_finite(mu):
    pred = torch.full((4,), mu, requires_grad=True)
    loss = censored_nll(pred, torch.tensor([5.0, 50.0, 99.0, 100.0]), torch.zeros(4), variance=100.0, tmax=100)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


def test_censored_gradient_pushes_towards_longer_times():
    pred = torch.tensor([20.0], requires_grad=True)
    censored_nll(pred, torch.tensor([40.0]), torch.tensor([0]), variance=25.0, tmax=100).backward()
    assert pred.grad.item() < 0  # increasing mu lowers the loss of a case still alive at 40


def test_classical_by_hand(rng):
    pred, time = rng.uniform(0, 50, 6), rng.uniform(1, 50, 6)
    event = np.array([1, 0, 1, 1, 0, 0])
    var = float(rng.uniform(1, 30))
    want = np.mean([-norm.logpdf(t, mu, math.sqrt(var)) for mu, t, e in zip(pred, time, event) if e])
    got = classical_nll(torch.tensor(pred), torch.tensor(time), torch.tensor(event), variance=var)
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_classical_all_censored_is_zero_with_grad():
    pred = torch.rand(3, requires_grad=True)
    loss = classical_nll(pred, torch.rand(3), torch.zeros(3), variance=4.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros(3))


@pytest.mark.parametrize("cls", [CensoredLoss, ClassicalLoss])
def test_module_pmf_variance_and_learnable_var(cls):
    loss_fn = cls(var_init=49.0, learn_var=True, tmax=30)
    assert loss_fn.variance == pytest.approx(49.0)
    pmf = loss_fn.pmf(torch.tensor([3.0, 15.0, 40.0]))
    assert pmf.shape == (3, 30)
    torch.testing.assert_close(pmf.sum(1), torch.ones(3))
    np.testing.assert_allclose(pmf[1].detach().numpy(), reference_pmf(15.0, 49.0, 30), rtol=1e-5)
    out = SurvivalOutput(pred=torch.tensor([10.0, 20.0]), risk=-torch.tensor([10.0, 20.0]),
                         reg_loss=torch.tensor(0.25))
    res = loss_fn(out, torch.tensor([12.0, 25.0]), torch.tensor([1, 0]))
    assert res["loss"].item() == pytest.approx(res["nll"].item() + 0.25)
    res["loss"].backward()
    assert loss_fn.log_var.grad is not None and torch.isfinite(loss_fn.log_var.grad)


def test_censored_module_components():
    loss_fn = CensoredLoss(alpha_cens=3.0, var_init=16.0, tmax=40)
    pred, time, event = torch.tensor([5.0, 9.0, 30.0]), torch.tensor([7.0, 20.0, 10.0]), torch.tensor([1, 0, 1])
    res = loss_fn(SurvivalOutput(pred=pred, risk=-pred), time, event)
    per = reference_censored(pred.numpy(), time.numpy(), event.numpy(), 16.0, 40, 3.0)
    assert res["nll"].item() == pytest.approx(per.mean(), rel=1e-5)
    assert res["nll_event"].item() == pytest.approx(per[[0, 2]].mean(), rel=1e-5)
    assert res["nll_censored"].item() == pytest.approx(per[1], rel=1e-5)


@pytest.mark.parametrize("kwargs", [dict(var_init=0.0), dict(tmax=1), dict(alpha_cens=-1.0), dict(reduction="max")])
def test_censored_ill_arguments(kwargs):
    with pytest.raises(ValueError):
        CensoredLoss(**kwargs)


def test_functional_ill_arguments():
    with pytest.raises(ValueError, match="same number"):
        censored_nll(torch.rand(3), torch.rand(2), torch.ones(3), variance=1.0, tmax=10)
    with pytest.raises(ValueError, match="reduction"):
        classical_nll(torch.rand(3), torch.rand(3), torch.ones(3), variance=1.0, reduction="avg")
