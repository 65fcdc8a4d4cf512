import pytest
import torch

from survival3d.errors import ConfigError
from survival3d.flex.masking import MASKING


@pytest.mark.parametrize("name", MASKING.keys())
def test_mask_in_unit_interval_same_shape(name):
    z = torch.randn(3, 4, 5, 6) * 3
    m = MASKING.build(name)(z)
    assert m.shape == z.shape and m.dtype == z.dtype
    assert (m >= 0).all() and (m <= 1).all()


@pytest.mark.parametrize("name", MASKING.keys())
def test_mask_is_monotone_in_logits_when_deterministic(name):
    f = MASKING.build(name).eval()
    z = torch.sort(torch.randn(1000) * 4).values
    m = f(z)
    assert (m.diff() >= 0).all()
    assert m[z > 3].min() > 0.99 and m[z < -3].max() < 0.01


def test_sharp_sigmoid_formula_and_k():
    z = torch.randn(100)
    for k in (1.0, 5.0, 50.0):
        torch.testing.assert_close(MASKING.build({"name": "sharp_sigmoid", "k": k})(z), torch.sigmoid(k * z))
    assert MASKING.build("sharp_sigmoid").k == 50.0  # the research baseline


def test_sharp_sigmoid_large_k_masks_gradients():
    """The suspicion the masking plan tests: with k = 50 almost all logits of size ~1 get no gradient."""
    z = (torch.randn(10000) + 1.0).requires_grad_(True)
    for k, max_live in ((50.0, 0.15), (1.0, 1.0)):
        z.grad = None
        MASKING.build({"name": "sharp_sigmoid", "k": k})(z).sum().backward()
        live = (z.grad.abs() > 1e-3).float().mean().item()
        assert live <= max_live
    assert live > 0.99  # k = 1: every logit still receives gradient


@pytest.mark.parametrize("name", ["ste", "stochastic"])
def test_straight_through_forward_binary_backward_sigmoid(name):
    f = MASKING.build({"name": name, "k": 2.0}).train()
    z = (torch.randn(500) * 2).requires_grad_(True)
    m = f(z)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    m.sum().backward()
    s = torch.sigmoid(2.0 * z.detach())
    torch.testing.assert_close(z.grad, 2.0 * s * (1 - s))


def test_ste_forward_is_exact_threshold():
    z = torch.randn(1000)
    m = MASKING.build("ste")(z)
    assert torch.equal(m, (z >= 0).float())


def test_stochastic_rounding_train_random_eval_deterministic():
    f = MASKING.build("stochastic")
    z = torch.zeros(20000)  # p = 1/2 everywhere
    f.train()
    frac = f(z).mean().item()
    assert 0.45 < frac < 0.55  # Bernoulli(1/2): sd of the mean is 0.0035
    z = torch.randn(1000)
    f.eval()
    assert torch.equal(f(z), (z >= 0).float())
    # unbiased in expectation: mean over draws -> sigmoid(k z)
    f.train()
    z = torch.randn(50)
    draws = torch.stack([f(z) for _ in range(4000)]).mean(0)
    torch.testing.assert_close(draws, torch.sigmoid(z), atol=0.05, rtol=0)


def test_hard_sigmoid_linear_region_and_zero_gradient_when_saturated():
    f = MASKING.build({"name": "hard_sigmoid", "k": 2.0})
    z = torch.tensor([-5.0, -1.0, -0.5, 0.0, 0.5, 1.0, 5.0], requires_grad=True)
    m = f(z)
    torch.testing.assert_close(m, torch.tensor([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]))
    m.sum().backward()
    # gradient k/4 in the open linear region |z| < 2/k, exactly zero where saturated (stopped by design)
    assert z.grad[[2, 3, 4]].eq(0.5).all() and z.grad[[0, 6]].eq(0).all()


@pytest.mark.parametrize("name", MASKING.keys())
def test_bad_k(name):
    with pytest.raises(ValueError, match="k must be > 0"):
        MASKING.build({"name": name, "k": 0.0})


def test_unknown_masking_did_you_mean():
    with pytest.raises(ConfigError, match="Did you mean 'sharp_sigmoid'"):
        MASKING.build("sharp_sigmod")
