import math

import pytest
import torch
from torch.nn import functional as F

from survival3d.layers.attention import FeatureAct




def loop_reference(m: FeatureAct, x: torch.Tensor) -> torch.Tensor:
    """FeatureAct v4 written out step by step as in the research notebook: the full (B, N, d, d) correlation
    tensor, a 1x1 convolution over its position axis, and a Python loop over the reduced channels."""
    b, c, h, w = x.shape
    src = m.src_proj(x).flatten(2)  # (B, d, N)
    tgt = m.tgt_proj(x).flatten(2)
    cor = src[:, :, None, :] * tgt[:, None, :, :]  # (B, d, d, N): cor[b, i, j, n] = s[b,i,n] t[b,j,n]
    cor = cor.permute(0, 3, 1, 2)  # (B, N, d, d)
    cor = cor / math.sqrt(cor.size(1) if m.scale == "positions" else m.dim)
    cor = F.conv2d(cor, m.pos_weight[:, :, None, None], m.pos_bias)  # mixing over positions
    if m.cor == "sigmoid":  # the notebook's commented-out "additional custom" line
        cor = cor.sigmoid()
    main = m.down(x)  # (B, d, H, W)
    feats = []
    for k in range(m.dim):
        weights = cor[:, :, :, k].permute(0, 2, 1).reshape(b, m.dim, h, w)
        feats.append((main * weights).sum(1, keepdim=True))
    return x + m.up(torch.cat(feats, 1))


@pytest.mark.parametrize("size", [1, 3, 7, 12])
@pytest.mark.parametrize("scale", ["positions", "channels"])
@pytest.mark.parametrize("cor", ["none", "sigmoid"])
def test_vectorised_equals_loop_reference(size, scale, cor):
    m = FeatureAct(16, 2, img_size=size, reduction=4, scale=scale, cor=cor).double()
    x = torch.randn(3, 16, size, size, dtype=torch.float64)
    assert torch.allclose(m(x), loop_reference(m, x), atol=1e-10)


@pytest.mark.parametrize("cor", ["none", "sigmoid"])
def test_gradients_match_loop_reference(cor):
    m = FeatureAct(8, 2, img_size=4, reduction=2, cor=cor).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    g1 = torch.autograd.grad(m(x).square().sum(), [x, m.pos_weight])
    g2 = torch.autograd.grad(loop_reference(m, x).square().sum(), [x, m.pos_weight])
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-9)


def test_size_inferred_from_first_input():
    m = FeatureAct(8, 2, reduction=2)
    assert m.img_size is None
    x = torch.randn(2, 8, 5, 5)
    y = m(x)
    assert m.img_size == 5 and m.pos_weight.shape == (25, 25) and y.shape == x.shape
    assert torch.allclose(y, loop_reference(m, x), atol=1e-5)
    with pytest.raises(ValueError, match="built for feature size 5"):
        m(torch.randn(1, 8, 6, 6))


def test_rejects_non_square_and_bad_arguments():
    with pytest.raises(ValueError, match="square"):
        FeatureAct(8, 2)(torch.randn(1, 8, 4, 5))
    with pytest.raises(ValueError, match="divisible by reduction"):
        FeatureAct(10, 2, reduction=4)
    with pytest.raises(ValueError, match="scale"):
        FeatureAct(8, 2, scale="tokens")
    with pytest.raises(ValueError, match="cor must be one of"):
        FeatureAct(8, 2, cor="tanh")
    with pytest.raises(ValueError, match="expected"):
        FeatureAct(8, 2, img_size=4)(torch.randn(1, 6, 4, 4))


@pytest.mark.parametrize("cor", ["none", "sigmoid"])
def test_volumes(cor):
    m = FeatureAct(8, 3, img_size=3, reduction=2, cor=cor)
    x = torch.randn(2, 8, 3, 3, 3)
    assert m(x).shape == x.shape and m.pos_weight.shape == (27, 27)


def test_sigmoid_changes_the_output():
    torch.manual_seed(int(torch.randint(0, 10_000, ())))
    a = FeatureAct(8, 2, img_size=4, reduction=2).double()
    b = FeatureAct(8, 2, img_size=4, reduction=2, cor="sigmoid").double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    assert not torch.allclose(a(x), b(x))
