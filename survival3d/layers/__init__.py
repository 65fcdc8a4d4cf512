"""Dimension-agnostic building blocks shared by the 3D survival model and the 2D sibling tasks."""

from survival3d.layers.attention import (
    ATTENTION,
    CBAM,
    ChannelAttention,
    FeatureAct,
    NoAttention,
    SpatialAttention,
    SqueezeExcitation,
    build_with_context,
)

__all__ = [
    "ATTENTION",
    "CBAM",
    "ChannelAttention",
    "FeatureAct",
    "NoAttention",
    "SpatialAttention",
    "SqueezeExcitation",
    "build_with_context",
]
