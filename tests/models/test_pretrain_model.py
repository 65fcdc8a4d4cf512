"""The masked-cubelet autoencoder and the vector quantiser (survival3d.models.pretrain, models.blocks.vq)."""

import math

import numpy as np
import pytest
import torch

from survival3d.errors import ConfigError
from survival3d.models import SurvivalNet3D
from survival3d.models.blocks import VectorQuantizer
from survival3d.models.blocks.vq import usage_stats
from survival3d.models.pretrain import (
    MaskedCubeletAutoencoder,
    encoder_keys,
    layer_scale,
    load_encoder_state,
    masked_mse,
    patchify,
    random_cubelet_mask,
    unpatchify,
)

TINY = dict(patch_size=4, embed_dim=12, depth=2, num_heads=2, window_size=2, decoder_dim=12, decoder_heads=2)


@pytest.mark.parametrize("ratio", [0.25, 0.6, 0.75])
def test_mask_ratio_respected_and_padding_never_masked(ratio):
    torch.manual_seed(int(ratio * 100))
    model = MaskedCubeletAutoencoder(**TINY, mask_ratio=ratio)
    spatial = (17, 20, 13)  # last cubelets of axes 0 and 2 hold 1/4 real voxels: invalid
    valid = model.embed.valid_mask(spatial)
    n_valid = int(valid.sum())
    assert n_valid == 4 * 5 * 3
    mask = random_cubelet_mask(5, valid, ratio)
    assert mask.shape == (5, 1, 5, 5, 4)
    counts = mask.reshape(5, -1).sum(1)
    assert counts.tolist() == [round(ratio * n_valid)] * 5
    assert not (mask & ~valid).any()
    assert len({tuple(m.flatten().tolist()) for m in mask}) == 5  # drawn per volume


def test_patchify_roundtrip_and_layout():
    x = torch.randn(2, 1, 8, 12, 4)
    v = patchify(x, 4)
    assert v.shape == (2, 2, 3, 1, 64)
    np.testing.assert_array_equal(v[1, 1, 2, 0].numpy(), x[1, 0, 4:8, 8:12, 0:4].reshape(-1).numpy())
    assert torch.equal(unpatchify(v, 4, 1), x)


def test_loss_only_on_masked_cubelets():
    torch.manual_seed(0)
    model = MaskedCubeletAutoencoder(**TINY, mask_ratio=0.5).eval()
    image = torch.rand(2, 1, 16, 16, 16)
    valid = model.embed.valid_mask((16, 16, 16))
    mask = random_cubelet_mask(2, valid, 0.5)
    out = model(image, mask)
    # reference in float64 from the definition: per masked cubelet, mean squared error against the cubelet's
    # voxels standardised by their own mean and sd
    pred = out["pred"].detach().double().numpy()
    img = image.double().numpy()
    errs = []
    for b, i, j, k in zip(*np.nonzero(mask[:, 0].numpy())):
        vox = img[b, 0, 4 * i:4 * i + 4, 4 * j:4 * j + 4, 4 * k:4 * k + 4].reshape(-1)
        tgt = (vox - vox.mean()) / np.sqrt(vox.var() + 1e-6)
        errs.append(np.mean((pred[b, i, j, k] - tgt) ** 2))
    assert float(out["recon"].detach()) == pytest.approx(np.mean(errs), rel=1e-5)
    # gradient check: the loss does not depend on the targets of visible cubelets
    target = out["target"].detach().clone().requires_grad_(True)
    loss = masked_mse(out["pred"].detach(), target, mask[:, 0])
    (grad,) = torch.autograd.grad(loss, target)
    per_cubelet = grad.abs().sum(-1)
    assert (per_cubelet[~mask[:, 0]] == 0).all()
    assert (per_cubelet[mask[:, 0]] > 0).all()
    # and visible-cubelet voxels never reach the masked cubelets' tokens through the input: changing masked voxels
    # leaves the prediction unchanged (they are zeroed before the stem)
    noisy = image.clone()
    noisy[model.voxel_mask(mask, (16, 16, 16))] = torch.rand(int(model.voxel_mask(mask, (16, 16, 16)).sum()))
    assert torch.allclose(model(noisy, mask)["pred"], out["pred"], atol=1e-6)


def test_vq_usage_perplexity_and_straight_through():
    torch.manual_seed(1)
    q = VectorQuantizer(8, 16, decay=0.9).train()
    z = torch.randn(4, 8, 3, 3, 3, requires_grad=True)
    zq, loss, codes = q(z)
    assert codes.shape == (4, 3, 3, 3) and zq.shape == z.shape
    (g,) = torch.autograd.grad(zq.sum(), z)
    assert torch.equal(g, torch.ones_like(z))  # straight-through
    stats = q.usage_stats()
    counts = torch.bincount(codes.flatten(), minlength=16).double()
    assert torch.equal(q.counts, counts)
    p = counts / counts.sum()
    ref = math.exp(-sum(float(x) * math.log(float(x)) for x in p if x > 0))
    assert stats["perplexity"] == pytest.approx(ref, rel=1e-12)
    assert stats["codebook_usage"] == pytest.approx(float((counts > 0).sum()) / 16)
    assert stats["codebook_usage"] * 16 > 1
    assert usage_stats(torch.tensor([5.0, 5.0, 0.0, 0.0])) == {"codebook_usage": 0.5, "perplexity": pytest.approx(2.0)}
    assert loss > 0


