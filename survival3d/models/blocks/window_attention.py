"""3D (shifted-)window multi-head self-attention on fused scaled-dot-product-attention kernels.

Windows as in Swin Transformer (Liu et al., ICCV 2021) and its 3D form, Video Swin Transformer (Liu et al.,
CVPR 2022): tokens attend only within non-overlapping windows of ``window_size`` cubelets; alternate blocks shift
the grid by half a window (cyclic roll) and mask pairs that were not neighbours before the roll. The attention
itself is one :func:`torch.nn.functional.scaled_dot_product_attention` call per chunk of windows, with or without
grad, so flash / memory-efficient / cuDNN kernels run in training. The relative position bias and all masks are
passed to SDPA as one additive float ``attn_mask``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = [
    "WindowAttention3D",
    "as_triple",
    "effective_window",
    "window_partition",
    "window_reverse",
    "window_attention_mask",
    "MAX_WINDOWS_PER_CALL",
]

#: the largest number of windows sent to one SDPA call. At 256^3 x batch 2, a single call over 65,536 windows
#: failed inside PyTorch's cuDNN attention backend; chunks of at most this many windows run.
MAX_WINDOWS_PER_CALL = 32768


def as_triple(v: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """``4 -> (4, 4, 4)``; a length-3 sequence of positive ints passes through."""
    t = (int(v),) * 3 if isinstance(v, (int,)) else tuple(int(a) for a in v)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"{name} must be a positive int or 3 positive ints, got {v!r}.")
    return t


def effective_window(grid: Sequence[int], window: Sequence[int], shift: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Window and shift actually used on a feature map of size ``grid``.

    A window larger than the map along an axis is clamped to the map (the whole axis is one window) and that
    axis is not shifted, as in Swin.
    """
    win = tuple(min(w, g) for w, g in zip(window, grid))
    sh = tuple(w // 2 if (shift and g > w) else 0 for w, g in zip(win, grid))
    return win, sh


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, D, H, W, C) with D, H, W multiples of ``window`` -> (B * nW, wd * wh * ww, C), windows batch-major."""
    wd, wh, ww = window
    return rearrange(x, "b (nd wd) (nh wh) (nw ww) c -> (b nd nh nw) (wd wh ww) c", wd=wd, wh=wh, ww=ww)


def window_reverse(windows: torch.Tensor, window: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, N, C) -> (B, D, H, W, C) for a padded ``grid`` (D, H, W)."""
    wd, wh, ww = window
    nd, nh, nw = (g // w for g, w in zip(grid, window))
    return rearrange(windows, "(b nd nh nw) (wd wh ww) c -> b (nd wd) (nh wh) (nw ww) c",
                     nd=nd, nh=nh, nw=nw, wd=wd, wh=wh, ww=ww)


def window_attention_mask(grid: Sequence[int], padded: Sequence[int], window: Sequence[int], shift: Sequence[int],
                          key_valid: torch.Tensor | None = None, device=None) -> torch.Tensor | None:
    """Which token pairs may attend inside each window, or ``None`` when every pair may.

    Args:
        grid: the real feature-map size (D, H, W).
        padded: ``grid`` padded up to multiples of ``window``.
        window, shift: as returned by :func:`effective_window`.
        key_valid: optional (D, H, W) bool; False tokens (e.g. cubelets that are mostly padding) are never used
            as keys by other tokens.

    Returns:
        (nW, N, N) bool, True where query i may attend key j: both lie in the same region of the cyclically
        shifted grid, and j is a real token (padding and invalid tokens are keys only for each other, so no row is
        ever empty and real tokens never see them).
    """
    has_pad = tuple(padded) != tuple(grid)
    if not any(shift) and not has_pad and key_valid is None:
        return None
    label = torch.zeros(*padded, device=device, dtype=torch.int32)
    if any(shift):
        axes = []
        for p, w, s in zip(padded, window, shift):
            a = torch.zeros(p, device=device, dtype=torch.int32)
            if s:
                a[p - w:p - s] = 1
                a[p - s:] = 2
            axes.append(a)
        label = axes[0][:, None, None] * 9 + axes[1][None, :, None] * 3 + axes[2][None, None, :]
    pad = torch.ones(*padded, device=device, dtype=torch.bool)
    pad[: grid[0], : grid[1], : grid[2]] = False
    if key_valid is not None:
        pad[: grid[0], : grid[1], : grid[2]] |= ~key_valid.to(device=device, dtype=torch.bool)
    if any(shift):
        pad = torch.roll(pad, shifts=tuple(-s for s in shift), dims=(0, 1, 2))
    lab = window_partition(label[None, ..., None], window)[..., 0]  # (nW, N)
    pw = window_partition(pad[None, ..., None], window)[..., 0]
    same = lab[:, :, None] == lab[:, None, :]
    return same & (~pw[:, None, :] | pw[:, :, None])


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside 3D windows, on SDPA.

    Args:
        dim: token channels.
        num_heads: attention heads; ``dim`` must be divisible by it.
        window_size: the largest window (cubelets per axis); smaller windows (clamped to small maps) reuse the
            same relative-position table.
        qkv_bias: bias in the qkv projection.
        rel_pos_bias: learn a relative position bias per head (Swin; a table of (2wd-1)(2wh-1)(2ww-1) x heads).
        attn_drop: attention dropout (training only).
        proj_drop: dropout after the output projection.
        max_windows_per_call: windows per SDPA call (chunks above it), see :data:`MAX_WINDOWS_PER_CALL`.

    Forward:
        x: (B * nW, N, dim) windows, batch-major (as from :func:`window_partition`).
        window: the effective window (N = its volume); defaults to ``window_size``.
        mask: optional (nW, N, N) bool from :func:`window_attention_mask`.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int | Sequence[int] = 4, *, qkv_bias: bool = True,
                 rel_pos_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 max_windows_per_call: int = MAX_WINDOWS_PER_CALL):
        super().__init__()
        if dim < 1 or num_heads < 1:
            raise ValueError(f"dim {dim} and num_heads {num_heads} must be positive.")
        if dim % num_heads:
            raise ValueError(f"dim {dim} should be divisible by num_heads {num_heads}.")
        if not 0.0 <= attn_drop < 1.0 or not 0.0 <= proj_drop < 1.0:
            raise ValueError(f"attn_drop {attn_drop} and proj_drop {proj_drop} must be in [0, 1).")
        if max_windows_per_call < 1:
            raise ValueError(f"max_windows_per_call must be >= 1, got {max_windows_per_call}.")
        self.dim, self.num_heads = dim, num_heads
        self.window_size = as_triple(window_size, "window_size")
        self.attn_drop = float(attn_drop)
        self.max_windows_per_call = int(max_windows_per_call)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if rel_pos_bias:
            size = 1
            for w in self.window_size:
                size *= 2 * w - 1
            self.rel_pos_table = nn.Parameter(torch.zeros(size, num_heads))
            nn.init.trunc_normal_(self.rel_pos_table, std=0.02)
        else:
            self.register_parameter("rel_pos_table", None)
        self._index_cache: dict[tuple, torch.Tensor] = {}

    def relative_position_index(self, window: Sequence[int], device=None) -> torch.Tensor:
        """(N, N) long: row of the bias table for each token pair of a window (any window <= ``window_size``)."""
        key = (tuple(window), str(device))
        idx = self._index_cache.get(key)
        if idx is None:
            # a cached table must be a normal tensor even when first built under torch.inference_mode, or later
            # training steps fail to save it for backward
            with torch.inference_mode(False):
                coords = torch.stack(torch.meshgrid(*[torch.arange(w, device=device) for w in window], indexing="ij"))
                coords = coords.flatten(1)  # (3, N)
                rel = coords[:, :, None] - coords[:, None, :]  # (3, N, N), each in [-(w-1), w-1]
                Wd, Wh, Ww = self.window_size
                idx = (rel[0] + Wd - 1) * (2 * Wh - 1) * (2 * Ww - 1) + (rel[1] + Wh - 1) * (2 * Ww - 1) + (rel[2] + Ww - 1)
            self._index_cache[key] = idx
        return idx

    def attn_bias(self, window: Sequence[int], mask: torch.Tensor | None, batch: int, dtype,
                  device) -> torch.Tensor | None:
        """The additive float ``attn_mask`` for SDPA: (1 or B * nW, 1 or heads, N, N), or ``None``."""
        bias = None
        if self.rel_pos_table is not None:
            n = window[0] * window[1] * window[2]
            idx = self.relative_position_index(window, device)
            bias = self.rel_pos_table[idx.reshape(-1)].reshape(n, n, self.num_heads).permute(2, 0, 1)[None]
            bias = bias.to(dtype)
        if mask is None:
            return bias
        neg = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, float("-inf"))[:, None]
        full = neg if bias is None else neg + bias  # (nW, 1 or h, N, N)
        return full.unsqueeze(0).expand(batch, *full.shape).flatten(0, 1)

    def forward(self, x: torch.Tensor, window: Sequence[int] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        window = self.window_size if window is None else tuple(window)
        bw, n, c = x.shape
        if n != window[0] * window[1] * window[2] or c != self.dim:
            raise ValueError(f"expected windows of {window} tokens x {self.dim} channels, got {tuple(x.shape)}.")
        if any(w > m for w, m in zip(window, self.window_size)):
            raise ValueError(f"window {window} is larger than window_size {self.window_size}.")
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        batch = 1
        if mask is not None:
            if mask.shape[0] == 0 or bw % mask.shape[0]:
                raise ValueError(f"{bw} windows are not a whole number of batches of {mask.shape[0]} masks.")
            batch = bw // mask.shape[0]
        bias = self.attn_bias(window, mask, batch, q.dtype, x.device)
        drop = self.attn_drop if self.training else 0.0
        step = self.max_windows_per_call
        if bw <= step:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)
        else:
            chunks = []
            for s in range(0, bw, step):
                b = bias if bias is None or bias.shape[0] == 1 else bias[s:s + step]
                chunks.append(F.scaled_dot_product_attention(q[s:s + step], k[s:s + step], v[s:s + step],
                                                             attn_mask=b, dropout_p=drop))
            out = torch.cat(chunks, 0)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.proj_drop(self.proj(out))
