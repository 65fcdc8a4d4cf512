"""SDPA window attention against a naive dense softmax(QK^T)V reference; chunking; masks; ill arguments."""

import itertools

import pytest
import torch

from survival3d.models.blocks import (
    WindowAttention3D,
    WindowTransformerBlock3D,
    effective_window,
    window_attention_mask,
    window_partition,
    window_reverse,
)


def naive_window_attention(attn: WindowAttention3D, x: torch.Tensor, mask: torch.Tensor | None,
                           window) -> torch.Tensor:
    """softmax(QK^T / sqrt(d) + bias + mask) V with explicit matmuls, bias looked up per (dz, dy, dx)."""
    bw, n, c = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).reshape(bw, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / (c // h) ** 0.5
    if attn.rel_pos_table is not None:
        coords = list(itertools.product(*[range(w) for w in window]))
        W = attn.window_size
        bias = torch.empty(h, n, n)
        for i, a in enumerate(coords):
            for j, b in enumerate(coords):
                d = [a[t] - b[t] + W[t] - 1 for t in range(3)]
                bias[:, i, j] = attn.rel_pos_table[(d[0] * (2 * W[1] - 1) + d[1]) * (2 * W[2] - 1) + d[2]]
        scores = scores + bias
    if mask is not None:
        nw = mask.shape[0]
        scores = scores.reshape(bw // nw, nw, h, n, n).masked_fill(~mask[None, :, None], float("-inf"))
        scores = scores.reshape(bw, h, n, n)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c)
    return attn.proj(out)


@pytest.mark.parametrize("rel_pos_bias", [True, False])
@pytest.mark.parametrize("window", [(2, 2, 2), (2, 3, 4)])
@pytest.mark.parametrize("use_mask", [False, True])
def test_matches_naive_reference(rel_pos_bias, window, use_mask):
    attn = WindowAttention3D(24, 3, window, rel_pos_bias=rel_pos_bias).eval()
    if rel_pos_bias:
        torch.nn.init.normal_(attn.rel_pos_table, std=1.0)
    n = window[0] * window[1] * window[2]
    nw, b = 3, 2
    x = torch.randn(b * nw, n, 24)
    mask = None
    if use_mask:
        mask = torch.rand(nw, n, n) > 0.5
        mask |= torch.eye(n, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, window, mask), naive_window_attention(attn, x, mask, window),
                                   rtol=1e-5, atol=1e-5)


def test_smaller_window_reuses_table():
    attn = WindowAttention3D(12, 2, 4).eval()
    torch.nn.init.normal_(attn.rel_pos_table)
    x = torch.randn(2, 2 * 3 * 4, 12)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, (2, 3, 4)), naive_window_attention(attn, x, None, (2, 3, 4)),
                                   rtol=1e-5, atol=1e-5)


def test_sdpa_used_under_grad(monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*a, **k):
        calls.append(torch.is_grad_enabled())
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    attn = WindowAttention3D(12, 2, 2).train()
    attn(torch.randn(4, 8, 12)).sum().backward()
    assert calls == [True]


