"""FiLM (identity at init, modulation), the transformer block and WindowTransformer3D."""

import itertools

import pytest
import torch

from survival3d.models.blocks import CovariateEmbedding, FiLM, WindowTransformerBlock3D
from survival3d.models.nets import WindowTransformer3D


def test_film_identity_at_init():
    film = FiLM(16, 3, num_numeric=2, cardinalities=[3, 5])
    gamma, beta = film(torch.randn(4, 2) * 10, torch.stack([torch.randint(0, 3, (4,)), torch.randint(0, 5, (4,))], 1))
    assert gamma.shape == beta.shape == (4, 3, 16)
    assert torch.equal(gamma, torch.ones_like(gamma)) and torch.equal(beta, torch.zeros_like(beta))
    x = torch.randn(4, 2, 3, 2, 16)
    assert torch.equal(FiLM.modulate(x, gamma[:, 0], beta[:, 0]), x)


def test_film_modulates_after_training_step():
    film = FiLM(8, 2, num_numeric=1)
    torch.nn.init.normal_(film.to_film.weight)
    cov = torch.tensor([[-1.0], [1.0]])
    gamma, beta = film(cov)
    assert not torch.allclose(gamma[0], gamma[1])
    x = torch.ones(2, 1, 1, 1, 8)
    torch.testing.assert_close(FiLM.modulate(x, gamma[:, 1], beta[:, 1])[:, 0, 0, 0], gamma[:, 1] + beta[:, 1])


def test_transformer_with_film_equals_without_at_init():
    a = WindowTransformer3D(12, 2, 3, 2, num_numeric=2, cardinalities=[4]).eval()
    b = WindowTransformer3D(12, 2, 3, 2).eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("film.")})
    x = torch.randn(2, 12, 4, 4, 4)
    with torch.no_grad():
        ya, _ = a(x, torch.randn(2, 2), torch.randint(0, 4, (2, 1)))
        yb, _ = b(x)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)


def test_film_off_ignores_covariates():
    t = WindowTransformer3D(12, 2, 3, 2, num_numeric=2, film=False)
    assert t.film is None
    t(torch.randn(1, 12, 4, 4, 4), torch.randn(1, 2))


@pytest.mark.parametrize("kwargs", [dict(num_numeric=-1), dict(cardinalities=[0]), dict(), dict(num_numeric=1, hidden=0)])
def test_encoder_ill_arguments(kwargs):
    with pytest.raises(ValueError):
        CovariateEmbedding(**kwargs)


def test_encoder_bad_inputs():
    enc = CovariateEmbedding(2, [3])
    with pytest.raises(ValueError, match="cov_num"):
        enc(None, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="cov_cat"):
        enc(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))


@pytest.mark.parametrize("grid,window,shift", list(itertools.product([(4, 4, 4), (3, 5, 6), (1, 2, 9)], [2, 4],
                                                                      [False, True])))
def test_block_shapes(grid, window, shift):
    blk = WindowTransformerBlock3D(12, 3, window, shift=shift, drop_path=0.1)
    x = torch.randn(2, *grid, 12)
    assert blk(x, torch.ones(2, 12), torch.zeros(2, 12)).shape == x.shape


@pytest.mark.parametrize("kwargs", [dict(mlp_ratio=0), dict(drop_path=1.0), dict(num_heads=5)])
def test_block_ill_arguments(kwargs):
    with pytest.raises(ValueError):
        WindowTransformerBlock3D(**{"dim": 12, "num_heads": 3, **kwargs})


def test_block_bad_input():
    with pytest.raises(ValueError, match="channels-last"):
        WindowTransformerBlock3D(12, 3)(torch.randn(1, 12, 4, 4, 4))


@pytest.mark.parametrize("depth,global_residual", [(1, True), (3, False)])
def test_transformer_features_and_residual(depth, global_residual):
    t = WindowTransformer3D(12, depth, 3, 2, global_residual=global_residual).eval()
    x = torch.randn(2, 12, 4, 6, 4)
    with torch.no_grad():
        y, feats = t(x)
    assert y.shape == x.shape and len(feats) == depth and all(f.shape == x.shape for f in feats)
    torch.testing.assert_close(y, feats[-1] + x if global_residual else feats[-1])
    assert [b.shift for b in t.blocks] == [i % 2 == 1 for i in range(depth)]


def test_transformer_locality():
    """One block of non-shifted 2^3 windows: a change in one window leaves tokens in other windows untouched."""
    t = WindowTransformer3D(12, 1, 3, 2, global_residual=False).eval()
    x = torch.randn(1, 12, 4, 4, 4)
    y = x.clone()
    y[..., 0, 0, 0] += 1
    with torch.no_grad():
        diff = (t(x)[0] - t(y)[0]).abs().sum(1)[0]
    assert diff[:2, :2, :2].sum() > 0 and diff[2:].sum() == 0 and diff[:, 2:].sum() == 0


def test_checkpointing_same_outputs_and_grads():
    a = WindowTransformer3D(12, 2, 3, 2, num_numeric=1)
    torch.nn.init.normal_(a.film.to_film.weight, std=0.1)
    b = WindowTransformer3D(12, 2, 3, 2, num_numeric=1, use_checkpoint=True)
    b.load_state_dict(a.state_dict())
    x, cov = torch.randn(2, 12, 4, 4, 4), torch.randn(2, 1)
    a(x, cov)[0].square().sum().backward()
    b(x, cov)[0].square().sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


@pytest.mark.parametrize("kwargs", [dict(depth=0), dict(drop_path=-0.1)])
def test_transformer_ill_arguments(kwargs):
    with pytest.raises(ValueError):
        WindowTransformer3D(**{"dim": 12, "depth": 2, "num_heads": 3, **kwargs})


@pytest.mark.parametrize("kwargs", [dict(channels=0, num_blocks=2, num_numeric=1), dict(channels=8, num_blocks=0,
                                                                                        num_numeric=1),
                                    dict(channels=8, num_blocks=2)])
def test_film_ill_arguments(kwargs):
    with pytest.raises(ValueError):
        FiLM(**kwargs)


def test_film_state_dict_keys_unchanged():
    """Checkpoints store the covariate embedding under ``encoder.`` (its attribute name, kept across renames)."""
    keys = set(FiLM(4, 2, num_numeric=1, cardinalities=[3]).state_dict())
    assert {"encoder.embeddings.0.weight", "encoder.mlp.0.weight", "to_film.weight"} <= keys
