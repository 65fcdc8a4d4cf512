"""Local attention modules shared by the 2D (GLSA) and 3D (survival) models.

Every module takes ``channels`` first and ``spatial_dims`` (1, 2 or 3), maps ``(B, C, *spatial)`` to a tensor of
the same shape, and is registered in :data:`ATTENTION`, so a config can swap them by name::

    ATTENTION.build({"name": "cbam", "reduction": 8}, channels=64, spatial_dims=2)

Layers are picked with MONAI's dimension-agnostic factories (``Conv[Conv.CONV, spatial_dims]``), so one
implementation serves 2D and 3D feature maps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange
from monai.networks.layers.factories import Conv, Pool
from torch import nn
from torch.nn.parameter import UninitializedParameter

from survival3d.registry import Registry

__all__ = [
    "ATTENTION",
    "NoAttention",
    "SqueezeExcitation",
    "ChannelAttention",
    "SpatialAttention",
    "CBAM",
    "FeatureAct",
    "ResidualGatedAttention",
    "build_gated_attention",
    "build_with_context",
]

ATTENTION: Registry = Registry("attention")


def build_with_context(registry: Registry, spec: Any, **context: Any) -> Any:
    """``registry.build_with_context(spec, **context)`` (see :meth:`survival3d.registry.Registry.build_with_context`)."""
    return registry.build_with_context(spec, **context)


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")


def _check_channels(channels: int) -> None:
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}.")


@ATTENTION.register("none")
class NoAttention(nn.Identity):
    """The identity, so that "no local attention" is one more registered choice."""

    def __init__(self, channels: int, spatial_dims: int = 2):
        _check_channels(channels)
        _check_dims(spatial_dims)
        super().__init__()


def _bottleneck(channels: int, spatial_dims: int, reduction: int, min_hidden: int) -> int:
    """Check the arguments of a channel-gating MLP and return its hidden width."""
    _check_channels(channels)
    _check_dims(spatial_dims)
    if reduction < 1:
        raise ValueError(f"reduction must be >= 1, got {reduction}.")
    return max(channels // reduction, min(min_hidden, channels))


@ATTENTION.register("se")
class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation channel gating (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018).

    ``y = x · σ(W₂ ReLU(W₁ GAP(x)))`` with a bottleneck of ``max(channels // reduction, min_hidden)`` units.
    """

    def __init__(self, channels: int, spatial_dims: int = 2, *, reduction: int = 16, min_hidden: int = 4):
        super().__init__()
        hidden = _bottleneck(channels, spatial_dims, reduction, min_hidden)
        conv = Conv[Conv.CONV, spatial_dims]
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.fc = nn.Sequential(conv(channels, hidden, 1), nn.ReLU(inplace=True), conv(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(self.pool(x))


class ChannelAttention(nn.Module):
    """CBAM channel attention: a shared MLP over average- and max-pooled descriptors, ``σ(MLP(avg) + MLP(max))``."""

    def __init__(self, channels: int, spatial_dims: int = 2, *, reduction: int = 16, min_hidden: int = 4):
        super().__init__()
        hidden = _bottleneck(channels, spatial_dims, reduction, min_hidden)
        conv = Conv[Conv.CONV, spatial_dims]
        self.avg = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.max = Pool[Pool.ADAPTIVEMAX, spatial_dims](1)
        self.mlp = nn.Sequential(conv(channels, hidden, 1, bias=False), nn.ReLU(inplace=True), conv(hidden, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(self.avg(x)) + self.mlp(self.max(x)))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a ``k``-wide conv over the channel-mean and channel-max maps, then a sigmoid."""

    def __init__(self, spatial_dims: int = 2, *, kernel_size: int = 7):
        super().__init__()
        _check_dims(spatial_dims)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}.")
        self.conv = Conv[Conv.CONV, spatial_dims](2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(desc))


@ATTENTION.register("cbam")
class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel gating, then spatial gating.

    ``x' = x · M_c(x)``, ``y = x' · M_s(x')``.
    """

    def __init__(self, channels: int, spatial_dims: int = 2, *, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        self.channel = ChannelAttention(channels, spatial_dims, reduction=reduction)
        self.spatial = SpatialAttention(spatial_dims, kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)


_FEATUREACT_SCALES = ("positions", "channels")
_FEATUREACT_COR = ("none", "sigmoid")


@ATTENTION.register("featureact")
class FeatureAct(nn.Module):
    """FeatureAct (v4): position-wise channel correlations, mixed across positions, re-weighting reduced features.

    With ``N`` spatial positions, ``d = channels // reduction``, source/target projections ``s = W_s x``,
    ``t = W_t x`` and reduced features ``m = ReLU(W_d x)`` (all 1×1 convolutions, shape ``(B, d, N)``):

    .. math::

        c_{b,n,i,j} = \\frac{s_{b,i,n}\\, t_{b,j,n}}{\\sqrt{S}}, \\qquad
        \\tilde c_{b,p,i,j} = \\sum_n P_{p,n}\\, c_{b,n,i,j} + q_p, \\qquad
        f_{b,k,p} = \\sum_i m_{b,i,p}\\, \\tilde c_{b,p,i,k},

    and ``y = x + ReLU(W_u f)``. ``P`` (``N × N``) and ``q`` are a learned 1×1 mixing over positions, so the
    module is tied to one feature size: ``img_size`` (the edge of the square/cubic map), or inferred from the
    first input when ``None`` (run one forward pass before building the optimiser). ``S`` is the number of
    positions ``N`` (``scale="positions"``, as in the research notebook, where the correlation tensor's second
    axis after its permutation is the position axis) or ``d`` (``scale="channels"``).

    The sums are evaluated without materialising ``c`` per channel: with ``G_{b,p,n} = Σ_i m_{b,i,p} s_{b,i,n}``,
    ``f_{b,k,p} = Σ_n P_{p,n} G_{b,p,n} t_{b,k,n} / √S + q_p Σ_i m_{b,i,p}`` (two einsums, memory ``O(B N²)``).

    ``cor="sigmoid"`` applies ``σ`` to the mixed correlation, ``c̃ ← σ(c̃)`` (the notebook's commented-out
    "additional custom" activation): a non-linearity between the mixing and the re-weighting, so ``c̃`` is then
    materialised (memory ``O(B N d²)``). ``cor="none"`` (default) is the notebook's v4.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 2,
        *,
        img_size: int | None = None,
        reduction: int = 4,
        scale: str = "positions",
        cor: str = "none",
    ):
        super().__init__()
        _check_channels(channels)
        _check_dims(spatial_dims)
        if reduction < 1 or channels % reduction != 0:
            raise ValueError(f"channels {channels} must be divisible by reduction {reduction} (>= 1).")
        if img_size is not None and img_size < 1:
            raise ValueError(f"img_size must be a positive int or None, got {img_size}.")
        if scale not in _FEATUREACT_SCALES:
            raise ValueError(f"scale must be one of {_FEATUREACT_SCALES}, got {scale!r}.")
        if cor not in _FEATUREACT_COR:
            raise ValueError(f"cor must be one of {_FEATUREACT_COR}, got {cor!r}.")
        self.channels, self.spatial_dims, self.scale, self.cor = channels, spatial_dims, scale, cor
        self.dim = channels // reduction
        conv = Conv[Conv.CONV, spatial_dims]
        self.src_proj = conv(channels, self.dim, 1)
        self.tgt_proj = conv(channels, self.dim, 1)
        self.down = nn.Sequential(conv(channels, self.dim, 1), nn.ReLU())
        self.up = nn.Sequential(conv(self.dim, channels, 1), nn.ReLU())
        self.img_size = img_size
        if img_size is None:
            self.pos_weight = UninitializedParameter()
            self.pos_bias = UninitializedParameter()
        else:
            n = img_size**spatial_dims
            self.pos_weight = nn.Parameter(torch.empty(n, n))
            self.pos_bias = nn.Parameter(torch.empty(n))
            self._reset_position_mixing()

    @property
    def num_positions(self) -> int | None:
        return None if self.img_size is None else self.img_size**self.spatial_dims

    def _reset_position_mixing(self) -> None:
        # the default init of a 1x1 convolution with N input channels (uniform, bound 1/sqrt(N))
        bound = 1.0 / math.sqrt(self.pos_weight.shape[1])
        nn.init.uniform_(self.pos_weight, -bound, bound)
        nn.init.uniform_(self.pos_bias, -bound, bound)

    def _infer_size(self, x: torch.Tensor) -> None:
        spatial = tuple(x.shape[2:])
        if len(set(spatial)) != 1:
            raise ValueError(f"FeatureAct needs a square/cubic feature map, got spatial shape {spatial}.")
        self.img_size = spatial[0]
        n = self.num_positions
        with torch.no_grad():
            self.pos_weight.materialize((n, n), device=x.device, dtype=x.dtype)
            self.pos_bias.materialize((n,), device=x.device, dtype=x.dtype)
            self._reset_position_mixing()

    def correlation_features(self, x: torch.Tensor) -> torch.Tensor:
        """The re-weighted features ``ReLU(W_u f)`` (the notebook's ``cor_feature``), shape of ``x``."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected (B, {self.channels}, *{self.spatial_dims} dims), got {tuple(x.shape)}.")
        if isinstance(self.pos_weight, UninitializedParameter):
            self._infer_size(x)
        spatial = tuple(x.shape[2:])
        if spatial != (self.img_size,) * self.spatial_dims:
            raise ValueError(f"FeatureAct was built for feature size {self.img_size}, got spatial shape {spatial}.")
        src = rearrange(self.src_proj(x), "b d ... -> b d (...)")
        tgt = rearrange(self.tgt_proj(x), "b d ... -> b d (...)")
        main = rearrange(self.down(x), "b d ... -> b d (...)")
        denom = math.sqrt(self.num_positions if self.scale == "positions" else self.dim)
        if self.cor == "none":
            gram = torch.einsum("bip,bin->bpn", main, src)
            feat = torch.einsum("pn,bpn,bkn->bkp", self.pos_weight, gram, tgt) / denom
            feat = feat + self.pos_bias[None, None, :] * main.sum(1, keepdim=True)
        else:  # sigmoid on the mixed correlation c~[b, p, i, j]: materialise it
            mixed = torch.einsum("pn,bin,bjn->bpij", self.pos_weight, src, tgt) / denom
            mixed = torch.sigmoid(mixed + self.pos_bias[None, :, None, None])
            feat = torch.einsum("bip,bpik->bkp", main, mixed)
        feat = feat.reshape(*feat.shape[:2], *spatial)
        return self.up(feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.correlation_features(x)

class ResidualGatedAttention(nn.Module):
    """``y = x + α ⊙ (A(x) − x)`` with a per-channel gate ``α`` initialised to 0 (ReZero-style, Bachlechner et al.
    2021), so that inserting attention ``A`` into a trained or freshly initialised network is the identity at
    initialisation; ``α = 1`` gives ``A(x)``. Used to put SE / CBAM / FeatureAct into the 3D survival model's blocks.

    Args:
        attention: a module ``(B, C, *spatial) -> (B, C, *spatial)`` (from :data:`ATTENTION`).
        channels, spatial_dims: shape of the gate ``(1, C, 1, ..., 1)``.
    """

    def __init__(self, attention: nn.Module, channels: int, spatial_dims: int):
        super().__init__()
        _check_channels(channels)
        _check_dims(spatial_dims)
        self.attention = attention
        self.alpha = nn.Parameter(torch.zeros(1, channels, *([1] * spatial_dims)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * (self.attention(x) - x)


def build_gated_attention(spec: Any, channels: int, spatial_dims: int, **context: Any) -> ResidualGatedAttention | None:
    """The attention of ``spec`` (a name in :data:`ATTENTION` or ``{name: ..., **options}``) wrapped in a
    :class:`ResidualGatedAttention`, or ``None`` for ``none`` (so that no parameter is created at all).

    ``context`` (e.g. ``img_size``) is passed to the variants that take it.

    Raises:
        ConfigError: unknown name or option.
    """
    name, _ = ATTENTION.split_spec(spec)
    if ATTENTION.get(name) is NoAttention:
        return None
    module = build_with_context(ATTENTION, spec, channels=channels, spatial_dims=spatial_dims, **context)
    return ResidualGatedAttention(module, channels, spatial_dims)
