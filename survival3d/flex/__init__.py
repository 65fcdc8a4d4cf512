"""FlexLayers: a learned per-element choice between convolution and max-pooling (see docs/flex.md).

``output = mask ⊙ conv(x) + (1 − mask) ⊙ maxpool(x)``, the mask coming from a logits method (:data:`LOGITS`) through
a masking function (:data:`MASKING`). Networks (:class:`FlexNet`, :func:`swap_maxpool`), FGSM/PGD robustness with an
attack AUC (:mod:`survival3d.flex.attacks`) and the resumable experiment runner (:mod:`survival3d.flex.experiments`,
``python run.py flex-experiments``) build on them.
"""

from survival3d.flex.attacks import ATTACKS, attack_auc, fgsm, pgd, robust_accuracy_curve, surrogate_gradients
from survival3d.flex.config import FlexConfig, load_flex_config
from survival3d.flex.layer import FlexLayer
from survival3d.flex.logits import LOGITS
from survival3d.flex.masking import MASKING
from survival3d.flex.nets import FlexNet, flex_layers, flex_stats, swap_maxpool

__all__ = ["ATTACKS", "FlexConfig", "FlexLayer", "FlexNet", "LOGITS", "MASKING", "attack_auc", "fgsm", "flex_layers",
           "flex_stats", "load_flex_config", "pgd", "robust_accuracy_curve", "surrogate_gradients", "swap_maxpool"]
