"""Lung masking: the ``lungmask`` U-Net (R231 / LTRCLobes) when its weights are available, a classical HU-based
masker otherwise. Maskers are registered in :data:`MASKERS` and share one contract::

    labels = masker(array, affine)   # array: (I, J, K) float HU, affine: voxel → RAS+ mm
    # labels: uint8 (I, J, K), 0 = background, 1 = right lung, 2 = left lung (the lungmask R231 convention)

``native_resolution`` tells the preprocessing pipeline whether a masker wants the CT at its acquired resolution
(lungmask, which resamples axial slices to 256² itself) or is run after resampling to the target spacing (classical,
cheaper there).

References:
    Hofmanninger et al., "Automatic lung segmentation in routine imaging is primarily a data diversity problem,
    not a methodology problem", European Radiology Experimental 4:50 (2020) — the lungmask R231/LTRCLobes models.
    Hu, Hoffman & Reinhardt, "Automatic lung segmentation for accurate quantitation of volumetric X-ray CT images",
    IEEE TMI 20(6):490-498 (2001) — threshold, outside-air removal, airway exclusion, left/right separation.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from survival3d.data.readers import LPS_TO_RAS, affine_spacing
from survival3d.errors import ConfigError, InputError
from survival3d.registry import Registry

__all__ = [
    "MASKERS",
    "ClassicalLungMasker",
    "LungmaskMasker",
    "build_masker",
    "resolve_masker_spec",
    "find_lungmask_weights",
    "slice_axis",
    "lung_volumes",
    "check_lung_mask",
    "to_sitk",
]

logger = logging.getLogger(__name__)

MASKERS: Registry = Registry("lung masker")

RIGHT, LEFT = 1, 2


def slice_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to the world superior-inferior axis (the axial slice index)."""
    return int(np.argmax(np.abs(np.asarray(affine)[2, :3]) / np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)))


def _side_labels(components: list[np.ndarray], affine: np.ndarray) -> list[int]:
    """RIGHT for the component whose centroid lies further towards world +x (patient right in RAS+)."""
    xs = []
    for comp in components:
        c = np.argwhere(comp).mean(axis=0)
        xs.append(float((affine[:3, :3] @ c + affine[:3, 3])[0]))
    if len(components) == 1:
        return [RIGHT]
    return [RIGHT, LEFT] if xs[0] > xs[1] else [LEFT, RIGHT]


@MASKERS.register("classical")
class ClassicalLungMasker:
    """Threshold-and-morphology lung masker.

    1. air = HU < ``threshold``;
    2. air connected to the in-plane borders of the volume is outside the body and removed;
    3. the lung *cores* are voxels deeper than ``core_radius_mm`` inside the remaining air (Euclidean distance
       transform): airways thinner than the core radius (main bronchi) and thin junctions between the lungs drop
       out; the two largest cores are the lungs (the trachea core is smaller and discarded). When the lungs still
       touch, the radius grows (×1.5, ×2, ×3) until two cores of comparable size appear;
    4. each core is grown back geodesically inside the air mask by ``core_radius_mm + regrow_margin_mm``, which
       restores the lung surface but climbs only that far up the bronchi (trachea and main bronchi stay out);
    5. holes (vessels, nodules, dense fibrosis enclosed by lung) are filled slice by slice;
    6. the lung whose centroid lies towards world +x (RAS) is labelled right (1), the other left (2).

    Args:
        threshold: HU below which a voxel is air/lung.
        core_radius_mm: depth defining lung cores (mm).
        regrow_margin_mm: extra geodesic growth beyond the core radius (mm).
        min_second_fraction: the second core must hold at least this fraction of the largest one's volume to be
            called a lung.
    """

    native_resolution = False

    def __init__(
        self,
        *,
        threshold: float = -320.0,
        core_radius_mm: float = 8.0,
        regrow_margin_mm: float = 3.0,
        min_second_fraction: float = 0.15,
    ):
        if core_radius_mm <= 0 or regrow_margin_mm < 0:
            raise ValueError(
                f"core_radius_mm {core_radius_mm} must be > 0 and regrow_margin_mm {regrow_margin_mm} >= 0."
            )
        if not 0.0 < min_second_fraction < 1.0:
            raise ValueError(f"min_second_fraction {min_second_fraction} must be in (0, 1).")
        self.threshold = float(threshold)
        self.core_radius_mm = float(core_radius_mm)
        self.regrow_margin_mm = float(regrow_margin_mm)
        self.min_second_fraction = float(min_second_fraction)

    def outside_air(self, air: np.ndarray, axial_axis: int) -> np.ndarray:
        """Air components touching a border face other than the top/bottom slices."""
        labels, n = ndi.label(air)
        if n == 0:
            return np.zeros_like(air)
        touching = set()
        for ax in range(3):
            if ax == axial_axis:
                continue
            for idx in (0, -1):
                face = np.take(labels, idx, axis=ax)
                touching.update(np.unique(face[face > 0]).tolist())
        return np.isin(labels, sorted(touching)) if touching else np.zeros_like(air)

    def _cores(self, depth: np.ndarray) -> list[np.ndarray]:
        """The lung cores: two comparable components at the smallest radius that separates them (else one)."""
        best: list[np.ndarray] = []
        for factor in (1.0, 1.5, 2.0, 3.0):
            labels, n = ndi.label(depth > self.core_radius_mm * factor)
            if n == 0:
                break
            sizes = np.bincount(labels.ravel())[1:]
            order = np.argsort(sizes)[::-1]
            if n >= 2 and sizes[order[1]] >= self.min_second_fraction * sizes[order[0]]:
                return [labels == order[0] + 1, labels == order[1] + 1]
            if not best:
                best = [labels == order[0] + 1]
        return best

    def __call__(self, array: np.ndarray, affine: np.ndarray) -> np.ndarray:
        array = np.asarray(array)
        if array.ndim != 3:
            raise ValueError(f"expected a 3D array, got shape {array.shape}.")
        spacing = affine_spacing(affine)
        axial = slice_axis(affine)
        air = array < self.threshold
        candidate = air & ~self.outside_air(air, axial)
        out = np.zeros(array.shape, dtype=np.uint8)
        if not candidate.any():
            return out
        depth = ndi.distance_transform_edt(candidate, sampling=spacing)
        cores = self._cores(depth)
        if not cores:
            return out
        structure = ndi.generate_binary_structure(3, 2)
        lungs = []
        for core in cores:  # regrow by the radius that defined this core plus the margin
            reach = float(depth[core].min()) + self.regrow_margin_mm
            n_iter = max(1, math.ceil(reach / min(spacing)))
            lungs.append(ndi.binary_dilation(core, structure=structure, iterations=n_iter, mask=candidate))
        for lung, label in zip(lungs, _side_labels(lungs, affine)):
            out[lung & (out == 0)] = label
        for label in (RIGHT, LEFT):  # fill enclosed holes slice by slice
            m = out == label
            if not m.any():
                continue
            filled = np.stack([ndi.binary_fill_holes(s) for s in np.moveaxis(m, axial, 0)], axis=axial)
            out[filled & (out == 0)] = label
        return out


