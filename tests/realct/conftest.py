"""Fixtures for the real-CT tests: the PyPI sample CTs (fetched once per session into the cache, SHA-256
checked), a synthetic chest phantom with known lungs, and a synthetic OSIC tree built from the real DICOM series
(reusable by training tests: ``synthetic_osic`` / ``osic_preprocessed``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from survival3d.data.osic import build_synthetic_osic
from survival3d.data.samples import fetch_samples


@pytest.fixture(scope="session")
def ct_samples() -> dict[str, Path]:
    """``{"lung1", "lung2", "dicom"}`` paths in the cache ($SURVIVAL3D_CACHE or ~/.cache/survival3d)."""
    return fetch_samples()


@pytest.fixture
def dicom_copy(ct_samples, tmp_path) -> Path:
    """A writable copy of the real JPEG 2000 DICOM series (20 slices)."""
    dst = tmp_path / "series"
    shutil.copytree(ct_samples["dicom"], dst)
    return dst


def make_chest_phantom(rng: np.random.Generator, *, spacing: float = 3.0):
    """A torso with two ellipsoid lungs (-850 HU, a vessel inside each), a trachea (radius 12 mm) ending at a carina
    with two bronchi, surrounded by outside air. Voxel i points to patient right (RAS affine).

    Returns ``(array, affine, truth)`` with truth masks ``right``, ``left``, ``vessels``, ``trachea``.
    """
    shape = (96, 80, 72)
    i, j, k = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    cx, cy, cz = 48 + rng.uniform(-3, 3), 40 + rng.uniform(-2, 2), 34 + rng.uniform(-2, 2)
    arr = rng.normal(40.0, 15.0, size=shape)
    body = ((i - cx) / 42) ** 2 + ((j - cy) / 32) ** 2 <= 1
    arr[~body] = rng.normal(-1000.0, 10.0, size=int((~body).sum()))
    truth = {}
    sep = 18 + rng.uniform(-1, 2)
    for name, sign in (("right", +1), ("left", -1)):  # right lung towards +i = +x = patient right
        a, b, c = (12, 16, 22) * rng.uniform(0.9, 1.1, size=3)
        lx = cx + sign * sep
        lung = ((i - lx) / a) ** 2 + ((j - cy) / b) ** 2 + ((k - cz) / c) ** 2 <= 1
        vessel = (i - lx) ** 2 + (j - cy - 3) ** 2 + (k - cz) ** 2 <= 3.0**2
        arr[lung] = rng.normal(-850.0, 20.0, size=int(lung.sum()))
        arr[vessel] = rng.normal(40.0, 10.0, size=int(vessel.sum()))
        truth[name], truth[f"vessel_{name}"] = lung, vessel
        bronchus = np.zeros(shape, dtype=bool)  # carina (cx, cy, cz) → lung centre, radius 2 voxels
        for t in np.linspace(0, 1, 60):
            p = np.array([cx, cy, cz]) + t * (np.array([lx, cy, cz]) - np.array([cx, cy, cz]))
            bronchus |= (i - p[0]) ** 2 + (j - p[1]) ** 2 + (k - p[2]) ** 2 <= 2.0**2
        arr[bronchus] = rng.normal(-1000.0, 10.0, size=int(bronchus.sum()))
    trachea = ((i - cx) ** 2 + (j - cy) ** 2 <= 4.0**2) & (k >= cz)
    arr[trachea] = rng.normal(-1000.0, 10.0, size=int(trachea.sum()))
    truth["trachea"] = trachea
    truth["vessels"] = truth.pop("vessel_right") | truth.pop("vessel_left")
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = rng.uniform(-200, 200, size=3)
    return arr.astype(np.float32), affine, truth


@pytest.fixture
def chest_phantom(rng):
    return make_chest_phantom(rng)


def paint_lung_bases(src: Path, dst: Path, rng: np.random.Generator) -> Path:
    """Copy a DICOM series to ``dst`` (uncompressed) with two synthetic lung bases painted into every slice:
    posterior ellipses of ≈ −850 HU parenchyma with small vessels, left and right of the body centre.

    The TotalSegmentator series is the upper abdomen (its only lung are sub-millilitre partial-volume slivers, which
    the classical masker rightly leaves out), so pipeline tests that need a lung mask on real DICOM use this copy."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in src.iterdir() if p.is_file()):
        ds = pydicom.dcmread(f)
        stored = ds.pixel_array
        slope, inter = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        hu = stored * slope + inter
        rows, cols = np.indices(hu.shape, dtype=float)
        body = np.argwhere(hu > -500).mean(axis=0)
        r0 = body[0] + 35.0 / float(ds.PixelSpacing[0])  # posterior of the body centre (rows run posterior)
        for side in (-1, 1):
            c0 = body[1] + side * 80.0 / float(ds.PixelSpacing[1])
            lung = ((rows - r0) / 60.0) ** 2 + ((cols - c0) / 45.0) ** 2 <= 1
            hu[lung] = rng.normal(-850.0, 30.0, size=int(lung.sum()))
            for _ in range(12):  # vessels: small dense discs inside
                vr, vc = r0 + rng.uniform(-40, 40), c0 + rng.uniform(-28, 28)
                hu[((rows - vr) ** 2 + (cols - vc) ** 2 <= 3.0**2) & lung] = 40.0
        ds.decompress()
        new = np.clip(np.rint((hu - inter) / slope), np.iinfo(stored.dtype).min, np.iinfo(stored.dtype).max)
        ds.PixelData = new.astype(stored.dtype).tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(dst / f.name, enforce_file_format=True)
    return dst


@pytest.fixture(scope="session")
def dicom_with_lungs(ct_samples, tmp_path_factory) -> Path:
    """The real DICOM series (upper abdomen) with two synthetic lung bases painted in (:func:`paint_lung_bases`).
    Read-only for tests."""
    return paint_lung_bases(ct_samples["dicom"], tmp_path_factory.mktemp("dicom_lungs") / "series",
                            np.random.default_rng(14))  # fmt: skip


@pytest.fixture(scope="session")
def synthetic_osic(dicom_with_lungs, tmp_path_factory) -> dict[str, Path]:
    """An OSIC tree (3 patients, each a copy of the real DICOM series with painted lung bases, under shuffled names)
    with train.csv and survival.csv. Read-only for tests: copy it before modifying."""
    root = tmp_path_factory.mktemp("osic")
    return build_synthetic_osic(root, dicom_with_lungs, n_patients=3, rng=np.random.default_rng())


# The TotalSegmentator series shows the upper abdomen (sub-mL lung-base slivers only): OSIC runs use the copy with
# painted lung bases (a few hundred mL) and accept any non-empty mask; lung1/lung2 use the default volume range.
OSIC_FAST_ARGS = ["--size", "48", "--spacing", "3", "--no-volume-check", "--lung-mask", "classical"]


@pytest.fixture(scope="session")
def osic_preprocessed(synthetic_osic, tmp_path_factory) -> dict:
    """``run.py preprocess --osic`` on :func:`synthetic_osic` (48³ at 3 mm): ``{"out": DIR, "manifest": CSV,
    "rc": exit status, "osic": the tree}``."""
    from survival3d.cli import main

    out = tmp_path_factory.mktemp("osic_pp")
    rc = main(["preprocess", "--osic", str(synthetic_osic["root"]), "--survival", str(synthetic_osic["survival_csv"]),
               "--out", str(out), "--workers", "2", *OSIC_FAST_ARGS])  # fmt: skip
    return {"out": out, "manifest": out / "manifest.csv", "rc": rc, "osic": synthetic_osic}
