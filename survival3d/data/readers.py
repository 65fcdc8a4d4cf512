"""Readers for CT volumes: DICOM series folders, NIfTI and NRRD/MetaImage, all returned as a :class:`CTVolume`.

Every reader returns the voxels in Hounsfield units as ``float32`` indexed ``[i, j, k]`` together with the 4×4
affine that maps ``(i, j, k, 1)`` to RAS+ world coordinates in mm (the NIfTI / nibabel / MONAI ``MetaTensor``
convention). DICOM world coordinates are LPS+; they are converted with ``diag(-1, -1, 1, 1)``.

DICOM (PS3.3 C.7.6.2, Image Plane Module):

* ``ImageOrientationPatient`` holds the row direction cosine (direction of increasing column index) followed by
  the column direction cosine; the slice normal is their cross product.
* slices are ordered by ``ImagePositionPatient`` projected on the normal, never by file name or InstanceNumber;
  the third affine column is the measured step between consecutive slice positions (this keeps gantry tilt).
* HU = stored value × ``RescaleSlope`` + ``RescaleIntercept`` (PS3.3 C.11.1.1.2 modality LUT).
* compressed transfer syntaxes (JPEG 2000, JPEG-LS, JPEG lossless, RLE) decode through pydicom's pylibjpeg
  plugins.

A folder may hold several series: the CT series with the most slices is used unless ``series_uid`` names one.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from survival3d.errors import InputError
from survival3d.registry import Registry

__all__ = [
    "CTVolume",
    "READERS",
    "LPS_TO_RAS",
    "read_ct",
    "read_dicom_series",
    "read_nifti",
    "read_itk",
    "scan_dicom_folder",
    "detect_format",
    "affine_spacing",
    "VolumeInfo",
    "probe_volume",
]

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

READERS: Registry = Registry("reader")

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
# single-frame image storage SOP classes that must carry image geometry
_IMAGE_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.128",  # PET Image Storage
})  # fmt: skip


def affine_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in mm: the lengths of the affine's first three columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0))


@dataclass
class CTVolume:
    """A CT volume in HU with its voxel → RAS+ (mm) affine.

    Attributes:
        array: ``float32`` HU values, shape ``(I, J, K)``, indexed consistently with ``affine``.
        affine: ``4×4`` float64, voxel index → RAS+ world (mm).
        meta: provenance: ``format``, ``source`` and, for DICOM, ``series_uid``, ``modality``, ``n_slices``,
            ``files`` (sorted along the slice normal), ``transfer_syntax``, ``other_series``.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return affine_spacing(self.affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)


def _check_affine(affine: np.ndarray, path: Path, field_name: str) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"the affine holds NaN/inf values or has shape {affine.shape}", path=path, field=field_name)
    det = float(np.linalg.det(affine[:3, :3]))
    if abs(det) < 1e-6:
        raise InputError(
            f"the affine is singular (determinant {det:.3g}): zero spacing or degenerate orientation",
            path=path, field=field_name,
        )  # fmt: skip
    return affine


