"""CT preprocessing with MONAI transforms, keeping the affine chain so model outputs map back onto the original CT.

Pipeline (each step on a ``MetaTensor``, which carries the voxel → RAS+ affine):

1. ``Orientation("RAS")``;
2. lung masking at acquired resolution (lungmask) — or after step 3 (classical masker);
3. ``Spacing(pixdim=spacing)`` (bilinear for HU, nearest for the mask);
4. plausibility check of the mask (empty / total volume outside ``lung_volume_range_l``);
5. crop to the lung bounding box + ``margin_mm`` (``SpatialCrop``);
6. when the box is larger than ``size``, an isotropic down-scaling ``Resize`` (anti-aliased) so it fits;
7. ``SpatialPad`` to ``size`` (HU padded with the window's lower bound, the mask with 0);
8. HU window: values clipped to ``window``. Images are stored clipped in HU (``int16``); the scaling to [0, 1]
   happens when loading (:func:`ct_load_transforms`, MONAI ``ScaleIntensityRanged``) so a manifest of preprocessed
   real CTs and one of dummy HU-like volumes are read the same way.

Every step's output affine and shape are recorded in the sidecar JSON (``chain``), together with the source file,
its affine and shape; :func:`map_to_original` resamples any array on the preprocessed grid (a heatmap upsampled to
the model input) back onto the original CT grid through the world coordinates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Transform

from survival3d.data.lung_masking import build_masker, check_lung_mask
from survival3d.data.readers import CTVolume, affine_spacing, read_ct
from survival3d.errors import ConfigError
from survival3d.io import write_json, write_nifti

__all__ = [
    "PreprocessSettings",
    "Preprocessed",
    "PIPELINE_VERSION",
    "preprocess_volume",
    "preprocess_case",
    "case_is_done",
    "map_to_original",
    "ct_load_transforms",
    "CTPreprocessd",
    "ct_persistent_dataset",
]

logger = logging.getLogger(__name__)

PIPELINE_VERSION = 1  # bump when the pipeline's output changes for the same settings


@dataclass
class PreprocessSettings:
    """Everything that determines the preprocessed output (its :meth:`digest` keys caches and resumption).

    Args:
        spacing: target voxel spacing (mm) before the fit-to-size resize.
        size: output shape (the model input size).
        window: HU window ``[low, high]``; values are clipped to it, ``low`` is the padding value.
        margin_mm: margin around the lung bounding box.
        crop: crop to the lung bounding box (else the whole resampled volume is fitted to ``size``).
        lung_volume_range_l: plausible total lung volume (litres), ``None`` to accept any non-empty mask.
        masker: the lung masker spec ``{"name": "classical" | "lungmask", **kwargs}`` (see ``MASKERS``).
    """

    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    size: tuple[int, int, int] = (128, 128, 128)
    window: tuple[float, float] = (-1024.0, 150.0)
    margin_mm: float = 10.0
    crop: bool = True
    lung_volume_range_l: tuple[float, float] | None = (0.5, 10.0)
    masker: dict[str, Any] = field(default_factory=lambda: {"name": "classical"})

    def __post_init__(self):
        self.spacing = tuple(float(s) for s in self.spacing)
        self.size = tuple(int(s) for s in self.size)
        self.window = tuple(float(w) for w in self.window)
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ConfigError(f"spacing {self.spacing} must be three positive numbers (mm).")
        if len(self.size) != 3 or min(self.size) < 8:
            raise ConfigError(f"size {self.size} must be three integers >= 8.")
        if len(self.window) != 2 or not self.window[0] < self.window[1]:
            raise ConfigError(f"window {self.window} must be [low, high] with low < high (HU).")
        if self.margin_mm < 0:
            raise ConfigError(f"margin_mm {self.margin_mm} must be >= 0.")
        if self.lung_volume_range_l is not None:
            lo, hi = (float(v) for v in self.lung_volume_range_l)
            if not 0 <= lo < hi:
                raise ConfigError(f"lung_volume_range_l {self.lung_volume_range_l} must be [min, max] litres.")
            self.lung_volume_range_l = (lo, hi)
        self.masker = dict(self.masker)
        if "name" not in self.masker:
            raise ConfigError(f"masker spec {self.masker} has no 'name'.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pipeline_version"] = PIPELINE_VERSION
        return d

    def digest(self) -> str:
        """A short hash of the settings (and pipeline version); a weights path enters by name and size."""
        d = self.to_dict()
        w = d["masker"].get("weights")
        if w is not None:
            p = Path(w)
            d["masker"]["weights"] = [p.name, p.stat().st_size if p.is_file() else None]
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def build_masker(self):
        spec = dict(self.masker)
        return build_masker(spec.pop("name"), **spec)


@dataclass
class Preprocessed:
    """The result of :func:`preprocess_volume`: HU image (clipped to the window), lung labels, their affine, the QC
    numbers and the affine chain."""

    image: np.ndarray
    lung_mask: np.ndarray
    affine: np.ndarray
    qc: dict[str, Any]
    chain: list[dict[str, Any]]


def _step(chain: list, name: str, t, **params) -> None:
    chain.append({
        "step": name,
        "params": params,
        "shape": [int(s) for s in t.shape[1:]],
        "affine": np.asarray(t.affine, dtype=float).round(6).tolist(),
    })  # fmt: skip


def preprocess_volume(vol: CTVolume, settings: PreprocessSettings, masker=None) -> Preprocessed:
    """Run the pipeline on a loaded CT (see the module docstring).

    Args:
        vol: the CT in HU with its RAS affine.
        settings: preprocessing settings.
        masker: a lung masker (default: built from ``settings.masker``).

    Raises:
        InputError: empty or implausible lung mask (naming the source).
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Resize, SpatialCrop, SpatialPad, Spacing
    from monai.transforms.utils import generate_spatial_bounding_box
    from scipy import ndimage as ndi

    masker = settings.build_masker() if masker is None else masker
    source = vol.meta.get("source", "<array>")
    t0 = time.perf_counter()
    chain: list[dict[str, Any]] = []
    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(vol.array, dtype=np.float32))[None],
                     affine=torch.as_tensor(vol.affine, dtype=torch.float64))  # fmt: skip
    img = Orientation(axcodes="RAS", labels=None)(img)  # labels from the MetaTensor space (RAS)
    _step(chain, "Orientation", img, axcodes="RAS")

    mask = None
    if getattr(masker, "native_resolution", False):
        labels = masker(img[0].numpy(), img.affine.numpy())
        mask = MetaTensor(torch.from_numpy(labels.astype(np.float32))[None], affine=img.affine.clone())
    img = Spacing(pixdim=settings.spacing, mode="bilinear", padding_mode="border", dtype=torch.float32)(img)
    _step(chain, "Spacing", img, pixdim=list(settings.spacing))
    mask_report = None
    if mask is None:
        if hasattr(masker, "segment"):  # the classical masker also says what it rejected and how sure it is
            labels, mask_report = masker.segment(img[0].numpy(), img.affine.numpy())
        else:
            labels = masker(img[0].numpy(), img.affine.numpy())
        mask = MetaTensor(torch.from_numpy(labels.astype(np.float32))[None], affine=img.affine.clone())
    else:
        mask = Spacing(pixdim=settings.spacing, mode="nearest", padding_mode="zeros")(mask)
        if tuple(mask.shape) != tuple(img.shape):
            raise RuntimeError(f"mask grid {tuple(mask.shape)} != image grid {tuple(img.shape)} after Spacing")

    labels_rs = mask[0].numpy().astype(np.uint8)
    affine_rs = img.affine.numpy()
    volumes = check_lung_mask(labels_rs, affine_rs, settings.lung_volume_range_l, source=source, report=mask_report)
    n_components = int(ndi.label(labels_rs > 0)[1])
    hu = vol.array

    if settings.crop:
        margin = [int(math.ceil(settings.margin_mm / s)) for s in affine_spacing(affine_rs)]
        start, end = generate_spatial_bounding_box(mask, margin=margin, allow_smaller=True)
        crop = SpatialCrop(roi_start=start, roi_end=end)
        img, mask = crop(img), crop(mask)
        _step(chain, "SpatialCrop", img, roi_start=[int(s) for s in start], roi_end=[int(e) for e in end])

    shape = np.asarray(img.shape[1:], dtype=float)
    scale = min(1.0, float(np.min(np.asarray(settings.size) / shape)))
    if scale < 1.0:
        new = [int(min(sz, max(1, round(s * scale)))) for s, sz in zip(shape, settings.size)]
        img = Resize(spatial_size=new, mode="trilinear", anti_aliasing=True)(img)
        mask = Resize(spatial_size=new, mode="nearest")(mask)
        _step(chain, "Resize", img, spatial_size=new, scale=scale)
    img = SpatialPad(spatial_size=settings.size, method="symmetric", mode="constant", value=settings.window[0])(img)
    mask = SpatialPad(spatial_size=settings.size, method="symmetric", mode="constant", value=0)(mask)
    _step(chain, "SpatialPad", img, spatial_size=list(settings.size), value=settings.window[0])

    lo, hi = settings.window
    image = np.clip(img[0].numpy(), lo, hi)
    image = np.rint(image).astype(np.int16) if float(lo).is_integer() and float(hi).is_integer() else image
    chain.append({"step": "Window", "params": {"low": lo, "high": hi, "stored": "HU clipped"}})
    qc = {
        "source": str(source),
        "format": vol.meta.get("format"),
        "original_shape": list(vol.shape),
        "original_spacing_mm": [round(s, 5) for s in vol.spacing],
        "original_affine": np.asarray(vol.affine, dtype=float).round(6).tolist(),
        "hu_range": [float(hu.min()), float(hu.max())],
        "hu_percentiles_1_99": [float(v) for v in np.percentile(hu[:: 4, :: 4, :], [1, 99])],
        "resampled_spacing_mm": [round(s, 5) for s in affine_spacing(affine_rs)],
        "spacing_mm": [round(s, 5) for s in affine_spacing(img.affine.numpy())],
        "shape": [int(s) for s in image.shape],
        "lung_volume_l": round(volumes["total_l"], 4),
        "right_lung_volume_l": round(volumes["right_l"], 4),
        "left_lung_volume_l": round(volumes["left_l"], 4),
        "lung_components": n_components,
        "masker": type(masker).__name__,
        **({"lung_mask_report": mask_report} if mask_report is not None else {}),
        "series": {k: vol.meta[k] for k in ("series_uid", "modality", "n_slices", "transfer_syntax",
                                             "series_description", "other_series") if k in vol.meta},
        "seconds": round(time.perf_counter() - t0, 3),
    }  # fmt: skip
    return Preprocessed(image, mask[0].numpy().astype(np.uint8), img.affine.numpy().astype(float), qc, chain)


