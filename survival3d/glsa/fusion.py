"""Fusion strategies ``R = Fusion(A, L, x)`` combining the global (``A``) and local (``L``) branches of a GLSA block.

Each strategy takes ``channels`` first and ``spatial_dims``; all map three ``(B, C, *spatial)`` tensors to one of
the same shape. Registered in :data:`FUSION` under the names the GLSA design uses.
"""

from __future__ import annotations

import torch
from einops import rearrange
from monai.networks.layers.factories import Conv, Pool
from torch import nn
from torch.nn import functional as F

from survival3d.registry import Registry

__all__ = [
    "FUSION",
    "ProductFusion",
    "GatedFusion",
    "WeightedAddFusion",
    "ChannelAttentionFusion",
    "SpatialAttentionFusion",
    "CrossAttentionFusion",
]

FUSION: Registry = Registry("fusion strategy")


def _check(channels: int, spatial_dims: int) -> None:
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}.")
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")


@FUSION.register("original")
class ProductFusion(nn.Module):
    """The original GLSA fusion, an element-wise product ``R = A ⊙ L`` (no parameters)."""

    def __init__(self, channels: int, spatial_dims: int = 2):
        super().__init__()
        _check(channels, spatial_dims)

    def forward(self, a: torch.Tensor, l: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:  # noqa: E741
        return a * l


@FUSION.register("learnable_gate")
class GatedFusion(nn.Module):
    """Highway-style gate (Srivastava et al., 2015): ``g = σ(W [A; L] + b)``, ``R = g ⊙ A + (1 − g) ⊙ L``.

    ``W`` is a 1×1 convolution, so the gate varies per channel and position; the bias starts at 0 (``g ≈ ½``).
    """

    def __init__(self, channels: int, spatial_dims: int = 2):
        super().__init__()
        _check(channels, spatial_dims)
        self.gate = Conv[Conv.CONV, spatial_dims](2 * channels, channels, 1)
        nn.init.zeros_(self.gate.bias)

    def forward(self, a: torch.Tensor, l: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:  # noqa: E741
        g = torch.sigmoid(self.gate(torch.cat([a, l], dim=1)))
        return g * a + (1 - g) * l


@FUSION.register("weighted_add")
class WeightedAddFusion(nn.Module):
    """Learnable scalar weighting (after EfficientDet's weighted feature fusion): ``R = αA + βL + γ(A ⊙ L)``.

    ``α = β = init`` and ``γ = 0`` at start, all three learned without constraints.
    """

    def __init__(self, channels: int, spatial_dims: int = 2, *, init: float = 0.5):
        super().__init__()
        _check(channels, spatial_dims)
        self.alpha = nn.Parameter(torch.tensor(float(init)))
        self.beta = nn.Parameter(torch.tensor(float(init)))
        self.gamma = nn.Parameter(torch.tensor(0.0))

    def forward(self, a: torch.Tensor, l: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:  # noqa: E741
        return self.alpha * a + self.beta * l + self.gamma * (a * l)


@FUSION.register("channel_attn")
class ChannelAttentionFusion(nn.Module):
    """SE-style channel selection between the branches (Hu et al., 2018; selective-kernel weighting).

    ``z = MLP(GAP(A + L))`` gives two logits per channel; ``w = softmax`` over the branches;
    ``R = w_A ⊙ A + w_L ⊙ L``.
    """

    def __init__(self, channels: int, spatial_dims: int = 2, *, reduction: int = 8, min_hidden: int = 4):
        super().__init__()
        _check(channels, spatial_dims)
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}.")
        hidden = max(channels // reduction, min(min_hidden, channels))
        conv = Conv[Conv.CONV, spatial_dims]
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.mlp = nn.Sequential(conv(channels, hidden, 1), nn.ReLU(inplace=True), conv(hidden, 2 * channels, 1))

    def forward(self, a: torch.Tensor, l: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:  # noqa: E741
        logits = rearrange(self.mlp(self.pool(a + l)), "b (two c) ... -> two b c ...", two=2)
        w = logits.softmax(dim=0)
        return w[0] * a + w[1] * l


@FUSION.register("spatial_attn")
class SpatialAttentionFusion(nn.Module):
    """CBAM-style spatial selection between the branches (Woo et al., 2018).

    Channel-mean and channel-max maps of ``A`` and ``L`` → a ``k``-wide convolution → two logits per position;
    ``w = softmax`` over the branches; ``R = w_A A + w_L L``.
    """

    def __init__(self, channels: int, spatial_dims: int = 2, *, kernel_size: int = 7):
        super().__init__()
        _check(channels, spatial_dims)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}.")
        self.conv = Conv[Conv.CONV, spatial_dims](4, 2, kernel_size, padding=kernel_size // 2)

    def forward(self, a: torch.Tensor, l: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:  # noqa: E741
        desc = torch.cat([a.mean(1, keepdim=True), a.amax(1, keepdim=True), l.mean(1, keepdim=True), l.amax(1, keepdim=True)], 1)
        w = self.conv(desc).softmax(dim=1)
        return w[:, :1] * a + w[:, 1:] * l


@FUSION.register("cross_attn")
class CrossAttentionFusion(nn.Module):
    """Cross-attention from the global to the local branch: ``R = A + W_o MHA(q = W_q A, k = W_k L, v = W_v L)``.

    Every position of ``A`` attends to all positions of ``L`` (scaled dot-product attention, ``num_heads`` heads).
    """

    def __init__(self, channels: int, spatial_dims: int = 2, *, num_heads: int = 4):
        super().__init__()
        _check(channels, spatial_dims)
        if num_heads < 1 or channels % num_heads != 0:
            raise ValueError(f"channels {channels} should be divisible by num_heads {num_heads}.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.num_heads = num_heads
        self.q = conv(channels, channels, 1)
        self.kv = conv(channels, 2 * channels, 1)
        self.out = conv(channels, channels, 1)

    def forward(self, a: torch.Tensor, l: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:  # noqa: E741
        spatial = a.shape[2:]
        q = rearrange(self.q(a), "b (h d) ... -> b h (...) d", h=self.num_heads)
        k, v = rearrange(self.kv(l), "b (two h d) ... -> two b h (...) d", two=2, h=self.num_heads)
        o = F.scaled_dot_product_attention(q, k, v)
        o = rearrange(o, "b h n d -> b (h d) n").reshape(a.shape[0], -1, *spatial)
        return a + self.out(o)
