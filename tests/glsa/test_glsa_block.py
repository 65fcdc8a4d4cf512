import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from survival3d.errors import ConfigError
from survival3d.glsa import ATTENTION, FUSION, RESIDUAL, GlobalSelfAttention, GLSABlock




CHANNELS, HEADS = 16, 4
COMBOS = list(itertools.product(ATTENTION.keys(), FUSION.keys(), RESIDUAL.keys()))


def test_registries_hold_the_design_names():
    assert set(FUSION.keys()) == {"original", "learnable_gate", "weighted_add", "channel_attn", "spatial_attn", "cross_attn"}
    assert set(RESIDUAL.keys()) == {"original", "learnable_gate", "progressive", "drop_path"}
    assert set(ATTENTION.keys()) == {"none", "cbam", "se", "featureact"}


@pytest.mark.parametrize("attn, fusion, residual", COMBOS)
def test_every_combination_forward_backward(attn, fusion, residual):
    for size, batch in itertools.product((3, 6), (1, 3)):
        block = GLSABlock(CHANNELS, HEADS, attn, fusion, residual, img_size=size if attn == "featureact" else None)
        block.train()
        x = torch.randn(batch, CHANNELS, size, size, requires_grad=True)
        y = block(x)
        assert y.shape == x.shape
        assert torch.isfinite(y).all()
        (y * torch.randn_like(y)).sum().backward()
        assert torch.isfinite(x.grad).all()
        for name, p in block.named_parameters():
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


@pytest.mark.parametrize("fusion", FUSION.keys())
def test_fusion_output_depends_on_both_branches(fusion):
    f = FUSION.build(fusion, channels=CHANNELS, spatial_dims=2) if fusion != "cross_attn" else FUSION.build(
        {"name": fusion, "num_heads": 2}, channels=CHANNELS, spatial_dims=2)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.1 * torch.randn_like(p))  # move weighted_add's gamma etc. off their initial values
    a, l, x = (torch.randn(2, CHANNELS, 4, 4, requires_grad=True) for _ in range(3))
    f(a, l, x).sum().backward()
    assert a.grad.abs().sum() > 0 and l.grad.abs().sum() > 0


def test_fusion_formulas():
    a, l = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    assert torch.allclose(FUSION.build("original", channels=8)(a, l), a * l)
    w = FUSION.build("weighted_add", channels=8)
    with torch.no_grad():
        w.alpha.fill_(0.3), w.beta.fill_(-1.2), w.gamma.fill_(2.0)
    assert torch.allclose(w(a, l), 0.3 * a - 1.2 * l + 2.0 * a * l, atol=1e-6)
    g = FUSION.build("learnable_gate", channels=8)
    with torch.no_grad():
        g.gate.weight.zero_(), g.gate.bias.zero_()
    assert torch.allclose(g(a, l), 0.5 * a + 0.5 * l, atol=1e-6)


def test_residual_formulas():
    x, r = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    assert torch.allclose(RESIDUAL.build("original", channels=8)(x, r), x + r)
    prog = RESIDUAL.build("progressive", channels=8)
    assert torch.equal(prog(x, r), x)  # ReZero: alpha starts at 0, the block starts as the identity
    with torch.no_grad():
        prog.alpha.fill_(0.25)
    assert torch.allclose(prog(x, r), x + 0.25 * r)
    interp = RESIDUAL.build({"name": "progressive", "mode": "interpolate", "alpha_init": 0.25}, channels=8)
    assert torch.allclose(interp(x, r), 0.75 * x + 0.25 * r)
    dp = RESIDUAL.build({"name": "drop_path", "drop_prob": 0.5}, channels=8)
    dp.eval()
    assert torch.allclose(dp(x, r), x + r)
    dp.train()
    big_x, big_r = torch.zeros(4000, 1, 1, 1), torch.ones(4000, 1, 1, 1)
    out = dp(big_x, big_r).flatten()
    assert set(out.unique().tolist()) <= {0.0, 2.0}  # whole samples dropped, survivors scaled by 1/(1-p)
    assert abs(out.mean().item() - 1.0) < 0.1


def test_global_attention_matches_reference():
    att = GlobalSelfAttention(CHANNELS, HEADS)
    x = torch.randn(2, CHANNELS, 5, 5)
    qkv = att.qkv(x).flatten(2)  # (B, 3C, N)
    q, k, v = qkv.chunk(3, dim=1)
    d = CHANNELS // HEADS
    outs = []
    for h in range(HEADS):
        qh, kh, vh = (t[:, h * d:(h + 1) * d].transpose(1, 2) for t in (q, k, v))  # (B, N, d)
        w = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(d), dim=-1)
        outs.append((w @ vh).transpose(1, 2))
    ref = att.proj(torch.cat(outs, 1).reshape(x.shape))
    assert torch.allclose(att(x), ref, atol=1e-5)


def test_count_parameters_adds_up():
    block = GLSABlock(CHANNELS, HEADS, "cbam", "learnable_gate", "learnable_gate")
    counts = block.count_parameters()
    assert counts["total"] == sum(p.numel() for p in block.parameters())
    assert counts["total"] == sum(counts[k] for k in ("global_attn", "local_attn", "fusion", "residual"))
    assert counts["fusion"] == 2 * CHANNELS * CHANNELS + CHANNELS
    assert counts["residual"] == 2 * CHANNELS * CHANNELS + CHANNELS
    assert GLSABlock(CHANNELS, HEADS, "none", "original", "original").count_parameters()["fusion"] == 0


def test_works_on_volumes():
    block = GLSABlock(8, 2, "cbam", "spatial_attn", "learnable_gate", spatial_dims=3)
    x = torch.randn(2, 8, 3, 4, 5)
    assert block(x).shape == x.shape


@pytest.mark.parametrize("attn", ATTENTION.keys())
@pytest.mark.parametrize("dims", [2, 3])
def test_attention_modules_keep_shape(attn, dims):
    m = ATTENTION.build(attn, channels=8, spatial_dims=dims)
    x = torch.randn(2, 8, *([4] * dims))
    assert m(x).shape == x.shape


def test_ill_arguments():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        GLSABlock(10, 4)
    with pytest.raises(ValueError, match="spatial_dims"):
        GLSABlock(8, 2, spatial_dims=4)
    with pytest.raises(ConfigError, match="Did you mean 'learnable_gate'"):
        GLSABlock(8, 2, fusion_strategy="learnable_gat")
    with pytest.raises(ConfigError, match="no option"):
        GLSABlock(8, 2, attn_type={"name": "cbam", "reduce": 4})
    with pytest.raises(ValueError, match="kernel_size"):
        ATTENTION.build({"name": "cbam", "kernel_size": 4}, channels=8)
    with pytest.raises(ValueError, match="drop_prob"):
        RESIDUAL.build({"name": "drop_path", "drop_prob": 1.0}, channels=8)
    with pytest.raises(ValueError, match="expects"):
        GLSABlock(8, 2)(torch.randn(1, 6, 4, 4))


def test_attention_name_is_case_insensitive():
    assert isinstance(GLSABlock(8, 2, "CBAM").local_attn, type(ATTENTION.build("cbam", channels=8)))


def test_cbam_matches_its_definition():
    m = ATTENTION.build({"name": "cbam", "reduction": 2}, channels=8, spatial_dims=2)
    x = torch.randn(2, 8, 5, 5)
    mlp = m.channel.mlp
    mc = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    x1 = x * mc
    ms = torch.sigmoid(F.conv2d(torch.cat([x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)], 1), m.spatial.conv.weight, padding=3))
    assert torch.allclose(m(x), x1 * ms, atol=1e-6)
