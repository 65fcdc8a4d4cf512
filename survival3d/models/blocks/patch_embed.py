"""Cubelet embedding of a 3D volume: a Conv3d stem, a per-token norm, a mean-intensity path and an optional 3D
position embedding.

The stem follows "Early Convolutions Help Transformers See Better" (Xiao et al., NeurIPS 2021): a few strided
3x3x3 convolutions before the final patchifying convolution, instead of one large-kernel convolution. With
``stem_convs = 1`` it is the plain ViT patchify (Dosovitskiy et al., ICLR 2021): one Conv3d with kernel = stride =
patch size, so a cubelet's token sees only its own voxels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from survival3d.models.blocks.hessian import HessianDotFilter

__all__ = ["Conv3dPatchEmbed", "LayerNormChannels3d", "sincos_pos_embed_3d", "POS_EMBEDS"]

POS_EMBEDS = ("none", "learnable", "sincos")


class LayerNormChannels3d(nn.Module):
    """LayerNorm over the channel axis of a channels-first (B, C, D, H, W) tensor (one voxel at a time)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def sincos_pos_embed_3d(grid: tuple[int, int, int], dim: int, *, temperature: float = 10000.0,
                        device=None, dtype=torch.float32) -> torch.Tensor:
    r"""Fixed 3D sine-cosine position embedding of shape (dim, d, h, w).

    The channels are split in three equal groups, one per axis; within a group, coordinate :math:`x` is encoded
    as :math:`[\sin(x\omega_k), \cos(x\omega_k)]_k` with :math:`\omega_k = T^{-k/K}` (Vaswani et al., 2017; the 3D
    split as in MAE's 2D version, He et al., 2022). Channels left over when ``dim`` is not a multiple of 6 are 0.
    """
    if dim < 6:
        raise ValueError(f"sin-cos 3D position embedding needs dim >= 6, got {dim}.")
    k = dim // 6
    omega = 1.0 / temperature ** (torch.arange(k, device=device, dtype=torch.float32) / max(k, 1))
    axes = torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float32) for n in grid], indexing="ij")
    parts = []
    for coord in axes:
        ang = coord[None] * omega[:, None, None, None]
        parts += [ang.sin(), ang.cos()]
    emb = torch.cat(parts, 0)
    if emb.shape[0] < dim:
        emb = torch.cat([emb, emb.new_zeros(dim - emb.shape[0], *grid)], 0)
    return emb.to(dtype)


