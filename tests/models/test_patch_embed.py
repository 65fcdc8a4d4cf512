"""Conv3dPatchEmbed: shapes over parameter products, padding validity, position embeddings, ill arguments."""

import itertools
import math

import pytest
import torch

from survival3d.models.blocks import Conv3dPatchEmbed, sincos_pos_embed_3d

CASES = list(itertools.product([2, 4], [1, 2], ["none", "learnable", "sincos"], [(16, 16, 16), (13, 16, 18)]))


@pytest.mark.parametrize("patch,stem,pos,size", CASES)
def test_shapes(patch, stem, pos, size):
    emb = Conv3dPatchEmbed(2, 12, patch, stem_convs=stem, pos_embed=pos, img_size=(16, 16, 16))
    x = torch.randn(2, 2, *size)
    tokens, valid = emb(x)
    grid = tuple(math.ceil(s / patch) for s in size)
    assert tokens.shape == (2, 12, *grid)
    assert valid.shape == (1, 1, *grid) and valid.dtype == torch.bool
    assert emb.grid_size(size) == grid


def test_valid_marks_mostly_padded_cubelets():
    emb = Conv3dPatchEmbed(1, 12, 4)
    _, valid = emb(torch.randn(1, 1, 9, 10, 8))  # last cubelet along D has 1/4 real voxels, along H 2/4
    assert valid.shape == (1, 1, 3, 3, 2)
    assert valid[0, 0, :2, :, :].all() and not valid[0, 0, 2].any()


def test_padding_does_not_change_real_cubelets():
    emb = Conv3dPatchEmbed(1, 12, 4, pos_embed="sincos").eval()
    x = torch.randn(1, 1, 8, 8, 8)
    big = torch.nn.functional.pad(x, (0, 3, 0, 0, 0, 0), value=0.0)[..., :10]  # 8x8x10: padded by the module
    with torch.no_grad():
        a, _ = emb(x)
        b, _ = emb(big)
    torch.testing.assert_close(a, b[..., :2])


def test_stem_is_local():
    """With one conv, each token sees only its own cubelet: perturbing one cubelet changes one token."""
    emb = Conv3dPatchEmbed(1, 12, 4, pos_embed="none").eval()
    x = torch.randn(1, 1, 12, 12, 12)
    y = x.clone()
    y[..., 4:8, 0:4, 8:12] += 1.0
    with torch.no_grad():
        diff = (emb(x)[0] - emb(y)[0]).abs().sum(1)[0]
    assert diff[1, 0, 2] > 0 and (diff > 1e-6).sum() == 1


def test_sincos_distinct_and_learnable_resized():
    pe = sincos_pos_embed_3d((3, 4, 5), 24)
    assert pe.shape == (24, 3, 4, 5)
    flat = pe.reshape(24, -1).T
    assert torch.cdist(flat, flat).add(torch.eye(60)).min() > 1e-3  # every position encoded differently
    emb = Conv3dPatchEmbed(1, 12, 4, pos_embed="learnable", img_size=(16, 16, 16))
    tokens, _ = emb(torch.randn(1, 1, 24, 16, 8))
    assert tokens.shape == (1, 12, 6, 4, 2)


def test_channels_last_input_gives_same_tokens():
    emb = Conv3dPatchEmbed(1, 12, 4, stem_convs=2).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(emb(x)[0], emb(x.to(memory_format=torch.channels_last_3d))[0])


@pytest.mark.parametrize("kwargs", [dict(patch_size=0), dict(stem_convs=0), dict(patch_size=4, stem_convs=4),
                                    dict(pos_embed="rope"), dict(pos_embed="learnable"), dict(embed_dim=4),
                                    dict(in_channels=0), dict(min_valid_frac=0.0),
                                    dict(pos_embed="learnable", img_size=(8, 8))])
def test_ill_arguments(kwargs):
    with pytest.raises(ValueError):
        Conv3dPatchEmbed(**{"in_channels": 1, "embed_dim": 12, "patch_size": 4, **kwargs})


def test_bad_input_rank():
    with pytest.raises(ValueError, match="D, H, W"):
        Conv3dPatchEmbed(1, 12, 4)(torch.randn(1, 16, 16, 16))


def _uniform_tokens(emb, values):
    with torch.no_grad():
        return [emb(torch.full((1, 1, 8, 8, 8), float(v)))[0][0, :, 0, 0, 0] for v in values]


def test_layernorm_alone_is_blind_to_homogeneous_intensity():
    """Closed form: a uniform cubelet of value a leaves the patchify conv as a*s + b; with b = 0, LN(a*s) = LN(s)
    for every a > 0 — two uniform cubelets of different intensity get the same token."""
    a, b = (0.2 + 0.7 * torch.rand(2)).tolist()
    emb = Conv3dPatchEmbed(1, 12, 4, pos_embed="none", mean_intensity=False).eval()
    torch.nn.init.zeros_(emb.stem[-1].bias)
    ta, tb = _uniform_tokens(emb, (a, b))
    torch.testing.assert_close(ta, tb, atol=1e-4, rtol=1e-4)


def test_mean_intensity_path_restores_it():
    """With the mean-intensity path (default) the same two tokens differ by exactly W (a - b)."""
    a, b = (0.2 + 0.7 * torch.rand(2)).tolist()
    emb = Conv3dPatchEmbed(1, 12, 4, pos_embed="none").eval()
    torch.nn.init.zeros_(emb.stem[-1].bias)
    ta, tb = _uniform_tokens(emb, (a, b))
    w = emb.mean_proj.weight.reshape(-1)
    torch.testing.assert_close(ta - tb, w * (a - b), atol=1e-4, rtol=1e-4)


def test_without_norm_token_is_affine_in_intensity():
    a = float(torch.rand(()))
    emb = Conv3dPatchEmbed(1, 12, 4, pos_embed="none", norm=False).eval()
    conv, mp = emb.stem[-1], emb.mean_proj
    (ta,) = _uniform_tokens(emb, (a,))
    expect = a * conv.weight.sum(dim=(1, 2, 3, 4)) + conv.bias + a * mp.weight.reshape(-1) + mp.bias
    torch.testing.assert_close(ta, expect, atol=1e-5, rtol=1e-5)


def test_deep_stem_keeps_homogeneous_intensity():
    emb = Conv3dPatchEmbed(1, 12, 4, stem_convs=2, pos_embed="none").eval()
    ta, tb = _uniform_tokens(emb, (0.2, 0.9))
    assert (ta - tb).abs().max() > 1e-2


def test_std_intensity_path_is_the_cubelet_sd():
    """With the stem zeroed, the token is exactly W * sd(cubelet) + c (population sd over the cubelet's voxels)."""
    emb = Conv3dPatchEmbed(1, 12, 4, pos_embed="none", norm=False, mean_intensity=False, std_intensity=True).eval()
    torch.nn.init.zeros_(emb.stem[-1].weight)
    torch.nn.init.zeros_(emb.stem[-1].bias)
    x = torch.rand(1, 1, 8, 8, 8) * torch.rand(1, 1, 8, 8, 8)
    with torch.no_grad():
        tokens, _ = emb(x)
    sd = x.reshape(2, 4, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(2, 2, 2, 64).std(-1, unbiased=False)
    w, c = emb.std_proj.weight.reshape(-1), emb.std_proj.bias
    expect = w[:, None, None, None] * sd[None] + c[:, None, None, None]
    torch.testing.assert_close(tokens[0], expect, atol=1e-4, rtol=1e-4)
