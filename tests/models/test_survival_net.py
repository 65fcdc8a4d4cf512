"""SurvivalNet3D / build_model: the SurvivalOutput contract, config round trip, gradients for every head."""

import pytest
import torch

from survival3d.config import ExperimentConfig, load_config
from survival3d.errors import ConfigError
from survival3d.models import HEADS, CovariateSpec, SurvivalOutput, build_model

SMALL = ["model.embed_dim=12", "model.depth=2", "model.num_heads=2", "model.window_size=2", "head.hidden=[8]"]


def _cfg(*overrides):
    return load_config(None, [*SMALL, *overrides], schema=ExperimentConfig)


def _cov(b, spec):
    num = torch.randn(b, spec.num_numeric) if spec.num_numeric else None
    cat = torch.stack([torch.randint(0, c, (b,)) for c in spec.cardinalities], 1) if spec.cardinalities else None
    return num, cat


@pytest.mark.parametrize("size", [(16, 16, 16), (13, 16, 10)])
def test_output_contract(size):
    spec = CovariateSpec(2, [3, 4])
    model = build_model(_cfg("model.patch_size=4"), spec)
    assert model.patch_size == 4 and model.uses_film
    out = model(torch.rand(2, 1, *size), *_cov(2, spec), lung_mask=(torch.rand(2, 1, *size) > 0.2).float())
    grid = tuple(-(-s // 4) for s in size)
    assert isinstance(out, SurvivalOutput)
    assert out.pred.shape == out.risk.shape == (2,)
    torch.testing.assert_close(out.risk, -out.pred)
    assert out.p.shape == out.loc.shape == out.valid.shape == (2, 1, *grid)
    assert set(out.features) == {"embed", "block0", "block1", "tokens"}
    assert all(f.shape == (2, 12, *grid) for f in out.features.values())
    assert out.reg_loss.ndim == 0
    torch.testing.assert_close(out.p.flatten(1).sum(1), torch.ones(2))


def test_padding_and_lung_invalidate_cubelets():
    model = build_model(_cfg("model.patch_size=4", "head.lung_frac_min=0.5"))
    lung = torch.zeros(1, 1, 16, 16, 13)
    lung[..., :8, :, :] = 1  # lung in the first half along D
    out = model(torch.rand(1, 1, 16, 16, 13), lung_mask=lung)
    v = out.valid[0, 0]
    assert v.shape == (4, 4, 4)
    # the last cubelet along W holds 1/4 real voxels: padding, invalid; no lung in the second half along D
    assert v[:2, :, :3].all() and not v[2:].any() and not v[..., 3].any()
    assert torch.equal(out.p[0, 0] > 0, v)


def test_channels_last_input_same_output():
    model = build_model(_cfg()).eval()
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        a = model(x)
        b = model(x.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(a.pred, b.pred)
    torch.testing.assert_close(a.p, b.p)


@pytest.mark.parametrize("head", HEADS.keys())
@pytest.mark.parametrize("with_cov", [False, True, "aft"])
def test_every_parameter_gets_a_gradient(head, with_cov):
    spec = CovariateSpec(2, [3]) if with_cov else None
    extra = ["head.entropy_weight=0.01", "head.smooth_weight=0.001"] if head == "softmin" else []
    extra += ["model.covariate_aft=true"] if with_cov == "aft" else []
    model = build_model(_cfg(f"head.name={head}", "model.pos_embed=learnable", "model.stem_convs=2", *extra), spec,
                        img_size=(16, 16, 16))
    assert model.uses_film == bool(with_cov)
    cov = _cov(2, spec) if with_cov else (None, None)
    x = torch.rand(2, 1, 16, 16, 16)
    # FiLM's output layer is zero at init (identity), so its encoder gets zero gradient until that layer moves:
    # take one SGD step first, then every parameter must receive a non-zero, finite gradient.
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        out = model(x, *cov)
        ((out.pred - torch.tensor([10.0, 80.0])).square().mean() + out.reg_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as the trainer does: unclipped, a step can diverge
        opt.step()
    for name, prm in model.named_parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all() and prm.grad.abs().sum() > 0, name


def test_film_off_and_no_covariates_are_identity_path():
    assert not build_model(_cfg("model.film=false"), CovariateSpec(2, [3])).uses_film
    assert not build_model(_cfg(), CovariateSpec()).uses_film
    assert not build_model(_cfg(), None).uses_film


def test_film_at_init_equals_unconditioned_model():
    spec = CovariateSpec(1, [4])
    with_film = build_model(_cfg(), spec).eval()
    plain = build_model(_cfg()).eval()
    plain.load_state_dict({k: v for k, v in with_film.state_dict().items() if ".film." not in k})
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(with_film(x, *_cov(2, spec)).pred, plain(x).pred, rtol=0, atol=0)


def test_build_model_errors():
    with pytest.raises(ConfigError, match="softmin"):
        build_model(_cfg("head.name=softmn"))
    with pytest.raises(ValueError):
        build_model(_cfg("model.embed_dim=10", "model.num_heads=3"))
    with pytest.raises(ValueError, match="cov_num"):
        build_model(_cfg(), CovariateSpec(2, []))(torch.rand(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="lung_mask"):
        build_model(_cfg())(torch.rand(1, 1, 16, 16, 16), lung_mask=torch.ones(1, 1, 8, 16, 16))
    with pytest.raises(ConfigError, match="model.name 'unet' is not a model. Valid: survival3d"):
        build_model(_cfg("model.name=unet"))


def test_build_from_plain_mapping():
    model = build_model({"model": {"name": "survival3d", "embed_dim": 12, "num_heads": 2, "patch_size": 8},
                         "head": {"name": "meanpool"}})
    out = model(torch.rand(1, 1, 16, 16, 16))
    assert out.p is None and out.pred.shape == (1,)


def test_bf16_autocast_keeps_head_in_fp32():
    model = build_model(_cfg("model.patch_size=4"), CovariateSpec(1, [])).train()
    x = torch.rand(2, 1, 16, 16, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, torch.randn(2, 1))
    assert out.features["tokens"].dtype == torch.bfloat16
    assert out.pred.dtype == out.p.dtype == out.loc.dtype == torch.float32
    torch.testing.assert_close(out.p.flatten(1).sum(1), torch.ones(2))
    out.pred.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_training_after_inference_mode_forward():
    """Index tables cached during an inference_mode forward must not break a later backward pass."""
    model = build_model(_cfg("model.patch_size=4"))
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.inference_mode():
        model(x)
    out = model(x)
    out.pred.sum().backward()
    assert model.head.loc_bias.grad is not None


def test_covariate_log_time_shift_closed_form():
    """s = w . x_num + sum_j c_j[x_cat_j], against a float64 sum at random coefficients and fresh inputs."""
    from survival3d.models.blocks import CovariateLogTimeShift

    shift = CovariateLogTimeShift(3, [2, 5])
    assert all((prm == 0).all() for prm in shift.parameters())  # zero at initialisation
    w, c0, c1 = torch.randn(3, dtype=torch.float64), torch.randn(2, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    with torch.no_grad():
        shift.numeric.weight.copy_(w[None])
        shift.levels[0].weight.copy_(c0[:, None])
        shift.levels[1].weight.copy_(c1[:, None])
    num, cat = torch.randn(7, 3), torch.stack([torch.randint(0, 2, (7,)), torch.randint(0, 5, (7,))], 1)
    want = num.double() @ w + c0[cat[:, 0]] + c1[cat[:, 1]]
    torch.testing.assert_close(shift(num, cat).double(), want, rtol=1e-6, atol=1e-6)
    only_cat = CovariateLogTimeShift(0, [4])
    assert only_cat(None, torch.randint(0, 4, (3, 1))).shape == (3,)
    with pytest.raises(ValueError, match="cov_cat"):
        shift(num, None)
    with pytest.raises(ValueError, match=r"cov_num of shape \(B, 3\)"):
        shift(num[:, :2], cat)
    with pytest.raises(ValueError, match="at least one"):
        CovariateLogTimeShift(0, [])


@pytest.mark.parametrize("aggregate", ["weighted_mean", "mean_hazard", "mean_rate"])
def test_covariate_aft_scales_every_time_and_keeps_the_map(aggregate):
    """model.covariate_aft: identical to the model without it at initialisation; with coefficients set, pred and loc
    are the plain model's times x e^s (s from the covariates alone) and p is unchanged."""
    spec = CovariateSpec(2, [3])
    cfg = [f"head.aggregate={aggregate}", "head.beta_init=0.7"]
    aft = build_model(_cfg(*cfg, "model.covariate_aft=true"), spec).eval()
    plain = build_model(_cfg(*cfg), spec).eval()
    plain.load_state_dict({k: v for k, v in aft.state_dict().items() if not k.startswith("covariate_shift.")})
    x, (num, cat) = torch.rand(3, 1, 16, 16, 16), _cov(3, spec)
    with torch.no_grad():
        base = plain(x, num, cat)
        torch.testing.assert_close(aft(x, num, cat).pred, base.pred, rtol=0, atol=0)
        aft.covariate_shift.numeric.weight.normal_()
        aft.covariate_shift.levels[0].weight.normal_()
        out = aft(x, num, cat)
    s = (num.double() @ aft.covariate_shift.numeric.weight[0].double()
         + aft.covariate_shift.levels[0].weight[cat[:, 0], 0].double())
    torch.testing.assert_close(out.pred.double(), base.pred.double() * s.exp(), rtol=1e-5, atol=0)
    torch.testing.assert_close(out.loc.double(), base.loc.double() * s.exp().reshape(-1, 1, 1, 1, 1), rtol=1e-5, atol=0)
    torch.testing.assert_close(out.p, base.p, rtol=0, atol=0)
    torch.testing.assert_close(out.risk, -out.pred)


def test_covariate_aft_needs_covariates():
    with pytest.raises(ConfigError, match="model.covariate_aft needs covariates"):
        build_model(_cfg("model.covariate_aft=true"), CovariateSpec())


def test_covariate_shift_stays_float32_under_bf16_autocast():
    """The log-time shift is exact float32 under bf16 autocast (a bf16 matmul would round it to ~3 digits)."""
    from survival3d.models.blocks import CovariateLogTimeShift

    shift = CovariateLogTimeShift(4, [3])
    with torch.no_grad():
        shift.numeric.weight.normal_()
        shift.levels[0].weight.normal_()
    num, cat = torch.randn(5, 4), torch.randint(0, 3, (5, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = shift(num, cat)
    want = num.double() @ shift.numeric.weight[0].double() + shift.levels[0].weight[cat[:, 0], 0].double()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
