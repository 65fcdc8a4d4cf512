"""GLSA: a 2D global-local self-attention image classifier (sibling task of the 3D survival pipeline).

Building blocks live in :mod:`survival3d.glsa.block` (``GLSABlock``), :mod:`~survival3d.glsa.fusion` (``FUSION``),
:mod:`~survival3d.glsa.residual` (``RESIDUAL``); local attention modules are shared with the 3D model in
:mod:`survival3d.layers.attention` (``ATTENTION``). Backbones, data, losses, the trainer and the experiment runner
are imported from their modules (they pull in torchvision, scikit-learn, matplotlib).
"""

from survival3d.glsa.block import GlobalSelfAttention, GLSABlock
from survival3d.glsa.fusion import FUSION
from survival3d.glsa.residual import RESIDUAL
from survival3d.layers.attention import ATTENTION

__all__ = ["ATTENTION", "FUSION", "RESIDUAL", "GLSABlock", "GlobalSelfAttention"]
