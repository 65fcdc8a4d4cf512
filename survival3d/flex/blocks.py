"""Dimension-agnostic building blocks shared by the logits methods (2D and 3D through MONAI's factories)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from monai.networks.blocks import Convolution
from monai.networks.layers import Conv
from torch import nn

__all__ = ["ConvStack", "SpatialAttentionBlock", "PatchTransformer", "INTERP_MODE"]

INTERP_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")


class ConvStack(nn.Sequential):
    """``n_blocks`` × (3^d conv → batch norm → ReLU), then a 1^d projection to ``out_channels`` (no norm/act).

    Args:
        spatial_dims: 2 or 3.
        in_channels / out_channels: channel counts.
        hidden: width of the hidden blocks (default ``out_channels``).
        n_blocks: number of hidden blocks (≥ 0; 0 leaves only the projection).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, hidden: int | None = None,
                 n_blocks: int = 2):
        _check_dims(spatial_dims)
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}.")
        hidden = hidden or out_channels
        layers, c = [], in_channels
        for _ in range(n_blocks):
            layers.append(Convolution(spatial_dims, c, hidden, kernel_size=3, act="relu", norm="batch"))
            c = hidden
        layers.append(Convolution(spatial_dims, c, out_channels, kernel_size=1, conv_only=True))
        super().__init__(*layers)


class SpatialAttentionBlock(nn.Module):
    """CBAM spatial attention: ``x · σ(conv([mean_c x, max_c x]))`` (Woo et al., "CBAM", ECCV 2018)."""

    def __init__(self, spatial_dims: int, *, kernel_size: int = 7):
        super().__init__()
        _check_dims(spatial_dims)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}.")
        self.conv = Conv[Conv.CONV, spatial_dims](2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(desc))


class PatchTransformer(nn.Module):
    """Pre-norm transformer encoder over patch tokens with a learnable positional grid resized to the input.

    Tokens are ``(b, n, dim)``; the positional grid ``(1, dim, g, g[, g])`` is interpolated to the token grid so
    one module serves every input size, in 2D and 3D.
    """

    def __init__(self, spatial_dims: int, dim: int, *, depth: int = 1, heads: int = 4, mlp_ratio: float = 2.0,
                 dropout: float = 0.0, pos_grid: int = 8):
        super().__init__()
        _check_dims(spatial_dims)
        if dim % heads:
            raise ValueError(f"dim {dim} should be divisible by heads {heads}.")
        if depth < 1 or pos_grid < 1:
            raise ValueError(f"depth and pos_grid must be >= 1, got depth={depth}, pos_grid={pos_grid}.")
        self.spatial_dims = spatial_dims
        self.pos = nn.Parameter(torch.zeros(1, dim, *([pos_grid] * spatial_dims)))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def positional(self, grid: torch.Size) -> torch.Tensor:
        """``(1, n, dim)`` positional embedding for a token grid of shape ``grid``."""
        pos = F.interpolate(self.pos, size=tuple(grid), mode=INTERP_MODE[self.spatial_dims], align_corners=False)
        return rearrange(pos, "1 d ... -> 1 (...) d")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder(tokens))
