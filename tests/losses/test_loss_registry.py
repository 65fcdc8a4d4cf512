"""Every registered loss: built from config, finite on an all-censored batch, gradients reach pred and reg_loss."""

import pytest
import torch

from survival3d.config import ExperimentConfig, load_config
from survival3d.errors import ConfigError
from survival3d.losses import LOSSES, build_loss
from survival3d.contracts import SurvivalOutput


def _out(pred, reg=None):
    return SurvivalOutput(pred=pred, risk=-pred, reg_loss=reg)


@pytest.mark.parametrize("name", LOSSES.keys())
def test_build_from_config_and_contract(name):
    cfg = load_config(None, [f"loss.name={name}", "loss.tmax=60"], schema=ExperimentConfig)
    loss_fn = build_loss(cfg.loss)
    pred = (torch.rand(6) * 50 + 5).requires_grad_()
    reg = torch.tensor(0.5, requires_grad=True)
    res = loss_fn(_out(pred, reg), torch.randint(1, 60, (6,)).float(), torch.tensor([1, 0, 1, 1, 0, 1]))
    assert {"loss", "nll"} <= set(res)
    assert res["loss"].ndim == 0 and torch.isfinite(res["loss"])
    assert res["loss"].item() == pytest.approx(res["nll"].item() + 0.5, rel=1e-6)
    res["loss"].backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0 and reg.grad.item() == 1.0
    pmf = loss_fn.pmf(pred.detach())
    assert pmf.shape == (6, 60) and torch.allclose(pmf.sum(1), torch.ones(6))
    assert isinstance(loss_fn.variance, float) and loss_fn.variance > 0


@pytest.mark.parametrize("name", LOSSES.keys())
def test_all_censored_batch_finite(name):
    loss_fn = build_loss({"name": name})
    pred = torch.tensor([1e5, -3e3, 40.0, 0.0], requires_grad=True)
    res = loss_fn(_out(pred), torch.tensor([3.0, 80.0, 150.0, 1.0]), torch.zeros(4, dtype=torch.long))
    res["loss"].backward()
    assert torch.isfinite(res["loss"]) and torch.isfinite(pred.grad).all()


def test_build_loss_errors_and_unused_keys(caplog):
    with pytest.raises(ConfigError, match="cox_efron"):
        build_loss({"name": "cox_efrn"})
    with pytest.raises(ConfigError, match="var_init"):
        build_loss({"name": "censored", "var_init": -1.0})
    with caplog.at_level("WARNING"):
        build_loss({"name": "cox_breslow", "alpha_cens": 5.0})
    assert "alpha_cens" in caplog.text