def find_lungmask_weights(modelname: str = "R231") -> Path | None:
    """The lungmask weights file for ``modelname`` in the torch hub cache (``$TORCH_HOME/hub/checkpoints``), if
    it was downloaded there before; ``None`` otherwise (also when the optional ``lungmask`` package is not
    installed). Never downloads."""
    try:
        from lungmask.mask import MODEL_URLS
    except ImportError:
        logger.warning("lungmask is not installed (pip install 'survival3d[lungmask]'): no lungmask weights")
        return None
    import torch

    if modelname not in MODEL_URLS:
        raise ConfigError(f"unknown lungmask model {modelname!r}; known: {sorted(MODEL_URLS)}")
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(MODEL_URLS[modelname][0])
    return path if path.is_file() else None


def to_sitk(array: np.ndarray, affine: np.ndarray):
    """A SimpleITK image (LPS geometry) from an ``(I, J, K)`` array and its RAS affine. The affine's 3×3 part must
    be a rotation times a diagonal scaling (no shear)."""
    import SimpleITK as sitk

    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / spacing[None, :]).ravel().tolist())
    return img


@MASKERS.register("lungmask")
class LungmaskMasker:
    """The lungmask U-Net through ``lungmask.LMInferer(modelpath=...)`` (GPU when available).

    R231-style models (3 classes) give right (1) / left (2) directly; LTRCLobes (6 classes: 1-2 left lobes, 3-5
    right lobes) are merged into the two lungs.

    Args:
        weights: path to a lungmask state dict (``.pth``); default: R231 (or ``modelname``) from the torch hub cache.
        modelname: which hub-cache file to look for when ``weights`` is not given.
        batch_size: slices per forward pass.
        force_cpu: stay on the CPU even when CUDA is available.
    """

    native_resolution = True
    _LOBES_TO_LUNG = np.array([0, LEFT, LEFT, RIGHT, RIGHT, RIGHT], dtype=np.uint8)

    def __init__(
        self,
        *,
        weights: str | Path | None = None,
        modelname: str = "R231",
        batch_size: int = 20,
        force_cpu: bool = False,
    ):
        if weights is None:
            weights = find_lungmask_weights(modelname)
            if weights is None:
                raise ConfigError(
                    f"no lungmask weights: pass --lungmask-weights PATH (the {modelname} .pth file) or place it in "
                    "the torch hub cache; or use --lung-mask classical"
                )
        self.weights = Path(weights)
        if not self.weights.is_file():
            raise InputError("lungmask weights file not found", path=self.weights)
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be >= 1.")
        self.batch_size = int(batch_size)
        self.force_cpu = bool(force_cpu)
        self._inferer = None

    @property
    def inferer(self):
        if self._inferer is None:
            try:
                from lungmask import LMInferer
            except ImportError as e:
                raise ConfigError("the lungmask masker needs the lungmask package: pip install 'survival3d[lungmask]'"
                                  " (or use --lung-mask classical)") from e

            try:
                self._inferer = LMInferer(
                    modelpath=str(self.weights), force_cpu=self.force_cpu, batch_size=self.batch_size,
                    tqdm_disable=True,
                )  # fmt: skip
            except (RuntimeError, KeyError, ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
                raise InputError(f"not a lungmask state dict: {e}", path=self.weights) from e
            logger.info("lungmask %s on %s", self.weights.name, self.inferer.device)
        return self._inferer

    def __call__(self, array: np.ndarray, affine: np.ndarray) -> np.ndarray:
        inferer = self.inferer
        labels = inferer.apply(to_sitk(np.asarray(array, dtype=np.float32), affine))  # (K, J, I), input orientation
        labels = np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(np.uint8)
        n_classes = int(inferer.model.last.out_channels) if hasattr(inferer.model, "last") else int(labels.max()) + 1
        if n_classes == 6:
            labels = self._LOBES_TO_LUNG[np.clip(labels, 0, 5)]
        return labels


def resolve_masker_spec(
    kind: str = "auto", *, weights: str | Path | None = None, modelname: str = "R231", **kwargs: Any
) -> dict[str, Any]:
    """The masker spec for ``--lung-mask {auto,lungmask,classical}``.

    ``auto`` picks lungmask when ``weights`` is given or ``modelname`` weights sit in the torch hub cache, else the
    classical masker. The returned spec (``{"name": ..., **kwargs}``) is what :func:`build_masker` takes and what
    the preprocessing settings record.
    """
    if kind not in ("auto", *MASKERS.keys()):
        MASKERS.get(kind)  # raises ConfigError with did-you-mean
    if kind == "auto":
        if weights is None:
            weights = find_lungmask_weights(modelname)
        kind = "lungmask" if weights is not None else "classical"
        logger.info("lung masker: %s%s", kind, f" ({weights})" if weights is not None else " (no lungmask weights)")
    if kind == "lungmask":
        if weights is None:
            weights = find_lungmask_weights(modelname)
        if weights is None:
            raise ConfigError(
                f"no lungmask weights: pass --lungmask-weights PATH (the {modelname} .pth file) or place it in the "
                "torch hub cache; or use --lung-mask classical"
            )
        return {"name": "lungmask", "weights": str(Path(weights).resolve()), **kwargs}
    if weights is not None:
        raise ConfigError(f"--lungmask-weights given but --lung-mask is {kind!r}")
    return {"name": kind}


def build_masker(kind: str = "auto", *, weights: str | Path | None = None, **kwargs: Any):
    """Build a masker from a name (``auto``, ``lungmask``, ``classical``) and keyword arguments."""
    spec = resolve_masker_spec(kind, weights=weights, **kwargs) if kind in ("auto", "lungmask") else None
    if spec is None:
        if weights is not None:
            raise ConfigError(f"--lungmask-weights given but --lung-mask is {kind!r}")
        return MASKERS.build({"name": kind, **kwargs})
    return MASKERS.build(spec)


def lung_volumes(labels: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """Right, left and total lung volume in litres from a label map and its affine."""
    voxel_l = float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1e6
    right = float(np.count_nonzero(labels == RIGHT)) * voxel_l
    left = float(np.count_nonzero(labels == LEFT)) * voxel_l
    return {"right_l": right, "left_l": left, "total_l": float(np.count_nonzero(labels)) * voxel_l}


def check_lung_mask(
    labels: np.ndarray, affine: np.ndarray, volume_range_l: tuple[float, float] | None, *, source: str | Path
) -> dict[str, float]:
    """Raise :class:`InputError` for an empty mask or a total lung volume outside ``volume_range_l`` (litres)."""
    vols = lung_volumes(labels, affine)
    if vols["total_l"] == 0.0:
        raise InputError("empty lung mask: no lung found (is this a chest CT?)", path=source, field="lung_mask")
    if volume_range_l is not None:
        lo, hi = volume_range_l
        if not lo <= vols["total_l"] <= hi:
            raise InputError(
                f"implausible lung mask: total lung volume {vols['total_l']:.3f} L outside [{lo}, {hi}] L "
                "(set --lung-volume-range to accept partial scans)", path=source, field="lung_mask",
            )  # fmt: skip
    return vols
