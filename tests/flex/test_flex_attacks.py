import numpy as np
import pytest
import torch
from torch import nn

from survival3d.flex.attacks import ATTACKS, attack_auc, eps_grid, fgsm, pgd, robust_accuracy_curve


def _linear(d: int) -> nn.Linear:
    """A float64 linear classifier with moderate margins: with very confident float32 logits, softmax rounds the
    other class's probability to 0 and the input gradient to rounding noise, which has no well-defined sign."""
    model = nn.Linear(d, 2).double()
    nn.init.normal_(model.weight, std=0.3)
    return model


def test_fgsm_known_answer_on_linear_model():
    """For logits W x + b and cross-entropy, ∇_x L points along ±(w1 − w0): the FGSM perturbation is
    ε·sign(w1 − w0) (label 0) or −ε·sign(w1 − w0) (label 1), and the wrong-minus-true logit margin grows by
    exactly ε‖w1 − w0‖₁."""
    d, eps = 20, 0.3
    model = _linear(d)
    x = torch.randn(16, d, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    w = (model.weight[1] - model.weight[0]).detach()
    adv = fgsm(model, x, y, eps, bounds=None)
    direction = torch.where(y[:, None] == 0, 1.0, -1.0) * w.sign()
    torch.testing.assert_close(adv - x, eps * direction)
    margin = lambda z: ((z[:, 1] - z[:, 0]) * torch.where(y == 0, 1.0, -1.0)).detach()  # noqa: E731
    expected = torch.full((16,), eps * w.abs().sum().item(), dtype=torch.float64)
    torch.testing.assert_close(margin(model(adv)) - margin(model(x)), expected)


@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_reaches_the_linf_corner_on_linear_model(random_start):
    d, eps = 12, 0.2
    model = _linear(d)
    x, y = torch.randn(8, d, dtype=torch.float64), torch.zeros(8, dtype=torch.long)
    w = (model.weight[1] - model.weight[0]).detach()
    # 5 steps of eps/2 cover 2.5 eps >= the diameter of the ball: every start ends at the maximising corner
    adv = pgd(model, x, y, eps, steps=5, step_size=eps / 2, random_start=random_start, bounds=None)
    torch.testing.assert_close(adv - x, eps * w.sign().expand_as(x))


@pytest.mark.parametrize("name", ATTACKS.keys())
def test_attacks_respect_ball_and_pixel_range(name):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(10, 1, 4, 4), torch.randint(0, 3, (10,))
    eps = 0.1
    adv = ATTACKS.get(name)(model, x, y, eps)
    assert adv.shape == x.shape and not adv.requires_grad
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


@pytest.mark.parametrize("name", ATTACKS.keys())
def test_eps_zero_is_identity(name):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(10, 1, 4, 4), torch.randint(0, 3, (10,))
    assert torch.equal(ATTACKS.get(name)(model, x, y, 0.0), x)


def test_attacks_do_not_touch_parameter_gradients():
    model = _linear(5)
    pgd(model, torch.randn(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long), 0.1, steps=3)
    assert all(p.grad is None for p in model.parameters())


def test_robust_curve_on_linear_model_matches_closed_form():
    """Binary linear classifier, no clipping: an FGSM of radius ε flips exactly the points whose margin is
    below ε‖w‖₁."""
    d = 6
    model = _linear(d)
    x = torch.randn(200, d, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct at ε = 0
        z = model(x)
        margin = (z.max(1).values - z.min(1).values)
    w1 = (model.weight[1] - model.weight[0]).abs().sum().item()
    eps = [0.0, 0.05, 0.1, 0.2, 0.4]
    curve = robust_accuracy_curve(model, [(x, y)], eps, fgsm, bounds=None)
    expected = [(margin > e * w1).float().mean().item() for e in eps]
    assert curve[0] == 1.0
    np.testing.assert_allclose(curve, expected, atol=1 / 200)


def test_attack_auc_closed_forms():
    eps = eps_grid(0.1, 4)
    np.testing.assert_allclose(eps, [0, 0.025, 0.05, 0.075, 0.1])
    assert attack_auc(eps, [0.8] * 5) == pytest.approx(0.8)
    assert attack_auc(eps, np.linspace(1, 0, 5)) == pytest.approx(0.5)
    assert attack_auc([0, 1, 3], [1, 1, 0]) == pytest.approx((1 + 1) / 3)


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda: attack_auc([0.0], [1.0]), ">= 2 increasing eps"),
        (lambda: attack_auc([0.0, 0.1], [1.0]), ">= 2 increasing eps"),
        (lambda: attack_auc([0.1, 0.0], [1.0, 0.5]), ">= 2 increasing eps"),
        (lambda: eps_grid(-1, 3), "eps_max >= 0"),
        (lambda: eps_grid(0.1, 0), "n_steps >= 1"),
        (lambda: fgsm(nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), -0.1), "eps must be"),
        (lambda: pgd(nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), 0.1, steps=0), "steps"),
    ],
)
def test_bad_arguments(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_surrogate_gradients_keep_outputs_and_unmask_saturated_gradients():
    from survival3d.flex.attacks import surrogate_gradients
    from survival3d.flex.layer import FlexLayer
    from survival3d.flex.masking import SharpSigmoid

    # logits = pool + 1 >= 1 everywhere on [0, 1] inputs: σ(50·z) is exactly 1, so no gradient reaches τ
    layer = FlexLayer(2, logits={"name": "threshold", "init": -1.0}, masking={"name": "sharp_sigmoid", "k": 50})
    x = torch.rand(3, 2, 6, 6)
    plain = layer(x)
    plain.sum().backward()
    assert layer.logits.tau.grad.abs().sum() == 0
    layer.zero_grad()
    with surrogate_gradients(nn.Sequential(layer), k=1.0):
        bpda = layer(x)
        bpda.sum().backward()
    assert torch.equal(bpda, plain)
    assert layer.logits.tau.grad.abs().sum() > 0
    assert isinstance(layer.masking, SharpSigmoid)  # restored
    with pytest.raises(ValueError, match="surrogate k must be > 0"):
        with surrogate_gradients(layer, k=0):
            pass
