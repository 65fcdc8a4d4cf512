"""Whole networks built from :mod:`survival3d.models.blocks`."""

from survival3d.models.nets.window_transformer import WindowTransformer3D

__all__ = ["WindowTransformer3D"]