def map_to_original(
    array: np.ndarray,
    affine: np.ndarray,
    original_affine: np.ndarray,
    original_shape: Sequence[int],
    *,
    mode: str = "bilinear",
    padding_value: float = 0.0,
) -> np.ndarray:
    """Resample ``array`` (on the preprocessed grid, ``affine``) onto the original CT grid through world
    coordinates: e.g. a heatmap upsampled to the model input, or the lung mask (``mode="nearest"``).

    The original affine and shape are in the sidecar JSON (``original.affine``, ``original.shape``).
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    src = MetaTensor(torch.as_tensor(np.asarray(array, dtype=np.float32))[None] - padding_value,
                     affine=torch.as_tensor(np.asarray(affine, dtype=float)))  # fmt: skip
    out = SpatialResample(mode=mode, padding_mode="zeros", dtype=torch.float32)(
        src, dst_affine=torch.as_tensor(np.asarray(original_affine, dtype=float)), spatial_size=list(original_shape)
    )
    return out[0].numpy() + padding_value


# ------------------------------------------------------------------------------------------------------ writing
#: NIfTI header of the preprocessed volumes: the RAS affine as sform and qform (code 1 = scanner), units mm.
_NIFTI_HEADER = {"xyzt_units": "mm", "qform_code": 1, "sform_code": 1}


def _case_paths(out_dir: Path, case_id: str) -> dict[str, Path]:
    return {
        "image": out_dir / "images" / f"{case_id}.nii.gz",
        "lung_mask": out_dir / "lung_masks" / f"{case_id}.nii.gz",
        "sidecar": out_dir / "images" / f"{case_id}.json",
        "qc_png": out_dir / "qc" / f"{case_id}.png",
        "qc_json": out_dir / "qc" / f"{case_id}.json",
    }


def case_is_done(out_dir: str | Path, case_id: str, settings: PreprocessSettings) -> dict[str, Any] | None:
    """The sidecar of a case already preprocessed with the same settings (all outputs present), else ``None``."""
    paths = _case_paths(Path(out_dir), case_id)
    try:
        side = json.loads(paths["sidecar"].read_text())
    except (OSError, ValueError):
        return None
    keys = ["image", "lung_mask", "qc_json"] + (["qc_png"] if "qc_png" in side.get("outputs", {}) else [])
    needed = [paths[k] for k in keys]
    if not all(p.is_file() for p in needed):
        return None
    return side if side.get("settings_digest") == settings.digest() else None


def preprocess_case(
    source: str | Path,
    out_dir: str | Path,
    case_id: str,
    settings: PreprocessSettings,
    *,
    masker=None,
    series_uid: str | None = None,
    qc_png: bool = True,
) -> dict[str, Any]:
    """Read, preprocess and write one case; returns the sidecar dict (paths, QC, chain).

    Outputs (each written atomically; the sidecar last, marking the case done): ``images/<id>.nii.gz`` (HU clipped
    to the window, int16), ``lung_masks/<id>.nii.gz`` (uint8, 1 right, 2 left), ``images/<id>.json`` (sidecar:
    source, original grid, settings, affine chain), ``qc/<id>.png`` (montage) and ``qc/<id>.json``.
    """
    from survival3d.data.qc import save_qc_montage

    out_dir = Path(out_dir)
    paths = _case_paths(out_dir, case_id)
    vol = read_ct(source, series_uid=series_uid)
    res = preprocess_volume(vol, settings, masker)
    write_nifti(paths["image"], res.image, res.affine, **_NIFTI_HEADER)
    write_nifti(paths["lung_mask"], res.lung_mask, res.affine, **_NIFTI_HEADER)
    qc = {"id": case_id, **res.qc}
    write_json(paths["qc_json"], qc, default=str)
    if qc_png:
        save_qc_montage(res.image, res.lung_mask, res.affine, paths["qc_png"], title=f"{case_id}: "
                        f"{qc['lung_volume_l']:.2f} L, {qc['lung_components']} components",
                        report=qc.get("lung_mask_report"))  # fmt: skip
    else:
        paths.pop("qc_png")
    sidecar = {
        "id": case_id,
        "original": {"source": str(source), "affine": qc["original_affine"], "shape": qc["original_shape"],
                     **({"series_uid": vol.meta["series_uid"], "files": vol.meta["files"]}
                        if "series_uid" in vol.meta else {})},
        "settings": settings.to_dict(),
        "settings_digest": settings.digest(),
        "affine": np.asarray(res.affine).round(6).tolist(),
        "chain": res.chain,
        "outputs": {k: os.path.relpath(v, paths["sidecar"].parent) for k, v in paths.items() if k != "sidecar"},
        "qc": qc,
    }  # fmt: skip
    write_json(paths["sidecar"], sidecar, default=str)
    return {**sidecar, "paths": {k: str(v) for k, v in paths.items()}}


# ----------------------------------------------------------------------------------------- loading and caching
def ct_load_transforms(window: Sequence[float] = (-1024.0, 150.0), keys: Sequence[str] = ("image", "lung_mask")):
    """MONAI transforms that load preprocessed cases from manifest rows and scale HU to [0, 1] with the window."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged

    return Compose([
        LoadImaged(keys=list(keys), image_only=True),
        EnsureChannelFirstd(keys=list(keys)),
        ScaleIntensityRanged(keys="image", a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True),
    ])  # fmt: skip


