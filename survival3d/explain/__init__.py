"""Explainers (one registry, :data:`EXPLAINERS`) mapping a survival model's prediction back onto the CT, and
GT-mask localisation metrics.

====================  =============================================================  ==========
name                  what                                                           upsampling
====================  =============================================================  ==========
head                  softmin weights p of the localisation head                     nearest
head_loc              per-cubelet survival times as risk (max loc - loc)             nearest
gradcam[_tokens]      Grad-CAM at the transformer output                             trilinear
gradcam_embed         Grad-CAM at the transformer input                              trilinear
gradcampp[_tokens]    Grad-CAM++ at the transformer output                           trilinear
gradcampp_embed       Grad-CAM++ at the transformer input                            trilinear
polycam               Poly-CAM± over embed, block{i}, tokens (also _plus, _minus)    trilinear
occlusion             MONAI OcclusionSensitivity of the risk                         (voxel)
feature_pca_embed     PCA → RGB of the transformer input features (RGB view)         nearest
feature_pca_tokens    PCA → RGB of the transformer output features (RGB view)        nearest
====================  =============================================================  ==========
"""

from survival3d.explain import cam, features, head, occlusion, polycam  # noqa: F401  (registration)
from survival3d.explain.base import (
    EXPLAINERS,
    Explainer,
    Unsupported,
    cubelets_to_image,
    model_image,
    model_inputs,
    run_model,
)
from survival3d.metrics.localisation import LOCALISATION_COLUMNS, localisation_metrics

__all__ = [
    "EXPLAINERS",
    "Explainer",
    "Unsupported",
    "cubelets_to_image",
    "model_image",
    "model_inputs",
    "run_model",
    "LOCALISATION_COLUMNS",
    "localisation_metrics",
]