class Conv3dPatchEmbed(nn.Module):
    r"""Split a volume into cubelets and embed each one as a token.

    The input is zero-padded at the far end of each axis to a multiple of ``patch_size``; a cubelet counts as
    valid when at least ``min_valid_frac`` of its voxels are real (not padding).

    Args:
        in_channels: channels of the input volume.
        embed_dim: channels of each cubelet token.
        patch_size: cubelet edge in voxels (the total stride of the stem).
        stem_convs: number of convolutions in the stem. The first ``stem_convs - 1`` are 3x3x3 stride-2
            convolutions (each followed by channel LayerNorm and GELU, widths ramping up to ``embed_dim``); the last
            has kernel = stride = the remaining factor. ``patch_size`` must be divisible by ``2 ** (stem_convs-1)``.
        pos_embed: ``"none"``, ``"learnable"`` or ``"sincos"``.
        img_size: expected input size (D, H, W); needed for ``"learnable"`` (the table is trilinearly resized
            for other sizes).
        norm: apply LayerNorm to the tokens.
        mean_intensity: add a learned linear map of each cubelet's mean input intensity to the (normalised) token,
            :math:`t = \mathrm{LN}(\mathrm{stem}(x)) + W \bar x + c`. Needed with ``norm`` on a scan whose
            intensities mean something (HU): a uniform cubelet of value :math:`a` leaves a linear stem as
            :math:`a\,s + b` (:math:`s` = kernel sums, :math:`b` = bias) and
            :math:`\mathrm{LN}(a\,s + b) \approx \mathrm{LN}(s)` whenever :math:`|a\,s| \gg |b|`, so without
            this path the inside of a soft-tissue sphere embeds like air and only its edges stand out (on dummy1 the
            softmin head then picked rim cubelets; docs/model.md). Without ``norm`` it is redundant but harmless.
        std_intensity: likewise add a learned linear map of each cubelet's intensity standard deviation. The token
            LayerNorm also removes the token's scale, which for a zero-mean texture is its amplitude: a lesion that
            differs from its surround only by texture (dummy4) is invisible without this path. Off by default.
        min_valid_frac: fraction of real voxels a cubelet needs to be valid.
        dot_filter_sigmas: scales (voxels) of a fixed multi-scale Hessian dot filter
            (:class:`~survival3d.models.blocks.hessian.HessianDotFilter`, bright blobs over tubes and plates) whose
            response is fed to the stem and the intensity paths as one extra channel per input channel; empty (the
            default): none. The filter has no parameters and passes no gradient.

    Forward:
        x: (B, in_channels, D, H, W), contiguous or channels-last-3d.

    Returns:
        tokens (B, embed_dim, d, h, w) with d = ceil(D / patch_size) etc., and valid (1, 1, d, h, w) bool.
    """

    def __init__(self, in_channels: int = 1, embed_dim: int = 48, patch_size: int = 8, *, stem_convs: int = 1,
                 pos_embed: str = "sincos", img_size: tuple[int, int, int] | list[int] | None = None,
                 norm: bool = True, mean_intensity: bool = True, std_intensity: bool = False,
                 min_valid_frac: float = 0.5, dot_filter_sigmas: Sequence[float] = ()):
        super().__init__()
        if in_channels < 1 or embed_dim < 1:
            raise ValueError(f"in_channels {in_channels} and embed_dim {embed_dim} must be positive.")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}.")
        if stem_convs < 1:
            raise ValueError(f"stem_convs must be >= 1, got {stem_convs}.")
        down = 2 ** (stem_convs - 1)
        if patch_size % down:
            raise ValueError(f"patch_size {patch_size} is not divisible by 2**(stem_convs-1) = {down} "
                             f"(stem_convs {stem_convs}).")
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed '{pos_embed}' is not one of {POS_EMBEDS}.")
        if pos_embed == "sincos" and embed_dim < 6:
            raise ValueError(f"pos_embed 'sincos' needs embed_dim >= 6, got {embed_dim}.")
        if not 0.0 < min_valid_frac <= 1.0:
            raise ValueError(f"min_valid_frac must be in (0, 1], got {min_valid_frac}.")
        if img_size is not None:
            img_size = tuple(int(s) for s in img_size)
            if len(img_size) != 3 or min(img_size) < 1:
                raise ValueError(f"img_size must be 3 positive ints, got {img_size}.")
        if pos_embed == "learnable" and img_size is None:
            raise ValueError("pos_embed 'learnable' needs img_size (the expected input size).")

        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)
        self.min_valid_frac = float(min_valid_frac)
        self.pos_embed_kind = pos_embed
        self.dot_filter = HessianDotFilter(dot_filter_sigmas) if len(dot_filter_sigmas) else None
        in_channels = in_channels * (2 if self.dot_filter is not None else 1)  # the image, then its dot response

        layers: list[nn.Module] = []
        ch = in_channels
        for i in range(stem_convs - 1):
            out = max(embed_dim // 2 ** (stem_convs - 1 - i), 8)
            layers += [nn.Conv3d(ch, out, 3, stride=2, padding=1), LayerNormChannels3d(out), nn.GELU()]
            ch = out
        last = patch_size // down
        layers.append(nn.Conv3d(ch, embed_dim, kernel_size=last, stride=last))
        self.stem = nn.Sequential(*layers)
        self.norm = LayerNormChannels3d(embed_dim) if norm else nn.Identity()
        if mean_intensity:
            # O(1) per channel for inputs in [0, 1], like the LayerNorm'd token it is added to
            self.mean_proj = nn.Conv3d(in_channels, embed_dim, kernel_size=1)
            nn.init.normal_(self.mean_proj.weight, std=in_channels**-0.5)
            nn.init.zeros_(self.mean_proj.bias)
        else:
            self.mean_proj = None
        if std_intensity:
            # texture amplitudes of normalised CT are ~0.01-0.1: a larger init keeps this term O(1) like the others
            self.std_proj = nn.Conv3d(in_channels, embed_dim, kernel_size=1)
            nn.init.normal_(self.std_proj.weight, std=10.0 * in_channels**-0.5)
            nn.init.zeros_(self.std_proj.bias)
        else:
            self.std_proj = None

        if pos_embed == "learnable":
            grid = tuple(math.ceil(s / patch_size) for s in img_size)
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *grid))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_parameter("pos_embed", None)

    def grid_size(self, spatial: tuple[int, int, int]) -> tuple[int, int, int]:
        """Cubelet grid (d, h, w) for an input of spatial size (D, H, W)."""
        return tuple(math.ceil(s / self.patch_size) for s in spatial)

    def pad(self, x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        """Zero-pad (B, C, D, H, W) at the far end of each axis to a multiple of the patch size."""
        p = self.patch_size
        pads = [(-s) % p for s in x.shape[-3:]]
        if not any(pads):
            return x
        return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), value=value)

    def valid_mask(self, spatial: tuple[int, int, int], device=None) -> torch.Tensor:
        """(1, 1, d, h, w) bool: cubelets with at least ``min_valid_frac`` real (unpadded) voxels."""
        p = self.patch_size
        grid = self.grid_size(spatial)
        frac = []
        for s, g in zip(spatial, grid):
            idx = torch.arange(g, device=device)
            real = (s - idx * p).clamp(0, p).to(torch.float32) / p  # real voxels along this axis per cubelet
            frac.append(real)
        f = frac[0][:, None, None] * frac[1][None, :, None] * frac[2][None, None, :]
        return (f >= self.min_valid_frac - 1e-6)[None, None]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 5:
            raise ValueError(f"expected a (B, C, D, H, W) volume, got shape {tuple(x.shape)}.")
        spatial = tuple(x.shape[-3:])
        if self.dot_filter is not None:
            x = torch.cat([x, self.dot_filter(x).to(x.dtype)], dim=1)
        padded = self.pad(x)
        x = self.norm(self.stem(padded))
        if self.mean_proj is not None or self.std_proj is not None:
            mean = F.avg_pool3d(padded, self.patch_size)
            if self.mean_proj is not None:
                x = x + self.mean_proj(mean)
            if self.std_proj is not None:
                var = F.avg_pool3d(padded.square(), self.patch_size) - mean.square()
                x = x + self.std_proj(var.clamp_min(0.0).add(1e-12).sqrt())
        if self.pos_embed is not None:
            pe = self.pos_embed
            if pe.shape[-3:] != x.shape[-3:]:
                pe = F.interpolate(pe, size=x.shape[-3:], mode="trilinear", align_corners=False)
            x = x + pe.to(x.dtype)
        elif self.pos_embed_kind == "sincos":
            x = x + sincos_pos_embed_3d(tuple(x.shape[-3:]), self.embed_dim, device=x.device, dtype=x.dtype)[None]
        return x, self.valid_mask(spatial, device=x.device)
