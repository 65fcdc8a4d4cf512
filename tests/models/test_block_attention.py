"""Local attention (SE / CBAM / FeatureAct) inside the 3D survival model's transformer blocks (`model.attention`)."""

import pytest
import torch

from survival3d.config import ExperimentConfig, load_config
from survival3d.errors import ConfigError
from survival3d.layers.attention import CBAM, FeatureAct, ResidualGatedAttention, SqueezeExcitation
from survival3d.models import build_model
from survival3d.models.blocks import WindowTransformerBlock3D

SMALL = ["model.embed_dim=16", "model.depth=2", "model.num_heads=2", "model.window_size=2", "head.hidden=[8]",
         "model.patch_size=4", "data.image_size=[16,16,16]"]
VARIANTS = ["se", "cbam", "featureact"]




def _model(*overrides):
    from survival3d.build import build_survival_model

    return build_survival_model(load_config(None, [*SMALL, *overrides], schema=ExperimentConfig))


def _seed():
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, ())))


def test_none_creates_no_parameter_and_keeps_the_default_init():
    seed = int(torch.randint(0, 2**31 - 1, ()))
    torch.manual_seed(seed)
    default = build_model(load_config(None, SMALL, schema=ExperimentConfig))
    torch.manual_seed(seed)
    none = _model("model.attention=none")
    a, b = default.state_dict(), none.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(blk.local_attn is None for blk in none.transformer.blocks)


@pytest.mark.parametrize("name, cls", [("se", SqueezeExcitation), ("cbam", CBAM), ("featureact", FeatureAct)])
def test_every_block_holds_the_gated_3d_module(name, cls):
    model = _model(f"model.attention={name}")
    for blk in model.transformer.blocks:
        assert isinstance(blk.local_attn, ResidualGatedAttention)
        assert isinstance(blk.local_attn.attention, cls)
        convs = [type(m) for m in blk.local_attn.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
        assert convs and set(convs) == {torch.nn.Conv3d}
        assert blk.local_attn.alpha.shape == (1, 16, 1, 1, 1) and not blk.local_attn.alpha.any()
    if name == "featureact":
        assert model.transformer.blocks[0].local_attn.attention.pos_weight.shape == (64, 64)  # 4^3 token grid


@pytest.mark.parametrize("name", VARIANTS)
def test_identity_at_initialisation_and_shapes(name):
    _seed()
    plain = _model()
    model = _model(f"model.attention={name}")
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".local_attn." in k for k in missing)
    plain.eval(), model.eval()
    x = torch.rand(3, 1, 16, 16, 16)
    a, b = plain(x), model(x)
    assert b.pred.shape == (3,) and b.p.shape == (3, 1, 4, 4, 4)
    assert set(a.features) == set(b.features)
    for k in a.features:
        assert b.features[k].shape == (3, 16, 4, 4, 4)
        assert torch.equal(a.features[k], b.features[k])  # alpha = 0: bit-for-bit the model without attention
    assert torch.equal(a.pred, b.pred)


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_reach_the_gate_then_the_attention(name):
    _seed()
    model = _model(f"model.attention={name}").train()
    x = torch.rand(2, 1, 16, 16, 16)
    model(x).pred.sum().backward()
    for blk in model.transformer.blocks:
        gate = blk.local_attn
        assert gate.alpha.grad is not None and gate.alpha.grad.abs().sum() > 0
        # at alpha = 0 the attention's own weights get exactly zero gradient (by design of the gate)
        assert all(p.grad is None or not p.grad.any() for p in gate.attention.parameters())
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for blk in model.transformer.blocks:
            blk.local_attn.alpha.fill_(0.5)
    model(x).pred.sum().backward()
    for blk in model.transformer.blocks:
        for pname, p in blk.local_attn.attention.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert sum(p.grad.abs().sum() for p in blk.local_attn.attention.parameters()) > 0


def test_gated_block_equals_formula_with_open_gate():
    """``x + α(A(x) − x)`` with α = 1 is A applied to the block's output (channels-first token grid)."""
    _seed()
    blk = WindowTransformerBlock3D(8, 2, 2, attention={"name": "se", "reduction": 2}).eval()
    plain = WindowTransformerBlock3D(8, 2, 2).eval()
    plain.load_state_dict({k: v for k, v in blk.state_dict().items() if ".local_attn." not in f".{k}"}, strict=True)
    with torch.no_grad():
        blk.local_attn.alpha.fill_(1.0)
    x = torch.randn(2, 4, 4, 4, 8)
    want = blk.local_attn.attention(plain(x).movedim(-1, 1)).movedim(1, -1)
    torch.testing.assert_close(blk(x), want)


def test_se_3d_against_closed_form():
    _seed()
    se = SqueezeExcitation(8, 3, reduction=2).double()
    x = torch.randn(2, 8, 3, 4, 5, dtype=torch.float64)
    w1, b1 = se.fc[0].weight.flatten(1), se.fc[0].bias
    w2, b2 = se.fc[2].weight.flatten(1), se.fc[2].bias
    g = torch.sigmoid(torch.relu(x.mean((2, 3, 4)) @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(se(x), x * g[:, :, None, None, None])


def test_cbam_3d_against_closed_form():
    _seed()
    cbam = CBAM(8, 3, reduction=2, kernel_size=3).double()
    x = torch.randn(2, 8, 3, 4, 5, dtype=torch.float64)
    w1, w2 = cbam.channel.mlp[0].weight.flatten(1), cbam.channel.mlp[2].weight.flatten(1)
    mlp = lambda v: torch.relu(v @ w1.T) @ w2.T  # noqa: E731
    gc = torch.sigmoid(mlp(x.mean((2, 3, 4))) + mlp(x.amax((2, 3, 4))))[:, :, None, None, None]
    xc = x * gc
    desc = torch.cat([xc.mean(1, keepdim=True), xc.amax(1, keepdim=True)], 1)
    gs = torch.sigmoid(torch.nn.functional.conv3d(desc, cbam.spatial.conv.weight, padding=1))
    torch.testing.assert_close(cbam(x), xc * gs)


@pytest.mark.parametrize("overrides, pattern", [
    (["model.attention=cbm"], "Did you mean 'cbam'"),
    (["model.attention=featureact", "data.image_size=[16,16,8]"], "cubic token grid"),
    (["model.attention=featureact", "data.image_size=[80,80,80]"], "at most 4096"),
    (["model.attention={name: se, reductoin: 4}"], "no option"),
])
def test_config_errors_name_the_key(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        _model(*overrides)


def test_options_reach_the_module():
    model = _model("model.attention={name: se, reduction: 2}")
    assert model.transformer.blocks[0].local_attn.attention.fc[0].out_channels == 8
