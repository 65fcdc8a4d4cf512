"""MONAI transform chains of the 3D survival pipeline.

Two halves, so that the deterministic half can be cached (``CacheDataset``/``PersistentDataset``) and the random half
re-drawn every epoch:

* :func:`deterministic_transforms`: (load from disk →) channel first → HU window to [0, 1] (clipped) → pad/crop or
  resize to ``data.image_size`` (→ with ``data.outside_lung: air`` or ``lung_mean``, everything outside the lung mask
  set to the window's bottom or to the case's mean lung intensity) → float32 tensors (optionally moved to the GPU
  once, for the GPU-side data path).
* :func:`random_transforms`: training-only augmentation — random flips along each axis and a small random affine
  (rotation, scale, translation), applied with the *same* random parameters to the image and every mask (masks are
  resampled with nearest neighbour so they stay binary).

``image`` keeps its affine as MONAI ``MetaTensor`` metadata through every step, so a heatmap written as NIfTI lands
on the scan it was computed from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    MaskIntensityd,
    RandAffined,
    RandFlipd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    ToDeviced,
)

from survival3d.errors import ConfigError
from survival3d.registry import did_you_mean

__all__ = ["MASK_KEYS", "OUTSIDE_LUNG_MODES", "FillOutsideMaskWithMeand", "deterministic_transforms", "random_transforms",
           "SPATIAL_MODES"]

MASK_KEYS = ("mask", "lung_mask", "distractor_mask")
SPATIAL_MODES = ("resize", "pad_crop")
OUTSIDE_LUNG_MODES = ("keep", "air", "lung_mean")


class FillOutsideMaskWithMeand(MapTransform):
    """Set every voxel of ``keys`` outside ``mask_key`` (> 0) to the mean of that image inside the mask, per channel.

    The region outside the mask becomes featureless *and* the mask's border carries no edge: unlike filling with a
    constant such as air, a cubelet straddling the border then has no more intensity variation than the parenchyma
    inside it. An image whose mask is empty is left unchanged.
    """

    def __init__(self, keys: KeysCollection, mask_key: str, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data):
        d = dict(data)
        inside = torch.as_tensor(d[self.mask_key]) > 0
        for key in self.key_iterator(d):
            img = d[key]
            m = inside.expand_as(img) if inside.shape[0] == 1 else inside
            n = m.flatten(1).sum(1)
            if not bool((n > 0).all()):
                continue
            mean = (img * m).flatten(1).sum(1) / n
            d[key] = torch.where(m, img, mean.reshape(-1, *([1] * (img.ndim - 1))).to(img.dtype))
        return d


def deterministic_transforms(
    *,
    mask_keys: Sequence[str],
    image_size: Sequence[int],
    intensity_window: Sequence[float],
    spatial: str = "resize",
    load: bool = False,
    device: str | None = None,
    outside_lung: str = "keep",
) -> Compose:
    """The cacheable part of the chain.

    Args:
        mask_keys: which of ``mask``, ``lung_mask``, ``distractor_mask`` the cases carry.
        image_size: (D, H, W) the model sees.
        intensity_window: (low, high) in HU, mapped linearly onto [0, 1] and clipped.
        spatial: ``resize`` (interpolate to ``image_size``; trilinear for the image, nearest for masks) or
            ``pad_crop`` (keep the voxel size, centre pad with air / crop).
        load: read files named by the keys (``LoadImaged`` keeps the affine) instead of in-memory arrays that already
            carry a channel dimension.
        device: move the tensors there once after caching (e.g. ``"cuda:0"``), or ``None``.
        outside_lung: ``keep`` the image as it is, or set every voxel outside the lung mask (on the model's grid) to
            ``air``, the bottom of the window (0), or to ``lung_mean``, the case's mean intensity inside the lung mask
            (:class:`FillOutsideMaskWithMeand`): the model then sees lung parenchyma only — what the lung mask is
            for — and the chest wall, mediastinum and hila can no longer pass for lesions. With ``air`` the lung's
            border is still a strong edge (parenchyma against −1024 HU); with ``lung_mean`` it is not, so a cubelet on
            the border has no more texture than the lung itself (the edge that texture-sensitive tokens otherwise
            lock onto, docs/results.md). Needs ``lung_mask``.
    """
    if spatial not in SPATIAL_MODES:
        raise ConfigError(f"data.spatial '{spatial}' is not one of {SPATIAL_MODES}.{did_you_mean(spatial, SPATIAL_MODES)}")
    if len(image_size) != 3 or any(int(s) < 1 for s in image_size):
        raise ConfigError(f"data.image_size must be 3 positive sizes (D, H, W), got {list(image_size)}.")
    if outside_lung not in OUTSIDE_LUNG_MODES:
        raise ConfigError(f"data.outside_lung '{outside_lung}' is not one of {OUTSIDE_LUNG_MODES}."
                          f"{did_you_mean(outside_lung, OUTSIDE_LUNG_MODES)}")
    if outside_lung != "keep" and "lung_mask" not in mask_keys:
        raise ConfigError(f"data.outside_lung={outside_lung} needs lung masks (a lung_mask column in the manifest, "
                          "a dummy level with lungs, or run.py preprocess).")
    lo, hi = (float(v) for v in intensity_window)
    if not hi > lo:
        raise ConfigError(f"data.intensity_window must be [low, high] with high > low, got {list(intensity_window)}.")
    keys = ["image", *mask_keys]
    size = [int(s) for s in image_size]
    chain: list = []
    if load:
        chain += [LoadImaged(keys=keys, image_only=True), EnsureChannelFirstd(keys=keys)]
    chain.append(ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
    if spatial == "resize":
        chain.append(Resized(keys="image", spatial_size=size, mode="trilinear", anti_aliasing=False))
        if mask_keys:
            chain.append(Resized(keys=list(mask_keys), spatial_size=size, mode="nearest"))
    else:
        # After windowing 0 is the bottom of the window (air): pad with it.
        chain.append(ResizeWithPadOrCropd(keys=keys, spatial_size=size, mode="constant", value=0.0))
    if outside_lung == "air":  # 0 is the window's bottom (air)
        chain.append(MaskIntensityd(keys="image", mask_key="lung_mask"))
    elif outside_lung == "lung_mean":
        chain.append(FillOutsideMaskWithMeand(keys="image", mask_key="lung_mask"))
    chain.append(EnsureTyped(keys=keys, dtype="float32"))
    if device is not None:
        chain.append(ToDeviced(keys=keys, device=device))
    return Compose(chain)


def random_transforms(
    *,
    mask_keys: Sequence[str],
    flip_prob: float = 0.5,
    affine_prob: float = 0.3,
    rotate_deg: float = 10.0,
    scale: float = 0.05,
    translate: float = 0.0,
    spatial_size: Sequence[int] | None = None,
) -> Compose:
    """Training augmentation; spatial parameters are shared by the image and its masks.

    Args:
        flip_prob: probability of a flip, drawn independently for each of the three axes.
        affine_prob: probability of applying the random affine.
        rotate_deg: maximal rotation about each axis, degrees.
        scale: maximal relative zoom (±).
        translate: maximal shift in voxels (±) along each axis.
        spatial_size: the (fixed) volume size, which lets the affine cache its sampling grid.
    """
    for name, p in (("flip_prob", flip_prob), ("affine_prob", affine_prob)):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"data.{name} must be in [0, 1], got {p}.")
    keys = ["image", *mask_keys]
    chain: list = [RandFlipd(keys=keys, prob=flip_prob, spatial_axis=axis) for axis in range(3)]
    if affine_prob > 0:
        r = math.radians(rotate_deg)
        chain.append(
            RandAffined(
                keys=keys,
                prob=affine_prob,
                rotate_range=(r, r, r),
                scale_range=(scale, scale, scale),
                translate_range=(translate, translate, translate),
                mode=["bilinear", *["nearest"] * len(mask_keys)],
                padding_mode="zeros",
                spatial_size=None if spatial_size is None else [int(s) for s in spatial_size],
                cache_grid=spatial_size is not None,
            )
        )
    return Compose(chain)
