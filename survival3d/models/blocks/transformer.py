"""A pre-norm 3D window-attention transformer block with stochastic depth, optional local attention and FiLM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import MLPBlock
from monai.networks.layers import DropPath
from torch import nn

from survival3d.layers.attention import build_gated_attention
from survival3d.models.blocks.film import FiLM
from survival3d.models.blocks.window_attention import (
    MAX_WINDOWS_PER_CALL,
    WindowAttention3D,
    as_triple,
    effective_window,
    window_attention_mask,
    window_partition,
    window_reverse,
)

__all__ = ["WindowTransformerBlock3D"]


class WindowTransformerBlock3D(nn.Module):
    """``x + DropPath(WindowAttn(LN(x)))`` then ``x + DropPath(MLP(LN(x)))`` then local attention
    ``x + α ⊙ (A(x) − x)`` on the token grid then FiLM ``γ ⊙ x + β``.

    Pre-norm residual layout as in ViT / Swin; stochastic depth (Huang et al., ECCV 2016) on both branches. The
    local attention ``A`` (SE, CBAM or FeatureAct from :data:`survival3d.layers.attention.ATTENTION`) acts on the
    channels-first token grid ``(B, C, d, h, w)`` behind a per-channel gate ``α`` that starts at 0
    (:class:`~survival3d.layers.attention.ResidualGatedAttention`), so the block is unchanged at initialisation;
    with ``attention="none"`` no module and no parameter is created.

    Args:
        dim: token channels.
        num_heads: attention heads.
        window_size: window in cubelets (clamped per axis to small feature maps).
        shift: shift the windows by half a window (use on every other block).
        mlp_ratio: MLP hidden width / dim.
        qkv_bias, rel_pos_bias, attn_drop: see :class:`WindowAttention3D`.
        drop: dropout in the MLP and after the attention projection.
        drop_path: stochastic-depth probability.
        max_windows_per_call: see :class:`WindowAttention3D`.
        attention: local attention spec, a name in ``ATTENTION`` (``none``, ``se``, ``cbam``, ``featureact``) or
            ``{"name": ..., **options}``.
        grid_size: the token grid edge (``featureact`` needs a cubic grid of a fixed size; ``None``: inferred at
            the first forward pass).

    Forward:
        x: (B, D, H, W, dim) channels-last tokens.
        gamma, beta: optional (B, dim) FiLM parameters.
        key_valid: optional (D, H, W) bool; False tokens are not used as keys (see
            :func:`window_attention_mask`).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int | Sequence[int] = 4, *, shift: bool = False,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, rel_pos_bias: bool = True, attn_drop: float = 0.0,
                 drop: float = 0.0, drop_path: float = 0.0, max_windows_per_call: int = MAX_WINDOWS_PER_CALL,
                 attention: Any = "none", grid_size: int | None = None):
        super().__init__()
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}.")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}.")
        self.window_size = as_triple(window_size, "window_size")
        self.shift = bool(shift)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, num_heads, self.window_size, qkv_bias=qkv_bias, rel_pos_bias=rel_pos_bias,
                                      attn_drop=attn_drop, proj_drop=drop, max_windows_per_call=max_windows_per_call)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, max(1, int(round(dim * mlp_ratio))), drop, act="GELU")
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        # created last and only when asked for, so the default model's parameters (and their random init) are unchanged
        self.local_attn = build_gated_attention(attention, dim, 3, img_size=grid_size)

    def attention(self, x: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Shifted-window attention over channels-last (B, D, H, W, C); returns the same shape."""
        grid = tuple(x.shape[1:4])
        win, sh = effective_window(grid, self.window_size, self.shift)
        pads = [(-g) % w for g, w in zip(grid, win)]
        if any(pads):
            x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        padded = tuple(x.shape[1:4])
        if any(sh):
            x = torch.roll(x, shifts=tuple(-s for s in sh), dims=(1, 2, 3))
        mask = window_attention_mask(grid, padded, win, sh, key_valid, device=x.device)
        x = window_reverse(self.attn(window_partition(x, win), win, mask), win, padded)
        if any(sh):
            x = torch.roll(x, shifts=sh, dims=(1, 2, 3))
        if any(pads):
            x = x[:, : grid[0], : grid[1], : grid[2]]
        return x

    def forward(self, x: torch.Tensor, gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None,
                key_valid: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 5 or x.shape[-1] != self.norm1.normalized_shape[0]:
            raise ValueError(f"expected channels-last (B, D, H, W, {self.norm1.normalized_shape[0]}) tokens, "
                             f"got {tuple(x.shape)}.")
        x = x + self.drop_path(self.attention(self.norm1(x), key_valid))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if self.local_attn is not None:
            x = self.local_attn(x.movedim(-1, 1)).movedim(1, -1)
        if gamma is not None:
            x = FiLM.modulate(x, gamma, beta)
        return x
