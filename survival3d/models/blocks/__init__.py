"""Reusable building blocks of the 3D survival models (MONAI layering: blocks here, whole models in ``nets``)."""

from survival3d.models.blocks.film import CovariateEmbedding, CovariateLogTimeShift, FiLM, embedding_dim_for
from survival3d.models.blocks.hessian import HessianDotFilter
from survival3d.models.blocks.patch_embed import Conv3dPatchEmbed, LayerNormChannels3d, sincos_pos_embed_3d
from survival3d.models.blocks.transformer import WindowTransformerBlock3D
from survival3d.models.blocks.vq import VectorQuantizer
from survival3d.models.blocks.window_attention import (
    MAX_WINDOWS_PER_CALL,
    WindowAttention3D,
    effective_window,
    window_attention_mask,
    window_partition,
    window_reverse,
)

__all__ = [
    "Conv3dPatchEmbed",
    "CovariateEmbedding",
    "CovariateLogTimeShift",
    "FiLM",
    "HessianDotFilter",
    "LayerNormChannels3d",
    "MAX_WINDOWS_PER_CALL",
    "VectorQuantizer",
    "WindowAttention3D",
    "WindowTransformerBlock3D",
    "effective_window",
    "embedding_dim_for",
    "sincos_pos_embed_3d",
    "window_attention_mask",
    "window_partition",
    "window_reverse",
]
