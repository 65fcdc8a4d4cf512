"""The global-local self-attention (GLSA) block.

For a feature map ``x`` of shape ``(B, C, *spatial)``:

1. ``A = MHSA(x)`` — multi-head self-attention over all positions (Vaswani et al., 2017) with queries, keys and
   values from one 1×1 convolution and PyTorch's scaled dot-product attention, then a 1×1 output projection;
2. ``L = LocalAttn(x + A)`` — a local attention module from :data:`survival3d.layers.ATTENTION`
   (``none``, ``cbam``, ``se``, ``featureact``);
3. ``R = Fusion(A, L, x)`` — a strategy from :data:`survival3d.glsa.fusion.FUSION`;
4. ``y = Residual(x, R)`` — a strategy from :data:`survival3d.glsa.residual.RESIDUAL`.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from monai.networks.layers.factories import Conv
from torch import nn
from torch.nn import functional as F

from survival3d.glsa.fusion import FUSION
from survival3d.glsa.residual import RESIDUAL
from survival3d.layers.attention import ATTENTION, build_with_context

__all__ = ["GlobalSelfAttention", "GLSABlock"]


class GlobalSelfAttention(nn.Module):
    """Multi-head self-attention over the flattened positions of a ``(B, C, *spatial)`` map.

    ``q, k, v = split(W_qkv x)`` (1×1 convolution), ``softmax(q kᵀ / √d) v`` per head via
    :func:`torch.nn.functional.scaled_dot_product_attention`, heads merged and projected by a 1×1 convolution.
    """

    def __init__(self, channels: int, num_heads: int = 8, spatial_dims: int = 2, *, attn_drop: float = 0.0):
        super().__init__()
        if num_heads < 1 or channels % num_heads != 0:
            raise ValueError(f"channels {channels} should be divisible by num_heads {num_heads}.")
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop}.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.num_heads, self.attn_drop = num_heads, attn_drop
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj = conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b (three h d) ... -> three b h (...) d", three=3, h=self.num_heads)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        o = rearrange(o, "b h n d -> b (h d) n").reshape(x.shape)
        return self.proj(o)


class GLSABlock(nn.Module):
    """Global-local self-attention block with configurable local attention, fusion and residual.

    Args:
        channels: feature channels ``C`` (input and output).
        num_heads: heads of the global self-attention (must divide ``channels``); also offered to fusion
            strategies that take ``num_heads`` (``cross_attn``).
        attn_type: local attention: a name in ``ATTENTION`` or ``{"name": ..., **options}``.
        fusion_strategy: a name in ``FUSION`` or a spec mapping.
        residual_strategy: a name in ``RESIDUAL`` or a spec mapping.
        spatial_dims: 2 for images, 3 for volumes.
        img_size: feature-map edge, needed up front by ``featureact`` (else inferred at the first forward).
        attn_drop: dropout on the global attention weights while training.

    Raises:
        ValueError: ``channels`` not divisible by ``num_heads``, bad ``spatial_dims``.
        ConfigError: an unknown strategy name or option.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        attn_type: Any = "cbam",
        fusion_strategy: Any = "original",
        residual_strategy: Any = "original",
        *,
        spatial_dims: int = 2,
        img_size: int | None = None,
        attn_drop: float = 0.0,
    ):
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}.")
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        self.channels, self.spatial_dims = channels, spatial_dims
        self.global_attn = GlobalSelfAttention(channels, num_heads, spatial_dims, attn_drop=attn_drop)
        self.local_attn = build_with_context(ATTENTION, attn_type, channels=channels, spatial_dims=spatial_dims, img_size=img_size)
        self.fusion = build_with_context(FUSION, fusion_strategy, channels=channels, spatial_dims=spatial_dims, num_heads=num_heads)
        self.residual = build_with_context(RESIDUAL, residual_strategy, channels=channels, spatial_dims=spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.channels:
            raise ValueError(f"GLSABlock expects (B, {self.channels}, *{self.spatial_dims} dims), got {tuple(x.shape)}.")
        a = self.global_attn(x)
        l = self.local_attn(x + a)  # noqa: E741
        r = self.fusion(a, l, x)
        return self.residual(x, r)

    def count_parameters(self) -> dict[str, int]:
        """Trainable parameter counts: ``total`` and per part (``global_attn``, ``local_attn``, ``fusion``, ``residual``)."""

        def n(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters() if p.requires_grad and not isinstance(p, nn.parameter.UninitializedParameter))

        parts = {k: n(getattr(self, k)) for k in ("global_attn", "local_attn", "fusion", "residual")}
        return {"total": n(self), **parts}
