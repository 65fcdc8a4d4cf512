"""The 3D survival network: Conv3dPatchEmbed -> WindowTransformer3D (FiLM) -> head -> :class:`SurvivalOutput`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from survival3d.errors import ConfigError
from survival3d.layers.attention import ATTENTION
from survival3d.models.blocks import Conv3dPatchEmbed, CovariateLogTimeShift, VectorQuantizer
from survival3d.models.blocks.window_attention import MAX_WINDOWS_PER_CALL
from survival3d.models.heads import HEADS, cubelet_valid_mask
from survival3d.models.nets import WindowTransformer3D
from survival3d.contracts import CovariateSpec, SurvivalOutput

__all__ = ["SurvivalNet3D"]


class SurvivalNet3D(nn.Module):
    """Survival time from a 3D scan, with a per-cubelet heatmap.

    A volume is cut into cubelets of ``patch_size`` voxels (:class:`Conv3dPatchEmbed`), the cubelet tokens pass
    through a local-window transformer conditioned on covariates (:class:`WindowTransformer3D`), and a head from
    :data:`HEADS` turns them into one survival time (the softmin head: a weighted average of per-cubelet times,
    weighted towards the shortest).

    Args:
        in_channels, patch_size, stem_convs, embed_dim, pos_embed, img_size: see :class:`Conv3dPatchEmbed`;
            ``embed_norm``, ``embed_mean_intensity`` and ``embed_std_intensity`` are its ``norm``,
            ``mean_intensity`` and ``std_intensity``.
        depth, num_heads, window_size, shift, rel_pos_bias, mlp_ratio, qkv_bias, drop_path, attn_drop, drop,
            film, film_hidden, global_residual, use_checkpoint, max_windows_per_call: see
            :class:`WindowTransformer3D`.
        attention: local attention in every transformer block on the token grid: ``none`` (default; no extra
            parameters), ``se``, ``cbam`` or ``featureact``, or ``{"name": ..., **options}``; each behind a
            zero-initialised residual gate. ``featureact`` needs ``img_size`` giving a cubic token grid of at most
            4096 cubelets (its position mixing has N² weights per block).
        head: the head spec, a name or ``{"name": ..., **kwargs}`` (``cfg.head``).
        covariate_spec: the covariates FiLM is conditioned on (``None`` or empty: no FiLM).
        vq_codes: quantise the transformer's output tokens with a codebook of this many codes
            (:class:`~survival3d.models.blocks.VectorQuantizer`; 0 = continuous tokens, the default); ``vq_decay``
            and ``vq_commitment`` are its EMA decay and commitment weight. The VQ loss is added to ``reg_loss``.
        covariate_aft: add a linear covariate term to log-time (:class:`CovariateLogTimeShift`, zero at
            initialisation): ``pred`` and ``loc`` are multiplied by :math:`e^{s(x)}`, ``p`` is the head's map (a factor
            common to every cubelet does not move *where*). Covariates then act on the time directly, as in an
            accelerated failure time model, besides their FiLM path through the image features. Needs covariates.
        name: accepted for config round-trips (the registry key).

    Forward:
        image: (B, in_channels, D, H, W); sizes not divisible by ``patch_size`` are zero-padded and the padded
            cubelets are invalid.
        cov_num: (B, num_numeric) float; cov_cat: (B, n_categorical) long (when the model has covariates).
        lung_mask: optional (B, 1, D, H, W); cubelets with less lung than the head's ``lung_frac_min`` are invalid.

    Returns:
        :class:`SurvivalOutput` with features ``"embed"``, ``"block{i}"``, ``"tokens"`` (B, C, d, h, w).
    """

    def __init__(self, *, in_channels: int = 1, patch_size: int = 4, stem_convs: int = 1,
                 dot_filter_sigmas: Sequence[float] = (), embed_dim: int = 48,
                 embed_norm: bool = True, embed_mean_intensity: bool = True,
                 embed_std_intensity: bool = False, pos_embed: str = "sincos", img_size: Sequence[int] | None = None, depth: int = 2,
                 num_heads: int = 3, window_size: int = 4, shift: bool = True, rel_pos_bias: bool = True,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path: float = 0.0, attn_drop: float = 0.0,
                 drop: float = 0.0, film: bool = True, film_hidden: int = 64, global_residual: bool = True,
                 use_checkpoint: bool = False, max_windows_per_call: int = MAX_WINDOWS_PER_CALL,
                 attention: str | Mapping[str, Any] = "none",
                 head: str | Mapping[str, Any] = "softmin", covariate_spec: CovariateSpec | None = None,
                 vq_codes: int = 0, vq_decay: float = 0.99, vq_commitment: float = 0.25,
                 covariate_aft: bool = False, name: str | None = None):
        super().__init__()
        self.covariate_spec = covariate_spec or CovariateSpec()
        self.patch_size = int(patch_size)
        self.embed = Conv3dPatchEmbed(in_channels, embed_dim, patch_size, stem_convs=stem_convs, pos_embed=pos_embed,
                                      dot_filter_sigmas=dot_filter_sigmas,
                                      norm=embed_norm, mean_intensity=embed_mean_intensity,
                                      std_intensity=embed_std_intensity,
                                      img_size=img_size)
        grid_size = self._featureact_grid(attention, img_size, self.patch_size)
        self.transformer = WindowTransformer3D(
            embed_dim, depth, num_heads, window_size, shift=shift, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            rel_pos_bias=rel_pos_bias, attn_drop=attn_drop, drop=drop, drop_path=drop_path,
            num_numeric=self.covariate_spec.num_numeric, cardinalities=self.covariate_spec.cardinalities, film=film,
            film_hidden=film_hidden, global_residual=global_residual, use_checkpoint=use_checkpoint,
            max_windows_per_call=max_windows_per_call, attention=attention, grid_size=grid_size)
        self.head = HEADS.build(head, in_dim=embed_dim)
        # built last, and only when asked for: the default model's parameters and their initialisation are unchanged
        self.quantizer = (VectorQuantizer(embed_dim, int(vq_codes), decay=vq_decay, commitment=vq_commitment)
                          if int(vq_codes) > 0 else None)
        if covariate_aft and self.covariate_spec.empty:
            raise ConfigError("model.covariate_aft needs covariates (data.covariates.numeric / categorical); "
                              "this model has none.")
        self.covariate_shift = (CovariateLogTimeShift(self.covariate_spec.num_numeric, self.covariate_spec.cardinalities)
                                if covariate_aft else None)

    @staticmethod
    def _featureact_grid(attention: Any, img_size: Sequence[int] | None, patch_size: int) -> int | None:
        """The cubic token-grid edge FeatureAct is built for (``None`` for the other attention variants)."""
        name, _ = ATTENTION.split_spec(attention)
        if ATTENTION.get(name) is not ATTENTION.get("featureact"):
            return None
        if img_size is None:
            raise ConfigError("model.attention featureact needs the input size (data.image_size or model.img_size).")
        grid = [math.ceil(int(s) / patch_size) for s in img_size]
        if len(set(grid)) != 1:
            raise ConfigError(f"model.attention featureact needs a cubic token grid; image size {list(img_size)} / "
                              f"patch {patch_size} gives {grid}.")
        if grid[0] ** 3 > 4096:
            raise ConfigError(f"model.attention featureact: a {grid[0]}^3 token grid has {grid[0] ** 3} positions; its "
                              f"position mixing (N^2 = {grid[0] ** 6:,} weights per block) does not fit: at most 4096 "
                              "positions (16^3). Use se or cbam, or a larger model.patch_size.")
        return grid[0]

    @property
    def uses_film(self) -> bool:
        return self.transformer.film is not None

    def lung_fraction(self, lung_mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) lung mask -> (B, 1, d, h, w) fraction of lung voxels per cubelet (padding counts as
        no lung)."""
        return F.avg_pool3d(self.embed.pad(lung_mask.float()), self.patch_size)

    def forward(self, image: torch.Tensor, cov_num: torch.Tensor | None = None, cov_cat: torch.Tensor | None = None,
                lung_mask: torch.Tensor | None = None) -> SurvivalOutput:
        if image.ndim != 5:
            raise ValueError(f"expected image of shape (B, C, D, H, W), got {tuple(image.shape)}.")
        if lung_mask is not None and (lung_mask.shape[0] != image.shape[0] or lung_mask.shape[2:] != image.shape[2:]):
            raise ValueError(f"lung_mask shape {tuple(lung_mask.shape)} does not match image {tuple(image.shape)}.")
        tokens, pad_valid = self.embed(image)
        padded = any(s % self.patch_size for s in image.shape[2:])
        key_valid = pad_valid[0, 0] if padded else None
        out, blocks = self.transformer(tokens, cov_num, cov_cat, key_valid=key_valid)
        vq_loss = None
        if self.quantizer is not None:
            out, vq_loss, _ = self.quantizer(out, pad_valid)
        lung_frac = None if lung_mask is None else self.lung_fraction(lung_mask)
        valid = cubelet_valid_mask(pad_valid, lung_frac, self.head.lung_frac_min).expand(image.shape[0], -1, -1, -1, -1)
        h = self.head(out, valid)
        pred, loc = h["pred"], h["loc"]
        if self.covariate_shift is not None:  # the AFT term: every time of the volume scaled by e^s
            factor = self.covariate_shift(cov_num, cov_cat).exp()
            pred = pred * factor
            loc = None if loc is None else loc * factor.reshape(-1, *(1,) * (loc.ndim - 1))
        reg_loss = h["reg_loss"]
        if vq_loss is not None:
            reg_loss = vq_loss if reg_loss is None else reg_loss + vq_loss
        features = {"embed": tokens, **{f"block{i}": b for i, b in enumerate(blocks)}, "tokens": out}
        return SurvivalOutput(pred=pred, risk=-pred, p=h["p"], loc=loc, valid=h["valid"],
                              reg_loss=reg_loss, features=features)