def _check_voxels(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(f"expected a 3D volume, got shape {array.shape}", path=path, field="dim")
    if min(array.shape) < 1:
        raise InputError(f"empty volume of shape {array.shape}", path=path, field="dim")
    if not np.all(np.isfinite(array)):
        raise InputError("the image holds NaN/inf voxels", path=path, field="data")
    if float(array.min()) > -500.0:
        logger.warning("%s: minimum value %.0f > -500: is this CT in Hounsfield units?", path, float(array.min()))
    return np.ascontiguousarray(array, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------- NIfTI
@READERS.register("nifti")
def read_nifti(path: str | Path, **_: Any) -> CTVolume:
    """Read a NIfTI-1/2 file with nibabel (scl_slope/scl_inter applied); the best affine (sform, else qform)."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        affine = img.affine
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as e:
        raise InputError(f"cannot read NIfTI: {e}", path=path) from e
    if affine is None:
        raise InputError("no affine", path=path, field="sform/qform")
    affine = _check_affine(affine, path, "sform/qform")
    return CTVolume(_check_voxels(data, path), affine, {"format": "nifti", "source": str(path)})


# -------------------------------------------------------------------------------------------- NRRD / MetaImage
@READERS.register("itk")
def read_itk(path: str | Path, **_: Any) -> CTVolume:
    """Read NRRD / MetaImage (or anything SimpleITK reads) as HU; the LPS direction/spacing/origin → RAS affine."""
    import SimpleITK as sitk

    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"cannot read image: {str(e).strip().splitlines()[-1]}", path=path) from e
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"expected a scalar 3D image, got {img.GetDimension()}D with {img.GetNumberOfComponentsPerPixel()} "
            "components", path=path, field="dimension",
        )  # fmt: skip
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=float)[None, :]
    lps[:3, 3] = img.GetOrigin()
    affine = _check_affine(LPS_TO_RAS @ lps, path, "space directions/origin")
    data = sitk.GetArrayViewFromImage(img).transpose(2, 1, 0)  # (z, y, x) → (i, j, k)
    return CTVolume(_check_voxels(data, path), affine, {"format": "itk", "source": str(path)})


# ---------------------------------------------------------------------------------------------------------- DICOM
@dataclass
class _Slice:
    path: Path
    ds: Any  # pydicom Dataset without pixel data


def _is_dicom_candidate(p: Path) -> bool:
    """Files named *.dcm/*.dicom/*.ima, or any file with the ``DICM`` magic at byte 128."""
    if p.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_header(p: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(p), stop_before_pixels=True)
    except InvalidDicomError as e:
        raise InputError(f"not a DICOM file ({e})", path=p) from e
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise InputError(f"unreadable or truncated DICOM header: {type(e).__name__}: {e}", path=p) from e


def scan_dicom_folder(folder: str | Path) -> dict[str, list[_Slice]]:
    """Headers of every DICOM file below ``folder`` grouped by SeriesInstanceUID ('' when absent).

    Files that are neither named like DICOM nor carry the ``DICM`` magic are ignored; a file named ``*.dcm`` that
    is not DICOM raises :class:`InputError`. DICOM objects without image geometry (reports, DICOMDIR) are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("not a folder", path=folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    series: dict[str, list[_Slice]] = defaultdict(list)
    for p in files:
        if not _is_dicom_candidate(p):
            continue
        ds = _read_header(p)
        if "ImagePositionPatient" not in ds or "Rows" not in ds:
            sop = str(ds.get("SOPClassUID", ""))
            if not sop:
                raise InputError("truncated or incomplete DICOM file (no SOPClassUID)", path=p, field="SOPClassUID")
            if sop in _IMAGE_SOP_CLASSES:
                missing = "ImagePositionPatient" if "ImagePositionPatient" not in ds else "Rows"
                raise InputError(f"image without {missing} (truncated?)", path=p, field=missing)
            logger.debug("%s: DICOM object without image geometry (SOP class %s) skipped", p, sop)
            continue
        series[str(ds.get("SeriesInstanceUID", "") or "")].append(_Slice(p, ds))
    if not series:
        raise InputError("no DICOM image files found in folder", path=folder)
    return dict(series)


def _series_label(uid: str) -> str:
    return uid if uid else "(no SeriesInstanceUID)"


def _choose_series(series: dict[str, list[_Slice]], series_uid: str | None, folder: Path) -> str:
    def modality(uid: str) -> str:
        return str(series[uid][0].ds.get("Modality", "")).upper()

    summary = ", ".join(f"{_series_label(u)} [{modality(u) or '?'}, {len(s)} files]" for u, s in series.items())
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(
                f"series {series_uid!r} not found; available: {summary}", path=folder, field="SeriesInstanceUID"
            )
        uid = series_uid
    else:
        ct = [u for u in series if modality(u) == "CT"]
        if not ct:
            uid0 = max(series, key=lambda u: len(series[u]))
            raise InputError(
                f"modality {modality(uid0) or '(missing)'!r} is not CT (series found: {summary})",
                path=series[uid0][0].path, field="Modality",
            )  # fmt: skip
        uid = max(ct, key=lambda u: len(series[u]))
    if modality(uid) != "CT":
        raise InputError(
            f"modality {modality(uid) or '(missing)'!r} is not CT", path=series[uid][0].path, field="Modality"
        )
    if len(series) > 1:
        logger.info("%s: %d series (%s); using %s", folder, len(series), summary, _series_label(uid))
    return uid


def _float_list(ds, tag: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(tag)
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"missing or non-numeric {tag} ({value!r})", path=path, field=tag) from e
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(f"{tag} must hold {n} finite numbers, got {value!r}", path=path, field=tag)
    return arr


def _geometry(slices: list[_Slice], *, gap_factor: float, spacing_rtol: float) -> tuple[list[_Slice], np.ndarray]:
    """Sort slices along the normal, validate the geometry and return ``(sorted slices, RAS affine)``."""
    first = slices[0]
    iop = _float_list(first.ds, "ImageOrientationPatient", 6, first.path)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-2:
        raise InputError(f"direction cosines are not orthonormal: {iop}", path=first.path,
                         field="ImageOrientationPatient")  # fmt: skip
    pix0 = _float_list(first.ds, "PixelSpacing", 2, first.path)
    rows, cols = int(first.ds.Rows), int(first.ds.Columns)
    positions = []
    for s in slices:
        o = _float_list(s.ds, "ImageOrientationPatient", 6, s.path)
        if not np.allclose(o, iop, atol=1e-3):
            raise InputError(f"orientation {o} differs from {iop} in {first.path.name}", path=s.path,
                             field="ImageOrientationPatient")  # fmt: skip
        pix = _float_list(s.ds, "PixelSpacing", 2, s.path)
        if not np.allclose(pix, pix0, rtol=1e-3):
            raise InputError(f"inconsistent spacing: PixelSpacing {pix.tolist()} differs from {pix0.tolist()} in "
                             f"{first.path.name}", path=s.path, field="PixelSpacing")  # fmt: skip
        if (int(s.ds.Rows), int(s.ds.Columns)) != (rows, cols):
            raise InputError(f"slice size {s.ds.Rows}x{s.ds.Columns} differs from {rows}x{cols}", path=s.path,
                             field="Rows/Columns")  # fmt: skip
        positions.append(_float_list(s.ds, "ImagePositionPatient", 3, s.path))
    positions = np.stack(positions)
    dist = positions @ normal
    order = np.argsort(dist, kind="stable")
    slices = [slices[i] for i in order]
    positions, dist = positions[order], dist[order]
    if len(slices) > 1:
        steps = np.diff(dist)
        dup = np.flatnonzero(steps < 1e-3)
        if dup.size:
            i = int(dup[0])
            raise InputError(f"two slices at the same position ({slices[i].path.name} and {slices[i + 1].path.name})",
                             path=slices[i + 1].path, field="ImagePositionPatient")  # fmt: skip
        typical = float(np.median(steps))
        big = np.flatnonzero(steps > gap_factor * typical)
        if big.size:
            i = int(big[0])
            raise InputError(
                f"missing slice: gap of {steps[i]:.3g} mm between {slices[i].path.name} and "
                f"{slices[i + 1].path.name} (usual spacing {typical:.3g} mm)",
                path=slices[i + 1].path, field="ImagePositionPatient",
            )  # fmt: skip
        dev = np.abs(steps - typical) / typical
        if dev.max() > spacing_rtol:
            i = int(np.argmax(dev))
            raise InputError(
                f"inconsistent spacing: slices {slices[i].path.name} → {slices[i + 1].path.name} are "
                f"{steps[i]:.4g} mm apart, the series' usual spacing is {typical:.4g} mm",
                path=slices[i + 1].path, field="ImagePositionPatient",
            )  # fmt: skip
        step = (positions[-1] - positions[0]) / (len(slices) - 1)
    else:
        thick = first.ds.get("SpacingBetweenSlices") or first.ds.get("SliceThickness") or 1.0
        step = normal * float(thick)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * pix0[1]  # i = column index, moves along the row direction
    lps[:3, 1] = col_cos * pix0[0]  # j = row index
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return slices, LPS_TO_RAS @ lps


def _decode(s: _Slice) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(str(s.path))
        px = ds.pixel_array
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, IndexError) as e:
        ts = getattr(getattr(s.ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts)
        raise InputError(f"cannot decode pixel data ({name}): {type(e).__name__}: {e}", path=s.path,
                         field="PixelData") from e  # fmt: skip
    if px.shape != (int(ds.Rows), int(ds.Columns)):
        raise InputError(f"pixel array of shape {px.shape} (multi-frame or colour images are not supported)",
                         path=s.path, field="PixelData")  # fmt: skip
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return px.astype(np.float32) * np.float32(slope) + np.float32(intercept)


@READERS.register("dicom")
def read_dicom_series(
    folder: str | Path,
    *,
    series_uid: str | None = None,
    gap_factor: float = 1.5,
    spacing_rtol: float = 0.1,
    **_: Any,
) -> CTVolume:
    """Read one CT series from a folder of DICOM files.

    Args:
        folder: folder searched recursively.
        series_uid: SeriesInstanceUID to read; default: the CT series with the most slices.
        gap_factor: a step between neighbouring slices larger than ``gap_factor`` × the median step is a missing
            slice.
        spacing_rtol: other relative deviations from the median step above this are inconsistent spacing.

    Raises:
        InputError: naming the file and tag for unreadable/truncated files, non-DICOM ``.dcm`` files, a folder
            without DICOM images, a non-CT modality, missing slices, inconsistent spacing or orientation.
    """
    folder = Path(folder)
    series = scan_dicom_folder(folder)
    uid = _choose_series(series, series_uid, folder)
    slices, affine = _geometry(series[uid], gap_factor=gap_factor, spacing_rtol=spacing_rtol)
    planes = [_decode(s) for s in slices]
    volume = np.stack(planes, axis=-1).transpose(1, 0, 2)  # (rows, cols, k) → (i=col, j=row, k)
    ds0 = slices[0].ds
    meta = {
        "format": "dicom",
        "source": str(folder),
        "series_uid": uid,
        "modality": str(ds0.get("Modality", "")),
        "series_description": str(ds0.get("SeriesDescription", "")),
        "n_slices": len(slices),
        "transfer_syntax": str(getattr(getattr(ds0, "file_meta", None), "TransferSyntaxUID", "")),
        "files": [str(s.path) for s in slices],
        "other_series": {u: len(v) for u, v in series.items() if u != uid},
    }
    logger.info(
        "%s: series %s (%s, %d slices, %s)", folder, _series_label(uid), meta["modality"], len(slices),
        meta["transfer_syntax"],
    )  # fmt: skip
    return CTVolume(_check_voxels(volume, folder), _check_affine(affine, folder, "ImagePositionPatient"), meta)


# --------------------------------------------------------------------------------------------------- dispatch
def detect_format(path: str | Path) -> str:
    """``dicom`` for folders and DICOM files, ``nifti`` for .nii(.gz), ``itk`` for .nrrd/.nhdr/.mha/.mhd."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if name.endswith(_NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(_ITK_SUFFIXES):
        return "itk"
    if _is_dicom_candidate(path):
        return "dicom"
    raise InputError(
        "unknown image format (expected a DICOM folder, .nii/.nii.gz, .nrrd/.nhdr or .mha/.mhd)", path=path
    )


def read_ct(path: str | Path, *, series_uid: str | None = None, format: str | None = None, **kwargs: Any) -> CTVolume:
    """Read a CT from a DICOM folder (or one file of the series), NIfTI or NRRD/MetaImage file.

    Args:
        path: the input.
        series_uid: for DICOM, which series to read (default: the CT series with the most slices).
        format: force a reader from :data:`READERS` instead of guessing from the path.
    """
    path = Path(path)
    fmt = format or detect_format(path)
    reader: Callable[..., CTVolume] = READERS.get(fmt)
    if fmt == "dicom" and path.is_file():
        if series_uid is None:
            series_uid = str(_read_header(path).get("SeriesInstanceUID", "") or "")
        path = path.parent
    return reader(path, series_uid=series_uid, **kwargs)


# ------------------------------------------------------------------------------------ manifest volume checks
@dataclass(frozen=True)
class VolumeInfo:
    """What :func:`probe_volume` found: spatial shape, voxel → world affine, and whether any voxel is non-zero."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    any_nonzero: bool


_PROBED: dict[tuple[str, int, int], VolumeInfo] = {}
MIN_AXIS = 2  # voxels along every axis: fewer is a 2D image or a point, not a volume


def _nifti_voxels(path: Path):
    import nibabel as nib

    img = nib.load(str(path))
    shape = tuple(int(s) for s in img.shape)
    if not path.name.endswith(".gz"):  # a short file would be read past its end: compare sizes before reading
        hdr = img.header
        need = int(hdr.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * hdr.get_data_dtype().itemsize
        have = path.stat().st_size
        if have < need:
            raise EOFError(f"the file is {have} bytes but its header describes {need} bytes (truncated?)")
    return np.asanyarray(img.dataobj), img.affine


def probe_volume(path: str | Path, field: str) -> VolumeInfo:
    """Read a manifest volume once (image or mask) and check it is a readable, finite 3D volume.

    The whole file is decompressed and read here, with nibabel (NIfTI) or SimpleITK (anything else), so that a
    truncated, corrupt or non-image file fails with one line naming it instead of deep inside MONAI's loader (a
    short ``.nii.gz`` aborted the process there). Results are cached per (path, size, mtime).

    Raises:
        InputError: naming the file and the manifest column (``field``): unreadable, not 3D (a trailing axis of
            length 1 is accepted), fewer than :data:`MIN_AXIS` voxels along an axis, NaN/inf voxels, or a bad affine.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise InputError(f"cannot read the file ({e.strerror}).", path=path, field=field) from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _PROBED:
        return _PROBED[key]
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            data, affine = _nifti_voxels(path)
        else:
            import SimpleITK as sitk

            img = sitk.ReadImage(str(path))
            data = sitk.GetArrayFromImage(img)
            if img.GetDimension() == 3 and img.GetNumberOfComponentsPerPixel() == 1:
                data = data.transpose(2, 1, 0)
            direction = np.asarray(img.GetDirection(), dtype=float)
            n = img.GetDimension()
            lps = np.eye(4)
            if n == 3:
                lps[:3, :3] = direction.reshape(3, 3) * np.asarray(img.GetSpacing(), dtype=float)[None, :]
                lps[:3, 3] = img.GetOrigin()
            affine = LPS_TO_RAS @ lps
            data = np.asarray(data)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - nibabel, gzip, zlib and ITK raise many unrelated types for bad files
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise InputError(f"not a readable image ({type(e).__name__}: {text}).", path=path, field=field) from None
    shape = tuple(int(s) for s in data.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
        data = data[..., 0]
    if len(shape) != 3:
        raise InputError(f"expected a 3D volume, got {len(shape)}D of shape {shape}.", path=path, field=field)
    if min(shape) < MIN_AXIS:
        raise InputError(f"expected a 3D volume with at least {MIN_AXIS} voxels along every axis, got shape {shape}.",
                         path=path, field=field)
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{bad} NaN/inf voxel(s) of {np.size(data)}.", path=path, field=field)
    affine = _check_affine(affine, path, field)
    info = VolumeInfo(shape=shape, affine=affine, any_nonzero=bool(np.any(data)))
    _PROBED[key] = info
    return info
