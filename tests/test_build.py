"""survival3d.build: the model builder reads only model/head; build_survival_model adds data.image_size."""

import pytest
import torch

from survival3d.build import build_survival_loss, build_survival_model
from survival3d.config import ExperimentConfig, load_config
from survival3d.contracts import CovariateSpec
from survival3d.losses import build_loss
from survival3d.models import build_model

SMALL = ["model.embed_dim=12", "model.num_heads=2", "model.pos_embed=learnable"]


def _cfg(*overrides):
    return load_config(None, [*SMALL, *overrides], schema=ExperimentConfig)


def test_build_model_does_not_read_the_data_section():
    with pytest.raises(ValueError, match="img_size"):
        build_model(_cfg("data.image_size=[16,16,16]"))


@pytest.mark.parametrize("extra, grid", [([], (4, 4, 4)), (["model.img_size=[8,8,8]"], (2, 2, 2))])
def test_build_survival_model_fills_img_size_from_data(extra, grid):
    cfg = _cfg("data.image_size=[16,16,16]", *extra)
    spec = CovariateSpec(1, [3])
    torch.manual_seed(0)
    model = build_survival_model(cfg, spec)
    torch.manual_seed(0)
    direct = build_model(cfg, spec, img_size=(16, 16, 16))
    assert tuple(model.embed.pos_embed.shape[2:]) == grid
    a, b = model.state_dict(), direct.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_build_survival_loss_uses_the_loss_section():
    cfg = _cfg("loss.name=cox_breslow")
    assert type(build_survival_loss(cfg)) is type(build_loss(cfg.loss))