class CTPreprocessd(Transform):
    """A MONAI-style dictionary transform running the whole pipeline on ``d[key]`` (a DICOM folder, NIfTI or
    NRRD path): it sets ``image`` ((1, *size) float in [0, 1] after windowing) and ``lung_mask`` ((1, *size)
    uint8) as ``MetaTensor`` with the preprocessed affine. Deterministic, so ``PersistentDataset`` caches it.

    Args:
        settings: preprocessing settings.
        key: the item key holding the input path.
        series_uid_key: optional key holding a SeriesInstanceUID per item.
    """

    def __init__(self, settings: PreprocessSettings, *, key: str = "image", series_uid_key: str | None = None):
        self.settings = settings
        self.key = key
        self.series_uid_key = series_uid_key
        self._masker = None

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        import torch
        from monai.data import MetaTensor

        if self._masker is None:
            self._masker = self.settings.build_masker()
        d = dict(data)
        uid = d.get(self.series_uid_key) if self.series_uid_key else None
        res = preprocess_volume(read_ct(d[self.key], series_uid=uid), self.settings, self._masker)
        lo, hi = self.settings.window
        affine = torch.as_tensor(res.affine)
        scaled = (res.image.astype(np.float32) - lo) / (hi - lo)
        d["source"] = str(d[self.key])
        d["image"] = MetaTensor(torch.from_numpy(scaled)[None], affine=affine)
        d["lung_mask"] = MetaTensor(torch.from_numpy(res.lung_mask)[None], affine=affine.clone())
        return d


def ct_persistent_dataset(
    data: Sequence[Mapping[str, Any]],
    settings: PreprocessSettings,
    cache_dir: str | Path,
    *,
    key: str = "image",
    transform=None,
):
    """A MONAI ``PersistentDataset`` that runs :class:`CTPreprocessd` once per item and caches the result.

    The cache lives in ``cache_dir/ct-<settings digest>``: changing any preprocessing setting (or the pipeline
    version) uses a fresh folder, so stale cached tensors are never reused. ``transform`` (e.g. augmentation) runs
    after the cached part on every access.
    """
    from monai.data import PersistentDataset
    from monai.transforms import Compose

    folder = Path(cache_dir) / f"ct-{settings.digest()}"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "settings.json", settings.to_dict(), default=str)
    chain = [CTPreprocessd(settings, key=key)] + ([] if transform is None else [transform])
    return PersistentDataset(data=list(data), transform=Compose(chain), cache_dir=folder)
