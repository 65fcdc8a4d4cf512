"""HessianDotFilter: Hessian against scipy, eigenvalues against eigvalsh, the Gaussian-blob closed form, shapes that
must not respond, symmetry, dtype/autograd contract, and the model key ``model.dot_filter_sigmas`` end to end."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from survival3d.config import ExperimentConfig, load_config
from survival3d.errors import ConfigError
from survival3d.models import SurvivalNet3D, build_model
from survival3d.models.blocks import Conv3dPatchEmbed, HessianDotFilter
from survival3d.models.blocks.hessian import gaussian_derivative_kernels, symmetric_eigvals3
from survival3d.models.pretrain import MaskedCubeletAutoencoder, load_encoder_state


def _grid(n: int) -> tuple[torch.Tensor, ...]:
    ax = torch.arange(n, dtype=torch.float64) - (n - 1) / 2  # odd n: the centre is a voxel
    return torch.meshgrid(ax, ax, ax, indexing="ij")


@pytest.mark.parametrize("sigma", [0.8, 1.5, 2.5])
def test_hessian_matches_scipy_gaussian_derivatives(sigma):
    x = torch.rand(1, 13, 17, 15, dtype=torch.float64)
    h = HessianDotFilter([sigma]).hessian(x, sigma)
    orders = [(2, 0, 0), (0, 2, 0), (0, 0, 2), (1, 1, 0), (1, 0, 1), (0, 1, 1)]
    g2_sum = float(gaussian_derivative_kernels(sigma, dtype=torch.float64)[2].sum())
    assert abs(g2_sum) < 1e-15  # the second-derivative kernel annihilates constants
    r = int(4.0 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * t * t / sigma**2)
    scipy_g2_sum = float(((t * t / sigma**4 - 1 / sigma**2) * g / g.sum()).sum())  # scipy's kernel does not
    smooth = ndi.gaussian_filter(x[0].numpy(), sigma, mode="nearest", truncate=4.0)
    for got, order in zip(h, orders):
        ref = sigma**2 * ndi.gaussian_filter(x[0].numpy(), sigma, order=order, mode="nearest", truncate=4.0)
        if 2 in order:  # ours = scipy's with g2 - sum(g2) g along that axis
            ref = ref - sigma**2 * scipy_g2_sum * smooth
        np.testing.assert_allclose(got[0].numpy(), ref, rtol=0, atol=1e-12, err_msg=str(order))


def test_closed_form_eigenvalues_match_eigvalsh():
    a = torch.randn(20000, 3, 3, dtype=torch.float64)
    a = a + a.transpose(1, 2)
    # degenerate cases too: multiples of the identity and pairs of equal eigenvalues
    q, _ = torch.linalg.qr(torch.randn(200, 3, 3, dtype=torch.float64))
    d = torch.randn(200, 1, dtype=torch.float64).repeat(1, 3)
    d[100:, 2] = torch.randn(100, dtype=torch.float64)
    a = torch.cat([a, q @ torch.diag_embed(d) @ q.transpose(1, 2), 3.0 * torch.eye(3, dtype=torch.float64)[None]])
    e1, e2, e3 = symmetric_eigvals3(a[:, 0, 0], a[:, 1, 1], a[:, 2, 2], a[:, 0, 1], a[:, 0, 2], a[:, 1, 2])
    ref = torch.linalg.eigvalsh(a)
    scale = a.flatten(1).abs().amax(1)
    for got, want in ((e1, ref[:, 2]), (e2, ref[:, 1]), (e3, ref[:, 0])):
        assert ((got - want).abs() <= 1e-6 * scale + 1e-12).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_closed_form_eigenvalues_near_isotropic_stay_finite(dtype):
    # a blob's centre: equal diagonal, off-diagonals of rounding residue (~1e-17, whose cube underflows float32);
    # CI once drew such a blob and got NaN eigenvalues, so a zero dot response where the closed form says c
    n = 5000
    q = -torch.rand(n, dtype=torch.float64) * 0.5 - 0.01
    off = torch.randn(n, 3, dtype=torch.float64) * 10.0 ** torch.empty(n, 1, dtype=torch.float64).uniform_(-30, -8)
    a = torch.diag_embed(q[:, None].repeat(1, 3))
    a[:, 0, 1] = a[:, 1, 0] = off[:, 0]
    a[:, 0, 2] = a[:, 2, 0] = off[:, 1]
    a[:, 1, 2] = a[:, 2, 1] = off[:, 2]
    a = torch.cat([a, torch.zeros(1, 3, 3, dtype=torch.float64)])  # and the zero matrix
    e = symmetric_eigvals3(*(a[:, i, j].to(dtype) for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))))
    ref = torch.linalg.eigvalsh(a).flip(1)
    tol = 256 * torch.finfo(dtype).eps * a.flatten(1).abs().amax(1) + 1e-30  # eigvalsh itself is off by ~50 ulp here
    for k, got in enumerate(e):
        assert torch.isfinite(got).all()
        assert ((got.double() - ref[:, k]).abs() <= tol).all()


@pytest.mark.parametrize("s", [1.5, 2.5])
def test_gaussian_blob_gives_its_contrast_at_the_matched_scale(s):
    c, offset = float(torch.empty(()).uniform_(0.2, 0.9)), float(torch.rand(()))
    z, y, x = _grid(41)
    blob = offset + c * torch.exp(-(z**2 + y**2 + x**2) / (2 * s * s))
    out = HessianDotFilter([s])(blob[None, None])[0, 0]
    # sampled kernels: the continuous closed form c holds to about 1 %
    assert out[20, 20, 20].item() == pytest.approx(c, rel=0.015)
    assert out.argmax().item() == np.ravel_multi_index((20, 20, 20), (41, 41, 41))
    # at another scale, with u = sigma^2 / s^2, the centre's response is c 2^(5/2) u / (1 + u)^(5/2) (smaller)
    off = HessianDotFilter([0.5 * s])(blob[None, None])[0, 0, 20, 20, 20].item()
    u = 0.25
    assert off == pytest.approx(c * 2**2.5 * u / (1 + u) ** 2.5, rel=0.03)


def test_tubes_plates_and_dark_blobs_do_not_respond():
    z, y, x = _grid(33)
    s, c = 2.0, 0.7
    shapes = {
        "tube": c * torch.exp(-(y**2 + x**2) / (2 * s * s)),
        "plate": c * torch.exp(-(x**2) / (2 * s * s)),
        "dark blob": 1.0 - c * torch.exp(-(z**2 + y**2 + x**2) / (2 * s * s)),
    }
    blob = HessianDotFilter([1.0, 2.0])((c * torch.exp(-(z**2 + y**2 + x**2) / (2 * s * s)))[None, None]).max()
    for name, img in shapes.items():
        out = HessianDotFilter([1.0, 2.0])(img[None, None])
        assert out.min() >= 0 and out.max() < 0.02 * blob, name
    for sigma in (0.5, 0.75, 1.0):  # a constant image has no curvature at any scale
        assert HessianDotFilter([sigma])(torch.full((1, 1, 9, 9, 9), float(torch.rand(())))).max() < 1e-6


def test_flip_and_axis_permutation_equivariance():
    x = torch.rand(2, 1, 12, 14, 16)
    f = HessianDotFilter([1.0, 2.0])
    out = f(x)
    for dims in ([2], [3], [4], [2, 4]):
        torch.testing.assert_close(f(x.flip(dims)), out.flip(dims), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(f(x.transpose(2, 4)), out.transpose(2, 4), atol=1e-5, rtol=1e-4)


def test_contract_float32_no_grad_and_bf16_autocast():
    x = torch.rand(1, 2, 10, 11, 12, requires_grad=True)
    f = HessianDotFilter([1.2])
    out = f(x)
    assert out.shape == x.shape and out.dtype == torch.float32 and not out.requires_grad and (out >= 0).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = f(x)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, out)
    # channels are filtered independently
    torch.testing.assert_close(f(x[:, 1:]), out[:, 1:])


@pytest.mark.parametrize("bad", [[], [0.0], [1.0, -2.0], [float("nan")]])
def test_bad_scales(bad):
    with pytest.raises(ValueError, match="dot_filter_sigmas"):
        HessianDotFilter(bad)
    if bad:
        with pytest.raises(ConfigError, match="dot_filter_sigmas"):
            build_model(load_config(None, [f"model.dot_filter_sigmas={bad}".replace("nan", "NaN")],
                                    schema=ExperimentConfig))


def test_patch_embed_feeds_the_response_as_extra_channels():
    torch.manual_seed(0)
    emb = Conv3dPatchEmbed(1, 12, 4, dot_filter_sigmas=[1.0, 2.0], pos_embed="none").eval()
    assert emb.stem[0].in_channels == 2 and emb.mean_proj.in_channels == 2
    x = torch.rand(2, 1, 16, 16, 13, requires_grad=True)
    tokens, valid = emb(x)
    assert tokens.shape == (2, 12, 4, 4, 4) and valid.shape == (1, 1, 4, 4, 4)
    # the same tokens from a plain embed fed [x, filter(x)] with the same weights
    plain = Conv3dPatchEmbed(2, 12, 4, pos_embed="none").eval()
    plain.load_state_dict(emb.state_dict())
    with torch.no_grad():
        ref, _ = plain(torch.cat([x, HessianDotFilter([1.0, 2.0])(x)], 1))
    torch.testing.assert_close(tokens.detach(), ref)
    tokens.sum().backward()  # gradient reaches the image through its own channel
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_model_key_builds_trains_and_transfers_from_pretraining():
    cfg = load_config(None, ["model.embed_dim=12", "model.num_heads=2", "model.window_size=2", "head.hidden=[8]",
                             "model.dot_filter_sigmas=[1.0,2.0]"], schema=ExperimentConfig)
    model = build_model(cfg)
    assert isinstance(model, SurvivalNet3D) and model.embed.dot_filter.sigmas == (1.0, 2.0)
    x = torch.rand(2, 1, 16, 16, 16)
    out = model(x)
    (out.pred - torch.tensor([10.0, 60.0])).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    kw = {"embed_dim": 12, "num_heads": 2, "window_size": 2, "dot_filter_sigmas": [1.0, 2.0]}
    ae = MaskedCubeletAutoencoder(**kw)
    assert ae(x)["loss"].isfinite()
    assert "embed.stem.0.weight" in load_encoder_state(SurvivalNet3D(**kw), ae.state_dict(), where="pre.pt")
    with pytest.raises(ConfigError, match="embed.stem.0.weight"):  # 2 input channels against 1: one line
        load_encoder_state(SurvivalNet3D(embed_dim=12, num_heads=2, window_size=2), ae.state_dict(), where="pre.pt")
