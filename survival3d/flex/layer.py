"""FlexLayer: a learnable per-element choice between a convolution and a max-pooling of the same input.

Both branches share kernel size, stride and padding, so their outputs have the same spatial shape; the pooled
tensor's channels are matched to the convolution's (``pool_channels``). A logits method (:mod:`.logits`) looks at
both outputs and a masking function (:mod:`.masking`) turns its logits into a mask ``m`` in ``[0, 1]``:

.. math::

    y = m \\odot \\mathrm{conv}(x) + (1 - m) \\odot \\mathrm{maxpool}(x)

(written as two products, not ``lerp``, so that ``m = 1`` gives the convolution and ``m = 0`` the pooling
exactly). Each forward pass records diagnostics without a host synchronisation: detached on-device running sums of
the conv ratio (fraction of elements with ``m ≥ 1/2``), binariness (mean ``|2m − 1|``, 1 = perfectly binary) and
homogeneity (mean over positions of ``|2·mean_c 1[m ≥ 1/2] − 1|``, 1 = all channels at a position pick the same
branch). :meth:`FlexLayer.stats` reads and optionally resets them (one sync).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.layers import Conv, Pool
from torch import nn

from survival3d.flex.logits import LOGITS
from survival3d.flex.masking import MASKING
from survival3d.registry import did_you_mean

__all__ = ["FlexLayer", "STAT_NAMES", "POOL_CHANNEL_MATCH"]

STAT_NAMES = ("conv_ratio", "binariness", "homogeneity")


class _RepeatChannels(nn.Module):
    """Repeat each pooled channel ``factor`` times (``out_channels`` must be a multiple of ``in_channels``)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int):
        super().__init__()
        if out_channels % in_channels:
            raise ValueError(
                f"pool_channels='repeat' needs out_channels ({out_channels}) to be a multiple of in_channels "
                f"({in_channels})."
            )
        self.factor = out_channels // in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.factor, dim=1) if self.factor > 1 else x


def _conv1x1(in_channels: int, out_channels: int, spatial_dims: int) -> nn.Module:
    return Conv[Conv.CONV, spatial_dims](in_channels, out_channels, 1, bias=False)


def _auto(in_channels: int, out_channels: int, spatial_dims: int) -> nn.Module:
    return nn.Identity() if in_channels == out_channels else _conv1x1(in_channels, out_channels, spatial_dims)


#: how the pooled tensor (``in_channels``) is matched to the conv tensor (``out_channels``)
POOL_CHANNEL_MATCH = {"auto": _auto, "conv1x1": _conv1x1, "repeat": _RepeatChannels}


class _HardStep(nn.Module):
    """``1[z ≥ 0]`` without gradient: the mask of a joint mechanism such as ``channelwise_maxpool``."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits >= 0).to(logits.dtype)


class FlexLayer(nn.Module):
    """Per-element mix of a convolution and a max-pooling (2D or 3D).

    Args:
        in_channels: input channels.
        out_channels: conv output channels (default ``in_channels``).
        kernel_size / stride / padding: shared by both branches (``stride`` defaults to ``kernel_size``, the usual
            pooling replacement; max-pooling requires ``padding <= kernel_size // 2``).
        spatial_dims: 2 or 3 (modules picked from MONAI's factories).
        logits: a :data:`~survival3d.flex.logits.LOGITS` spec, a name or ``{"name": ..., **kwargs}``.
        masking: a :data:`~survival3d.flex.masking.MASKING` spec; ignored by joint mechanisms.
        pool_channels: ``"auto"`` (identity when the channel counts agree, else a bias-free 1×1 conv),
            ``"conv1x1"`` or ``"repeat"`` (each pooled channel repeated, keeping pure max values).
        track_stats: record the diagnostics on each forward pass.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        kernel_size: int = 2,
        stride: int | None = None,
        padding: int = 0,
        spatial_dims: int = 2,
        logits: str | Mapping[str, Any] = "threshold",
        masking: str | Mapping[str, Any] = "sharp_sigmoid",
        pool_channels: str = "auto",
        track_stats: bool = True,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        stride = kernel_size if stride is None else stride
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if min(in_channels, out_channels, kernel_size, stride) < 1:
            raise ValueError(
                f"channels, kernel_size and stride must be >= 1, got in_channels={in_channels}, "
                f"out_channels={out_channels}, kernel_size={kernel_size}, stride={stride}."
            )
        if not 0 <= padding <= kernel_size // 2:
            raise ValueError(f"padding must be in [0, kernel_size // 2] = [0, {kernel_size // 2}], got {padding}.")
        if pool_channels not in POOL_CHANNEL_MATCH:
            raise ValueError(
                f"pool_channels '{pool_channels}' is not one of {sorted(POOL_CHANNEL_MATCH)}."
                f"{did_you_mean(pool_channels, POOL_CHANNEL_MATCH)}"
            )
        self.spatial_dims = spatial_dims
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size, stride=stride,
                                                  padding=padding)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size, stride=stride, padding=padding)
        self.match = POOL_CHANNEL_MATCH[pool_channels](in_channels, out_channels, spatial_dims)
        self.logits = LOGITS.build(logits, channels=out_channels, spatial_dims=spatial_dims)
        self.masking = _HardStep() if self.logits.joint else MASKING.build(masking)
        self.track_stats = track_stats
        self.register_buffer("_stat_sum", torch.zeros(len(STAT_NAMES)), persistent=False)
        self.register_buffer("_stat_count", torch.zeros(()), persistent=False)
        self.last_stats: torch.Tensor | None = None

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolution and the channel-matched max-pooling of ``x``, both ``(b, out_channels, *spatial)``."""
        return self.conv(x), self.match(self.pool(x))

    @staticmethod
    def mix(conv: torch.Tensor, pool: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mask ⊙ conv + (1 − mask) ⊙ pool`` (exact at mask 0 and 1)."""
        return mask * conv + (1 - mask) * pool

    def mask(self, conv: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        """The mask for given branch outputs, broadcast to their shape."""
        return self.masking(self.logits(conv, pool)).expand_as(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, pool = self.branches(x)
        mask = self.mask(conv, pool)
        if self.track_stats:
            self._record(mask)
        return self.mix(conv, pool, mask)

    @torch.no_grad()
    def _record(self, mask: torch.Tensor) -> None:
        m = mask.detach().float()
        hard = (m >= 0.5).float()
        stats = torch.stack([hard.mean(), (2 * m - 1).abs().mean(), (2 * hard.mean(dim=1) - 1).abs().mean()])
        self.last_stats = stats
        self._stat_sum += stats
        self._stat_count += 1

    def reset_stats(self) -> None:
        self._stat_sum.zero_()
        self._stat_count.zero_()
        self.last_stats = None

    def stats(self, reset: bool = True) -> dict[str, float]:
        """Mean diagnostics over the forward passes since the last reset (NaN when there were none)."""
        n = self._stat_count.item()
        values = (self._stat_sum / n).tolist() if n else [float("nan")] * len(STAT_NAMES)
        if reset:
            self.reset_stats()
        return dict(zip(STAT_NAMES, values))
