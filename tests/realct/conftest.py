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


@pytest.fixture(scope="session")
def synthetic_osic(ct_samples, tmp_path_factory) -> dict[str, Path]:
    """An OSIC tree (3 patients, each a copy of the real DICOM series under shuffled names) with train.csv and
    survival.csv. Read-only for tests: copy it before modifying."""
    root = tmp_path_factory.mktemp("osic")
    return build_synthetic_osic(root, ct_samples["dicom"], n_patients=3, rng=np.random.default_rng())


# The TotalSegmentator series shows the upper abdomen with lung bases only (a few mL of lung): OSIC runs on it
# accept any non-empty mask; lung1/lung2 are checked with the default volume range.
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