def test_vq_ema_update_matches_closed_form_and_dead_codes_restart():
    torch.manual_seed(2)
    q = VectorQuantizer(4, 3, decay=0.5, restart_threshold=0.0, eps=0.0)
    book = q.codebook.clone()
    z = (book[[0, 0, 1]] + 0.01).reshape(3, 4, 1, 1, 1)
    _, _, codes = q(z)
    assert codes.flatten().tolist() == [0, 0, 1]
    flat = z.reshape(3, 4)
    # code 0 got tokens 0 and 1, code 1 token 2, code 2 none: EMA count 0.5*1 + 0.5*n, EMA sum 0.5*e + 0.5*sum
    n = torch.tensor([2.0, 1.0, 0.0])
    count = 0.5 + 0.5 * n
    ssum = 0.5 * book + 0.5 * torch.stack([flat[0] + flat[1], flat[2], torch.zeros(4)])
    torch.testing.assert_close(q.codebook, ssum / count[:, None])
    q2 = VectorQuantizer(4, 3, decay=0.99, restart_threshold=0.5)
    q2.ema_count.fill_(1.0)
    q2.ema_count[2] = 0.0
    tok = torch.randn(5, 4, 1, 1, 1) + 10.0  # far from every code: all go to one live code
    q2(tok)
    restarted = q2.codebook[2]
    assert any(torch.allclose(restarted, t) for t in tok.reshape(5, 4))


def test_encoder_transfers_by_name_and_mismatch_is_one_line():
    torch.manual_seed(3)
    ae = MaskedCubeletAutoencoder(**TINY, vq_codes=8)
    kw = {k: v for k, v in TINY.items() if not k.startswith("decoder")}
    surv = SurvivalNet3D(**kw, head={"name": "softmin", "hidden": [8]})
    loaded = load_encoder_state(surv, ae.state_dict(), where="pre.pt")
    assert loaded and not any(k.startswith("quantizer.") for k in loaded)  # continuous tokens
    for k in loaded:
        assert torch.equal(surv.state_dict()[k], ae.state_dict()[k]), k
    surv_q = SurvivalNet3D(**kw, vq_codes=8)
    keys = load_encoder_state(surv_q, ae.state_dict(), where="pre.pt")
    assert "quantizer.codebook" in keys and torch.equal(surv_q.quantizer.codebook, ae.quantizer.codebook)
    wide = SurvivalNet3D(**{**kw, "embed_dim": 18})
    with pytest.raises(ConfigError) as e:
        load_encoder_state(wide, ae.state_dict(), where="pre.pt")
    msg = str(e.value)
    assert "\n" not in msg and "pre.pt" in msg and "'embed.stem.0.weight'" in msg
    no_vq = MaskedCubeletAutoencoder(**TINY)
    with pytest.raises(ConfigError, match="'quantizer.codebook' is missing"):
        load_encoder_state(surv_q, no_vq.state_dict(), where="pre.pt")


@pytest.mark.parametrize("attention", ["se", "cbam"])
def test_encoder_with_block_attention_transfers(attention):
    """model.attention is part of the encoder: the autoencoder builds it too, and its weights load by name."""
    torch.manual_seed(4)
    ae = MaskedCubeletAutoencoder(**TINY, attention=attention)
    kw = {k: v for k, v in TINY.items() if not k.startswith("decoder")}
    surv = SurvivalNet3D(**kw, attention=attention)
    loaded = load_encoder_state(surv, ae.state_dict(), where="pre.pt")
    plain = load_encoder_state(SurvivalNet3D(**kw), MaskedCubeletAutoencoder(**TINY).state_dict(), where="pre.pt")
    assert set(plain) < set(loaded)  # the attention's weights come along
    for k in loaded:
        assert torch.equal(surv.state_dict()[k], ae.state_dict()[k]), k


def test_default_survival_model_has_no_new_parameters():
    torch.manual_seed(0)
    a = SurvivalNet3D()
    assert not any(k.startswith("quantizer") for k in a.state_dict())
    assert set(encoder_keys(a.state_dict())) == {k for k in a.state_dict() if k.startswith(("embed.", "transformer."))}


def test_layer_scale():
    assert layer_scale("head.mlp.0.weight", 2, 0.5) == 1.0
    assert layer_scale("transformer.blocks.1.attn.qkv.weight", 2, 0.5) == 0.5
    assert layer_scale("transformer.blocks.0.norm1.weight", 2, 0.5) == 0.25
    assert layer_scale("embed.stem.0.weight", 2, 0.5) == 0.125
    assert layer_scale("transformer.film.net.0.weight", 2, 0.5) == 1.0
