"""Logits methods: map a FlexLayer's convolution and max-pooling outputs to per-element logits.

Every method is an ``nn.Module`` registered in :data:`LOGITS`, built by :class:`~survival3d.flex.layer.FlexLayer`
as ``LOGITS.build(spec, channels=c, spatial_dims=d)`` and called as ``method(conv, pool)`` with two tensors of shape
``(b, c, *spatial)``; it returns logits of the same shape (or broadcastable to it). Positive logits favour the
convolution branch once a masking function (:mod:`survival3d.flex.masking`) turns them into a mask.

``supported_dims`` says which FlexLayer dimensionalities a method supports (all support 2D and 3D; ``unet`` makes
the channel axis an extra spatial axis, so in 3D it runs per depth slice). ``joint = True`` marks a mechanism that fixes the mask
itself (``channelwise_maxpool``): FlexLayer then ignores its masking function and uses the hard step ``1[z ≥ 0]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from monai.networks.layers import Conv
from torch import nn

from survival3d.flex.blocks import ConvStack, PatchTransformer, SpatialAttentionBlock
from survival3d.registry import Registry

__all__ = ["LOGITS", "LogitsMethod"]

LOGITS: Registry = Registry("logits method")


class LogitsMethod(nn.Module):
    """Base class: ``forward(conv, pool) -> logits``; subclasses set ``supported_dims`` and ``joint``."""

    supported_dims: tuple[int, ...] = (2, 3)
    joint: bool = False

    def __init__(self, channels: int, spatial_dims: int = 2):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}.")
        if spatial_dims not in self.supported_dims:
            raise ValueError(
                f"{type(self).__name__} supports spatial_dims {self.supported_dims}, got {spatial_dims}."
            )
        self.channels = channels
        self.spatial_dims = spatial_dims


@LOGITS.register("threshold")
class Threshold(LogitsMethod):
    """Baseline: ``pool − τ`` with a learnable per-channel threshold tensor ``τ`` (initialised to ``init``)."""

    def __init__(self, channels: int, spatial_dims: int = 2, *, init: float = 0.0):
        super().__init__(channels, spatial_dims)
        self.tau = nn.Parameter(torch.full((1, channels, *([1] * spatial_dims)), float(init)))

    def forward(self, conv: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        return pool - self.tau


@LOGITS.register("spatial_attention")
class SpatialAttention(LogitsMethod):
    """``n_blocks`` (1–3) CBAM spatial-attention blocks on the conv tensor, then a 1×1 conv → logits."""

    def __init__(self, channels: int, spatial_dims: int = 2, *, n_blocks: int = 1, kernel_size: int = 7):
        super().__init__(channels, spatial_dims)
        if not 1 <= n_blocks <= 3:
            raise ValueError(f"spatial_attention uses 1 to 3 blocks, got n_blocks={n_blocks}.")
        self.blocks = nn.Sequential(*(SpatialAttentionBlock(spatial_dims, kernel_size=kernel_size)
                                      for _ in range(n_blocks)))
        self.proj = Conv[Conv.CONV, spatial_dims](channels, channels, 1)

    def forward(self, conv: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        return self.proj(self.blocks(conv))


class _Fused(LogitsMethod):
    """Fuse conv and pool element-wise (``fuse``), then a conv stack → logits."""

    def __init__(self, channels: int, spatial_dims: int = 2, *, n_blocks: int = 2, hidden: int | None = None):
        super().__init__(channels, spatial_dims)
        self.net = ConvStack(spatial_dims, channels, channels, hidden=hidden, n_blocks=n_blocks)

    def forward(self, conv: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        return self.net(self.fuse(conv, pool))


@LOGITS.register("spatial_attention_sum")
class SpatialAttentionSum(_Fused):
    """Element-wise sum ``conv + pool``, then ``n_blocks`` conv blocks and a 1×1 conv → logits."""

    @staticmethod
    def fuse(conv: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        return conv + pool


@LOGITS.register("spatial_attention_mul")
class SpatialAttentionMul(_Fused):
    """Element-wise product ``conv ⊙ pool``, then ``n_blocks`` conv blocks and a 1×1 conv → logits."""

    @staticmethod
    def fuse(conv: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        return conv * pool


class _TwoBranch(LogitsMethod):
    """Process conv and pool by separate conv stacks ``a = f(conv)``, ``b = g(pool)``; ``combine(a, b)``."""

    def __init__(self, channels: int, spatial_dims: int = 2, *, n_blocks: int = 1, hidden: int | None = None):
        super().__init__(channels, spatial_dims)
        self.conv_net = ConvStack(spatial_dims, channels, channels, hidden=hidden, n_blocks=n_blocks)
        self.pool_net = ConvStack(spatial_dims, channels, channels, hidden=hidden, n_blocks=n_blocks)

    def forward(self, conv: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        return self.combine(self.conv_net(conv), self.pool_net(pool))


@LOGITS.register("spatial_attention_cmp")
class SpatialAttentionCmp(_TwoBranch):
    """Separate conv stacks, then per-element softmax pooling between them: ``Σ_i softmax(a, b)_i · (a, b)_i``."""

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        pair = torch.stack([a, b])
        return (torch.softmax(pair, dim=0) * pair).sum(dim=0)


@LOGITS.register("spatial_attention_gated")
class SpatialAttentionGated(_TwoBranch):
    """Separate conv stacks summed through a channel-wise sigmoid gate ``g·a + (1 − g)·b``, ``g`` from pooled
    descriptors of both (squeeze-and-excitation style)."""

    def __init__(self, channels: int, spatial_dims: int = 2, *, n_blocks: int = 1, hidden: int | None = None):
        super().__init__(channels, spatial_dims, n_blocks=n_blocks, hidden=hidden)
        self.gate = nn.Linear(2 * channels, channels)

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([a, b], dim=1).flatten(2).mean(dim=2)
        g = torch.sigmoid(self.gate(desc)).view(*desc.shape[:1], self.channels, *([1] * self.spatial_dims))
        return g * a + (1 - g) * b


@LOGITS.register("spatial_attention_weighted_sum")
class SpatialAttentionWeightedSum(_TwoBranch):
    """Separate conv stacks combined by a trainable per-channel weighted sum ``α ⊙ a + β ⊙ b`` (α = β = 1 at init)."""

    def __init__(self, channels: int, spatial_dims: int = 2, *, n_blocks: int = 1, hidden: int | None = None):
        super().__init__(channels, spatial_dims, n_blocks=n_blocks, hidden=hidden)
        shape = (1, channels, *([1] * spatial_dims))
        self.alpha = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.ones(shape))

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.alpha * a + self.beta * b


@LOGITS.register("unet")
class UNetLogits(LogitsMethod):
    """The research notes' U-Net method: conv and pool stacked as a 2-channel **3D** volume whose depth axis is the
    feature-channel axis, through MONAI's 3D :class:`monai.networks.nets.UNet` → ``(b, 1, c, h, w)`` → logits.

    ``features`` are the U-Net's widths per level (the last is the bottleneck; one stride-2 down-sampling between
    levels); the volume is zero-padded to a multiple of ``2^(levels−1)`` on each axis and the output cropped back,
    so any channel count and map size works. ``num_res_units`` > 0 uses MONAI's residual units.

    For a 3D FlexLayer the channel-as-depth volume would be 4D; there the U-Net runs on every depth slice
    separately (the FlexLayer's depth axis folded into the batch): ``(b·d, 2, c, h, w)``. Mixing across depth
    then comes only from the convolution branch itself, not from the logits method.
    """

    def __init__(self, channels: int, spatial_dims: int = 2, *, features: tuple[int, ...] = (8, 16),
                 num_res_units: int = 0):
        super().__init__(channels, spatial_dims)
        from monai.networks.nets import UNet

        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"features needs >= 2 positive widths (encoder levels + bottleneck), got {features}.")
        if num_res_units < 0:
            raise ValueError(f"num_res_units must be >= 0, got {num_res_units}.")
        self.multiple = 2 ** (len(features) - 1)
        self.unet = UNet(spatial_dims=3, in_channels=2, out_channels=1, channels=features,
                         strides=(2,) * (len(features) - 1), num_res_units=num_res_units, norm="batch")

    def _run(self, volume: torch.Tensor) -> torch.Tensor:
        size = volume.shape[2:]
        extra = [(-s) % self.multiple for s in size]
        if any(extra):
            volume = F.pad(volume, [p for e in reversed(extra) for p in (0, e)])
        out = self.unet(volume)[:, 0]
        return out[(..., *(slice(0, s) for s in size))]

    def forward(self, conv: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        if self.spatial_dims == 2:
            return self._run(torch.stack([conv, pool], dim=1))  # (b, 2, depth=c, h, w)
        b, d = conv.shape[0], conv.shape[2]
        volume = rearrange(torch.stack([conv, pool], dim=1), "b two c d h w -> (b d) two c h w")
        return rearrange(self._run(volume), "(b d) c h w -> b c d h w", b=b, d=d)


class _Tokens(LogitsMethod):
    """Shared patch embedding / un-embedding for the transformer methods (patches of edge ``patch``)."""

    def __init__(self, channels: int, spatial_dims: int = 2, *, dim: int = 32, depth: int = 1, heads: int = 4,
                 patch: int = 1, mlp_ratio: float = 2.0, dropout: float = 0.0, pos_grid: int = 8):
        super().__init__(channels, spatial_dims)
        if patch < 1:
            raise ValueError(f"patch must be >= 1, got {patch}.")
        self.patch = patch
        self.transformer = PatchTransformer(spatial_dims, dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
                                            dropout=dropout, pos_grid=pos_grid)
        # un-embedding: a linear map token -> c·patch^d values, laid back onto the grid
        self.head = Conv[Conv.CONVTRANS, spatial_dims](dim, channels, patch, stride=patch)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        extra = [(-s) % self.patch for s in x.shape[2:]]
        return F.pad(x, [p for e in reversed(extra) for p in (0, e)]) if any(extra) else x

    def _unembed(self, tokens: torch.Tensor, grid: torch.Size, size: torch.Size) -> torch.Tensor:
        names = " ".join(f"g{i}" for i in range(len(grid)))
        x = rearrange(tokens, f"b ({names}) d -> b d {names}", **{f"g{i}": g for i, g in enumerate(grid)})
        out = self.head(x)
        return out[(..., *(slice(0, s) for s in size))]


@LOGITS.register("transformer_positional")
class TransformerPositional(_Tokens):
    """Each voxel's (conv, pool) channel column → a vector by a conv spanning both channel stacks (= a 3D conv
    over the 2-channel volume with full-depth kernel), positional embedding, transformer encoder with a class
    token, linear → logits."""

    def __init__(self, channels: int, spatial_dims: int = 2, **kwargs):
        super().__init__(channels, spatial_dims, **kwargs)
        dim = self.transformer.pos.shape[1]
        self.embed = Conv[Conv.CONV, spatial_dims](2 * channels, dim, self.patch, stride=self.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls, std=0.02)

    def forward(self, conv: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        size = conv.shape[2:]
        grid_x = self.embed(self._pad(torch.cat([conv, pool], dim=1)))
        grid = grid_x.shape[2:]
        tokens = rearrange(grid_x, "b d ... -> b (...) d") + self.transformer.positional(grid)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        out = self.transformer(tokens)[:, 1:]
        return self._unembed(out, grid, size)


@LOGITS.register("transformer_global")
class TransformerGlobal(_Tokens):
    """Conv and pool vectorised by separate patch embeddings, concatenated into one sequence with positional and
    branch-type embeddings, transformer encoder (global attention across both) → summed per position → logits."""

    def __init__(self, channels: int, spatial_dims: int = 2, **kwargs):
        super().__init__(channels, spatial_dims, **kwargs)
        dim = self.transformer.pos.shape[1]
        self.embed_conv = Conv[Conv.CONV, spatial_dims](channels, dim, self.patch, stride=self.patch)
        self.embed_pool = Conv[Conv.CONV, spatial_dims](channels, dim, self.patch, stride=self.patch)
        self.branch = nn.Parameter(torch.zeros(2, 1, 1, dim))
        nn.init.trunc_normal_(self.branch, std=0.02)

    def forward(self, conv: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        size = conv.shape[2:]
        gc, gp = self.embed_conv(self._pad(conv)), self.embed_pool(self._pad(pool))
        grid = gc.shape[2:]
        pos = self.transformer.positional(grid)
        tc = rearrange(gc, "b d ... -> b (...) d") + pos + self.branch[0]
        tp = rearrange(gp, "b d ... -> b (...) d") + pos + self.branch[1]
        out = self.transformer(torch.cat([tc, tp], dim=1))
        n = tc.shape[1]
        return self._unembed(out[:, :n] + out[:, n:], grid, size)


@LOGITS.register("channelwise_maxpool")
class ChannelwiseMaxPool(LogitsMethod):
    """Joint mechanism, no learned logits: the element-wise ``max(conv, pool)`` (logits ``conv − pool`` with a
    hard step, so each element takes the larger branch; no parameters, no gradient through the mask)."""

    joint = True

    def forward(self, conv: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        return conv - pool