@pytest.mark.parametrize("shift", [False, True])
def test_chunked_equals_unchunked(shift):
    torch.manual_seed(torch.seed() % 2**31)
    blk = WindowTransformerBlock3D(12, 2, 2, shift=shift).eval()
    chunked = WindowTransformerBlock3D(12, 2, 2, shift=shift, max_windows_per_call=3).eval()
    chunked.load_state_dict(blk.state_dict())
    x = torch.randn(2, 5, 4, 6, 12)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        a = blk(x)
        torch.nn.functional.scaled_dot_product_attention = lambda *q, **k: calls.append(1) or real(*q, **k)
        try:
            b = chunked(x)
        finally:
            torch.nn.functional.scaled_dot_product_attention = real
    assert len(calls) > 1
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def dense_shifted_reference(blk: WindowTransformerBlock3D, x: torch.Tensor, key_valid=None) -> torch.Tensor:
    """The attention branch of a block computed densely over the whole (padded) grid.

    Token pairs interact when, after the cyclic roll, they lie in the same window and did not wrap around
    relative to each other; keys must be real, valid tokens. Independent of the partition/label code.
    """
    attn = blk.attn
    bsz, *grid, c = x.shape
    win, sh = effective_window(grid, blk.window_size, blk.shift)
    padded = [g + (-g) % w for g, w in zip(grid, win)]
    xp = torch.nn.functional.pad(x, (0, 0, 0, padded[2] - grid[2], 0, padded[1] - grid[1], 0, padded[0] - grid[0]))
    coords = torch.stack(torch.meshgrid(*[torch.arange(p) for p in padded], indexing="ij"), -1).reshape(-1, 3)
    rolled = (coords - torch.tensor(sh)) % torch.tensor(padded)
    same_win = ((rolled[:, None] // torch.tensor(win)) == (rolled[None] // torch.tensor(win))).all(-1)
    no_wrap = ((rolled[:, None] - rolled[None]) == (coords[:, None] - coords[None])).all(-1)
    real = (coords < torch.tensor(grid)).all(-1)
    if key_valid is not None:
        kv = torch.zeros(padded, dtype=torch.bool)
        kv[: grid[0], : grid[1], : grid[2]] = key_valid
        real &= kv.reshape(-1)
    allowed = same_win & no_wrap & real[None, :]
    h = attn.num_heads
    tok = xp.reshape(bsz, -1, c)
    q, k, v = attn.qkv(tok).reshape(bsz, -1, 3, h, c // h).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / (c // h) ** 0.5
    if attn.rel_pos_table is not None:
        W = attn.window_size
        d = coords[:, None] - coords[None] + torch.tensor(W) - 1
        d = d.clamp(min=0)  # pairs outside a window are masked anyway
        idx = (d[..., 0] * (2 * W[1] - 1) + d[..., 1]) * (2 * W[2] - 1) + d[..., 2]
        idx = idx.clamp(max=attn.rel_pos_table.shape[0] - 1)
        scores = scores + attn.rel_pos_table[idx].permute(2, 0, 1)
    scores = scores.masked_fill(~allowed, float("-inf"))
    rows = allowed.any(-1)
    out = torch.where(rows[None, None, :, None], scores.softmax(-1).nan_to_num(0.0) @ v, 0.0)
    out = attn.proj(out.transpose(1, 2).reshape(bsz, *padded, c))
    return out[:, : grid[0], : grid[1], : grid[2]]


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("grid", [(4, 4, 4), (5, 6, 7), (2, 5, 3)])
@pytest.mark.parametrize("rel_pos_bias", [False, True])
def test_shifted_padded_block_attention_matches_dense_reference(shift, grid, rel_pos_bias):
    blk = WindowTransformerBlock3D(12, 3, (4, 2, 4), shift=shift, rel_pos_bias=rel_pos_bias).eval()
    if rel_pos_bias:
        torch.nn.init.normal_(blk.attn.rel_pos_table)
    x = torch.randn(2, *grid, 12)
    key_valid = torch.rand(grid) > 0.3 if grid == (5, 6, 7) else None
    with torch.no_grad():
        got = blk.attention(x, key_valid)
        want = dense_shifted_reference(blk, x, key_valid)
    if key_valid is not None:  # tokens that are themselves invalid may see other tokens: compare valid ones
        got, want = got[:, key_valid], want[:, key_valid]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_partition_roundtrip_and_mask_none():
    x = torch.randn(2, 4, 6, 8, 5)
    w = window_partition(x, (2, 3, 4))
    assert w.shape == (2 * 2 * 2 * 2, 24, 5)
    torch.testing.assert_close(window_reverse(w, (2, 3, 4), (4, 6, 8)), x)
    assert window_attention_mask((4, 6, 8), (4, 6, 8), (2, 3, 4), (0, 0, 0)) is None
    m = window_attention_mask((4, 6, 8), (4, 6, 8), (2, 3, 4), (1, 1, 2))
    assert m.shape == (8, 24, 24) and m.diagonal(dim1=1, dim2=2).all()


def test_effective_window_clamps_to_small_maps():
    assert effective_window((2, 8, 3), (4, 4, 4), True) == ((2, 4, 3), (0, 2, 0))
    assert effective_window((8, 8, 8), (4, 4, 4), False) == ((4, 4, 4), (0, 0, 0))


@pytest.mark.parametrize("kwargs", [dict(dim=10, num_heads=3), dict(dim=12, num_heads=0),
                                    dict(dim=12, num_heads=2, window_size=0), dict(dim=12, num_heads=2, attn_drop=1.0),
                                    dict(dim=12, num_heads=2, max_windows_per_call=0),
                                    dict(dim=12, num_heads=2, window_size=(2, 2))])
def test_ill_arguments(kwargs):
    with pytest.raises(ValueError):
        WindowAttention3D(**kwargs)


def test_bad_inputs():
    attn = WindowAttention3D(12, 2, 2)
    with pytest.raises(ValueError, match="windows"):
        attn(torch.randn(3, 7, 12))
    with pytest.raises(ValueError, match="larger"):
        attn(torch.randn(3, 27, 12), (3, 3, 3))
