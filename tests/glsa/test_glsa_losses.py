import numpy as np
import pytest
import torch
from torch.nn import functional as F

from survival3d.errors import ConfigError
from survival3d.glsa.losses import LOSSES, build_loss, class_balanced_weights, focal_loss




def _batch(b=17, k=7):
    return torch.randn(b, k) * 3, torch.randint(0, k, (b,))


def test_focal_equals_cross_entropy_at_gamma_zero():
    logits, y = _batch()
    assert torch.allclose(build_loss("focal", gamma=0.0)(logits, y), F.cross_entropy(logits, y), atol=1e-6)


def test_focal_closed_form():
    logits, y = _batch(9, 4)
    alpha = [0.1, 0.2, 0.3, 0.4]
    p = torch.softmax(logits, 1)[torch.arange(9), y]
    expected = (-torch.tensor(alpha)[y] * (1 - p) ** 2 * torch.log(p)).mean()
    assert torch.allclose(build_loss("focal", gamma=2.0, alpha=alpha)(logits, y), expected, atol=1e-6)
    # a scalar alpha scales the whole loss
    assert torch.allclose(build_loss("focal", gamma=2.0, alpha=0.25)(logits, y), 0.25 * focal_loss(logits, y, 2.0).mean(), atol=1e-7)


def test_focal_down_weights_easy_examples():
    logits = torch.tensor([[8.0, 0.0], [0.2, 0.0]])
    y = torch.tensor([0, 0])
    fl = focal_loss(logits, y, gamma=2.0)
    ce = F.cross_entropy(logits, y, reduction="none")
    assert (fl / ce)[0] < 1e-6 and (fl / ce)[1] > 0.2


def test_class_balanced_weights_closed_form():
    counts = [500, 40, 3, 1]
    beta = 0.99
    eff = np.array([(1 - beta**n) / (1 - beta) for n in counts])
    w = (1 / eff) / (1 / eff).sum() * len(counts)
    assert np.allclose(class_balanced_weights(counts, beta).numpy(), w, rtol=1e-6)
    assert np.allclose(class_balanced_weights(counts, 0.0).numpy(), 1.0)  # beta = 0: no re-weighting
    inv = 1 / np.array(counts, dtype=float)
    assert np.allclose(class_balanced_weights(counts, 0.999999).numpy(), inv / inv.sum() * 4, rtol=1e-3)  # beta -> 1
    with pytest.raises(ValueError, match="beta"):
        class_balanced_weights(counts, 1.0)


def test_class_balanced_loss_is_weighted_focal_and_ce():
    logits, y = _batch(12, 4)
    counts = [100, 10, 5, 1]
    w = class_balanced_weights(counts, 0.9)
    cb = build_loss("class_balanced", class_counts=counts, beta=0.9, gamma=2.0)
    assert torch.allclose(cb(logits, y), focal_loss(logits, y, 2.0, w).mean(), atol=1e-6)
    cb_ce = build_loss("class_balanced", class_counts=counts, beta=0.9, base="ce")
    expected = (w[y] * F.cross_entropy(logits, y, reduction="none")).mean()
    assert torch.allclose(cb_ce(logits, y), expected, atol=1e-6)


def test_label_smoothing_cross_entropy():
    logits, y = _batch(8, 5)
    eps = 0.1
    target = torch.full((8, 5), eps / 5)
    target[torch.arange(8), y] += 1 - eps
    expected = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(build_loss("ce", label_smoothing=eps, gamma=2.0)(logits, y), expected, atol=1e-6)


def test_registry_and_errors():
    assert set(LOSSES.keys()) == {"ce", "focal", "class_balanced"}
    with pytest.raises(ConfigError, match="class counts"):
        build_loss("class_balanced")
    with pytest.raises(ConfigError, match="Did you mean 'focal'"):
        build_loss("focla")
    with pytest.raises(ValueError, match="gamma"):
        build_loss("focal", gamma=-1.0)
