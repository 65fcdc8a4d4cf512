"""Synthetic sphere datasets dummy1–6: a ladder of known generative models for checking that a survival model
predicts the right time *for the right reason* (the lesion drives the time, and the heatmap should find it).

Each level is one :class:`DummyLevel` registered in :data:`DUMMY_LEVELS`, assembled from a background (iid noise
or a thorax phantom), a lesion model, optional distractors, optional clinical covariates and a time model. The
generative models, their parameters and their oracle C-indices are documented in ``docs/dummy.md``.

Geometry lives in normalised coordinates (the volume spans [-1, 1] along every axis), so a case is the same
object at any ``size``; only the voxel grid changes. Array axes are (x: right→left, y: posterior→anterior,
z: inferior→superior) in voxel index order, with the NIfTI affine ``diag(spacing, spacing, spacing, 1)``.

Determinism: case ``index`` of a level draws everything from ``SeedSequence([seed, index, level id])`` (four
spawned streams: geometry, covariates, times, image noise), and the censoring indicator from a golden-ratio
(Kronecker) low-discrepancy sequence in ``index`` with a seed-dependent offset. A case therefore never depends
on which other cases are generated, in which order or by how many workers; and any run of consecutive indices
hits the requested censoring fraction to within a case or two.

Example::

    case = generate_case(3, 0, size=64, seed=0)
    case["image"].shape, case["mask"].sum() > 0, case["time"], case["event"]
    spec = DummySpec(level=3, n=200, size=64)  # the parameters (also the ``data.dummy`` config section)
    write_dummy_dataset("data/dummy3", spec)

The in-memory MONAI dataset is :class:`survival3d.data.dummy_dataset.DummyDataset`. Every function taking a ``spec``
accepts a :class:`DummySpec` or a level (``3``, ``"dummy3"``), and keyword arguments overriding its fields.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from survival3d.data.dummy_spec import DummySpec
from survival3d.errors import ConfigError
from survival3d.registry import Registry

__all__ = [
    "DUMMY_LEVELS",
    "MIN_RADIUS_VOXELS",
    "NoiseBackground",
    "ThoraxPhantom",
    "Spheres",
    "TwoGroupNormalTimes",
    "LogNormalBurdenTimes",
    "ClinicalCovariates",
    "DummyLevel",
    "DummySpec",
    "CaseParams",
    "as_spec",
    "get_level",
    "check_params",
    "sample_case",
    "render_case",
    "case_scalars",
    "generate_case",
    "write_dummy_dataset",
]

logger = logging.getLogger(__name__)

MIN_RADIUS_VOXELS = 1.5  # the smallest sphere of a level must have at least this radius in voxels
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 1/phi: the Kronecker sequence frac(offset + i/phi) has minimal discrepancy
_N_CANDIDATES = 64  # sphere centres proposed per placement round (vectorised rejection sampling)
_MAX_ROUNDS = 50
_GAP = 0.04  # minimal normalised gap between two spheres, and between a distractor and a lung


def _fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniformly spread unit vectors (golden-angle spiral), plus the origin as the last row."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = np.pi * (3.0 - np.sqrt(5.0)) * k
    rho = np.sqrt(1.0 - z**2)
    return np.concatenate([np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=1), np.zeros((1, 3))])


_SPHERE_POINTS = _fibonacci_sphere(256)


# ---------------------------------------------------------------------------------------------------- geometry
@lru_cache(maxsize=16)
def _axis(size: int) -> np.ndarray:
    """Normalised coordinates of the voxel centres along one axis: (2i + 1) / size - 1."""
    a = (2.0 * np.arange(size, dtype=np.float64) + 1.0) / size - 1.0
    a.setflags(write=False)
    return a


def _ellipsoid(center: Sequence[float], axes: Sequence[float], size: int) -> tuple[tuple[slice, ...], np.ndarray]:
    """Voxels whose centres lie in an axis-aligned ellipsoid, as (bounding-box slices, boolean mask of the box)."""
    coords = _axis(size)
    slices, parts = [], []
    for dim, (c, a) in enumerate(zip(center, axes)):
        lo = max(0, math.ceil(((c - a + 1.0) * size - 1.0) / 2.0))
        hi = min(size, math.floor(((c + a + 1.0) * size - 1.0) / 2.0) + 1)
        hi = max(hi, lo)
        slices.append(slice(lo, hi))
        shape = [1, 1, 1]
        shape[dim] = hi - lo
        parts.append((((coords[lo:hi] - c) / a) ** 2).reshape(shape))
    return tuple(slices), (parts[0] + parts[1] + parts[2]) <= 1.0


def _sphere(center: Sequence[float], radius: float, size: int) -> tuple[tuple[slice, ...], np.ndarray]:
    return _ellipsoid(center, (radius, radius, radius), size)


# -------------------------------------------------------------------------------------------------- backgrounds
@dataclass(frozen=True)
class NoiseBackground:
    """A constant HU level plus iid Gaussian noise; spheres may sit anywhere inside the volume.

    Args:
        hu: background intensity (default lung-parenchyma-like, so a soft-tissue sphere stands out).
        noise_sd: standard deviation of the iid noise (HU).
        margin: normalised distance kept between a sphere and the volume border.
    """

    hu: float = -800.0
    noise_sd: float = 40.0
    margin: float = 0.05
    has_lungs: bool = field(default=False, init=False)

    def sample(self, rng: np.random.Generator) -> dict:
        return {}

    def render(self, anatomy: dict, size: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        return np.full((size, size, size), self.hu, dtype=np.float32), None

    def surround_hu(self, anatomy: dict) -> float:
        return self.hu

    def lesion_sites(self, anatomy: dict, rng: np.random.Generator, r: float, n: int):
        lim = 1.0 - r - self.margin
        return rng.uniform(-lim, lim, (n, 3)), np.ones(n, dtype=bool)

    distractor_sites = lesion_sites


@dataclass(frozen=True)
class ThoraxPhantom:
    """An axial-cylinder thorax: air outside, an elliptic soft-tissue body, a vertebral body and two ellipsoidal
    lungs at lung-like HU. Sizes and lung density vary per case by a few percent.

    Lesions are placed inside one lung: the centre and 256 points on the sphere inflated by ``margin`` must lie in
    the same lung ellipsoid (the voxelised lesion is also intersected with the lung mask, so it never leaves it).
    Distractors are placed outside both lungs and off the spine with an exact sufficient condition in the lung's
    normalised frame: a sphere of radius r centred at c misses the ellipsoid (l, a) if
    ``|(c - l) / a| >= 1 + r / min(a)``.

    Args:
        air_hu, body_hu, lung_hu, bone_hu: tissue intensities (HU).
        lung_hu_sd: per-case standard deviation of the lung density.
        noise_sd: iid image noise (HU).
        body_axes: (x, y) semi-axes of the body's elliptic cross-section (normalised units).
        lung_offset: |x| of the lung centres.
        lung_axes: (x, y, z) semi-axes of each lung.
        spine_center, spine_radius: the vertebral body, a cylinder along z.
        jitter: relative per-case variation of body and lung sizes (uniform in ±jitter).
    """

    air_hu: float = -1000.0
    body_hu: float = 40.0
    lung_hu: float = -850.0
    bone_hu: float = 400.0
    lung_hu_sd: float = 15.0
    noise_sd: float = 25.0
    body_axes: tuple[float, float] = (0.92, 0.72)
    lung_offset: float = 0.42
    lung_axes: tuple[float, float, float] = (0.32, 0.5, 0.72)
    spine_center: tuple[float, float] = (0.0, -0.5)
    spine_radius: float = 0.1
    jitter: float = 0.05
    margin: float = 0.03
    has_lungs: bool = field(default=True, init=False)

    def sample(self, rng: np.random.Generator) -> dict:
        body_scale = 1.0 + rng.uniform(-self.jitter, self.jitter)
        lungs = []
        for side in (-1.0, 1.0):
            scale = 1.0 + rng.uniform(-self.jitter, self.jitter, 3)
            axes = np.asarray(self.lung_axes) * scale
            center = np.array([side * self.lung_offset, 0.0, 0.0]) + rng.uniform(-0.02, 0.02, 3)
            lungs.append((center, axes))
        return {
            "body_axes": np.asarray(self.body_axes) * body_scale,
            "lungs": lungs,
            "lung_hu": self.lung_hu + self.lung_hu_sd * rng.standard_normal(),
        }

    def render(self, anatomy: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
        x = _axis(size)
        gx, gy = x[:, None, None], x[None, :, None]
        bx, by = anatomy["body_axes"]
        body = (gx / bx) ** 2 + (gy / by) ** 2 <= 1.0
        spine = (gx - self.spine_center[0]) ** 2 + (gy - self.spine_center[1]) ** 2 <= self.spine_radius**2
        plane = np.where(spine, self.bone_hu, np.where(body, self.body_hu, self.air_hu)).astype(np.float32)
        image = np.empty((size, size, size), dtype=np.float32)
        image[...] = plane
        lung = np.zeros((size, size, size), dtype=bool)
        for center, axes in anatomy["lungs"]:
            sl, m = _ellipsoid(center, axes, size)
            image[sl][m] = anatomy["lung_hu"]
            lung[sl] |= m
        return image, lung

    def surround_hu(self, anatomy: dict) -> float:
        return float(anatomy["lung_hu"])

    def lesion_sites(self, anatomy: dict, rng: np.random.Generator, r: float, n: int):
        lungs = anatomy["lungs"]
        pick = rng.integers(0, len(lungs), n)
        centers = np.stack([c for c, _ in lungs])[pick]
        axes = np.stack([a for _, a in lungs])[pick]
        cand = centers + rng.uniform(-1.0, 1.0, (n, 3)) * np.clip(axes - r, 0.0, None)
        rho = np.linalg.norm((cand - centers) / axes, axis=1)  # in the lung's normalised frame the sphere lies
        r_in = (1.0 + self.margin) * r  # between balls of radius r/max(a) and r/min(a) around the centre
        ok = rho <= 1.0 - r_in / axes.min(axis=1)  # sufficient
        maybe = (rho <= 1.0 - r_in / axes.max(axis=1)) & ~ok  # necessary but not sufficient: check exactly
        first = int(np.argmax(ok)) if ok.any() else n
        check = np.flatnonzero(maybe[:first])[:16]
        if check.size:
            # the centre and 256 points on the slightly inflated sphere all inside the same lung
            pts = cand[check, None, :] + r_in * _SPHERE_POINTS[None]
            inside = np.sum(((pts - centers[check, None, :]) / axes[check, None, :]) ** 2, axis=-1) <= 1.0
            ok[check] = inside.all(axis=1)
        return cand, ok

    def distractor_sites(self, anatomy: dict, rng: np.random.Generator, r: float, n: int):
        lim = 1.0 - r - self.margin
        cand = rng.uniform(-lim, lim, (n, 3))
        ok = np.ones(n, dtype=bool)
        for center, axes in anatomy["lungs"]:
            ok &= np.linalg.norm((cand - center) / axes, axis=1) >= 1.0 + (r + _GAP) / axes.min()
        sx, sy = self.spine_center
        ok &= np.hypot(cand[:, 0] - sx, cand[:, 1] - sy) >= self.spine_radius + r + _GAP
        return cand, ok


# ------------------------------------------------------------------------------------------------ sphere models
@dataclass(frozen=True)
class Spheres:
    """How many spheres a case has and how they look.

    Args:
        count: (min, max) number of spheres, uniform on the integers; for lesions this applies to cases that have
            a lesion at all (probability ``feat_frac``), for distractors to every case.
        radius: (min, max) radius in normalised units (uniform).
        hu: mean intensity; ``None`` = the mean of the surrounding tissue (an average-brightness sphere whose
            voxels are re-centred to exactly that mean).
        texture_sd: standard deviation of the sphere's voxels; ``None`` = the background noise.
    """

    count: tuple[int, int] = (1, 1)
    radius: tuple[float, float] = (0.2, 0.3)
    hu: Optional[float] = 30.0
    texture_sd: Optional[float] = None

    def __post_init__(self):
        if not 0 <= self.count[0] <= self.count[1]:
            raise ValueError(f"count must satisfy 0 <= min <= max, got {self.count}.")
        if not 0 < self.radius[0] <= self.radius[1] < 1:
            raise ValueError(f"radius must satisfy 0 < min <= max < 1, got {self.radius}.")


# ---------------------------------------------------------------------------------------------------- covariates
@dataclass(frozen=True)
class ClinicalCovariates:
    """Age, sex and smoking status, independent of the lesions, shifting log-time (an AFT linear predictor).

    ``shift = age_effect * (age - age_mean) + male_effect * [sex = M] + smoking_effects[smoking_status]``.
    """

    age_mean: float = 65.0
    age_sd: float = 10.0
    age_range: tuple[int, int] = (35, 90)
    age_effect: float = -0.02  # per year: ten years older -> times x0.82
    p_male: float = 0.5
    male_effect: float = -0.2
    smoking_levels: tuple[str, ...] = ("never", "former", "current")
    smoking_probs: tuple[float, ...] = (0.4, 0.35, 0.25)
    smoking_effects: tuple[float, ...] = (0.0, -0.15, -0.35)

    def sample(self, rng: np.random.Generator) -> dict:
        age = int(np.clip(round(self.age_mean + self.age_sd * rng.standard_normal()), *self.age_range))
        sex = "M" if rng.random() < self.p_male else "F"
        cdf = np.cumsum(self.smoking_probs)
        level = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        smoking = self.smoking_levels[min(level, len(cdf) - 1)]
        return {"age": age, "sex": sex, "smoking_status": smoking}

    def log_time_shift(self, cov: dict) -> float:
        return (
            self.age_effect * (cov["age"] - self.age_mean)
            + self.male_effect * (cov["sex"] == "M")
            + self.smoking_effects[self.smoking_levels.index(cov["smoking_status"])]
        )


# --------------------------------------------------------------------------------------------------- time models
@dataclass(frozen=True)
class TwoGroupNormalTimes:
    """Binary lesion effect: T ~ N(lesion_mean, lesion_sd) with a lesion, N(none_mean, none_sd) without.

    ``expected_time`` is the group mean (times ``exp(shift)`` when covariates shift the log-time, the sd scaling
    with it).
    """

    lesion_mean: float = 20.0
    lesion_sd: float = 4.0
    none_mean: float = 70.0
    none_sd: float = 8.0

    def expected(self, radii: Sequence[float], shift: float = 0.0) -> float:
        return (self.lesion_mean if len(radii) else self.none_mean) * math.exp(shift)

    def sample(self, expected: float, radii: Sequence[float], rng: np.random.Generator) -> float:
        mean, sd = (self.lesion_mean, self.lesion_sd) if len(radii) else (self.none_mean, self.none_sd)
        return expected + sd * (expected / mean) * rng.standard_normal()


@dataclass(frozen=True)
class LogNormalBurdenTimes:
    """Log-normal accelerated failure time model driven by the lesion burden.

    .. math::
        b = \\sum_k (r_k / r_{ref})^3, \\qquad
        \\log T = \\log t_0 - \\beta \\log(1 + b) + s + \\sigma \\varepsilon, \\quad \\varepsilon \\sim N(0, 1)

    where :math:`b` is the total lesion volume in units of a reference sphere and :math:`s` the covariate shift.
    ``expected_time`` :math:`= t_0 (1 + b)^{-\\beta} e^{s}` (the median of T).
    """

    t0: float = 75.0
    beta: float = 1.0
    sigma: float = 0.15
    r_ref: float = 0.25

    def burden(self, radii: Sequence[float]) -> float:
        return float(sum((r / self.r_ref) ** 3 for r in radii))

    def expected(self, radii: Sequence[float], shift: float = 0.0) -> float:
        return self.t0 * (1.0 + self.burden(radii)) ** (-self.beta) * math.exp(shift)

    def sample(self, expected: float, radii: Sequence[float], rng: np.random.Generator) -> float:
        return expected * math.exp(self.sigma * rng.standard_normal())


TimeModel = Union[TwoGroupNormalTimes, LogNormalBurdenTimes]


# -------------------------------------------------------------------------------------------------------- levels
@dataclass(frozen=True)
class DummyLevel:
    """One rung of the dummy ladder: background + lesions (+ distractors, covariates) + time model."""

    name: str
    description: str
    background: Union[NoiseBackground, ThoraxPhantom]
    lesions: Spheres
    times: TimeModel
    distractors: Optional[Spheres] = None
    covariates: Optional[ClinicalCovariates] = None
    default_censor_frac: float = 0.3

    @property
    def min_size(self) -> int:
        """The smallest volume edge at which every sphere has a radius of at least MIN_RADIUS_VOXELS voxels."""
        r = min([self.lesions.radius[0]] + ([self.distractors.radius[0]] if self.distractors else []))
        return math.ceil(2.0 * MIN_RADIUS_VOXELS / r)

    @property
    def has_lungs(self) -> bool:
        return self.background.has_lungs


DUMMY_LEVELS: Registry = Registry("dummy level")

_PHANTOM = ThoraxPhantom()


def _register_level(name: str, **fields) -> None:
    """Register a level under ``name``; the registry builds ``DummyLevel(name=name, **fields)``."""
    DUMMY_LEVELS.register(name, partial(DummyLevel, name=name, **fields))


_register_level(
    "dummy1",
    description="one bright sphere in feat_frac of the scans -> short survival; noise background",
    background=NoiseBackground(),
    lesions=Spheres(count=(1, 1), radius=(0.2, 0.3), hu=30.0),
    times=TwoGroupNormalTimes(),
)
_register_level(
    "dummy2",
    description="sphere radius drives survival continuously (log-normal AFT on lesion volume); noise background",
    background=NoiseBackground(),
    lesions=Spheres(count=(1, 1), radius=(0.1, 0.4), hu=30.0),
    times=LogNormalBurdenTimes(t0=75.0, beta=1.0, sigma=0.15, r_ref=0.25),
)
_register_level(
    "dummy3",
    description="thorax phantom (body, two lungs, spine, air); one sphere inside a lung -> short survival",
    background=_PHANTOM,
    lesions=Spheres(count=(1, 1), radius=(0.12, 0.2), hu=30.0),
    times=TwoGroupNormalTimes(),
)
_register_level(
    "dummy4",
    description="phantom; a sphere of the lung's own mean HU, visible only by its texture (sd 120 vs 25 HU)",
    background=_PHANTOM,
    lesions=Spheres(count=(1, 1), radius=(0.15, 0.22), hu=None, texture_sd=120.0),
    times=TwoGroupNormalTimes(),
)
_register_level(
    "dummy5",
    description="phantom; 0..4 spheres in the lungs, more/larger -> shorter (log-normal AFT on total volume)",
    background=_PHANTOM,
    lesions=Spheres(count=(1, 4), radius=(0.1, 0.18), hu=30.0),
    times=LogNormalBurdenTimes(t0=75.0, beta=1.0, sigma=0.15, r_ref=0.15),
)
_register_level(
    "dummy6",
    description="phantom; 0..3 lung lesions, 0..3 bright distractors outside the lungs, age/sex/smoking shift "
    "the hazard, heavy censoring",
    background=_PHANTOM,
    lesions=Spheres(count=(1, 3), radius=(0.1, 0.18), hu=30.0),
    distractors=Spheres(count=(0, 3), radius=(0.1, 0.16), hu=600.0),
    covariates=ClinicalCovariates(),
    times=LogNormalBurdenTimes(t0=50.0, beta=1.0, sigma=0.25, r_ref=0.15),
    default_censor_frac=0.6,
)


def get_level(level: Union[int, str, DummyLevel]) -> DummyLevel:
    """The :class:`DummyLevel` for ``3``, ``"3"`` or ``"dummy3"`` (ConfigError listing the valid levels otherwise);
    ``"ct1"``-``"ct3"`` give the real-anatomy levels of :mod:`survival3d.data.real_anatomy`."""
    if isinstance(level, DummyLevel) or _delegates(level):
        return level
    key = str(level).strip().lower()
    if key.isdigit():
        key = f"dummy{int(key)}"
    return DUMMY_LEVELS.build(key)


SpecLike = Union[DummySpec, int, str, DummyLevel]


def _delegates(lvl: Any) -> bool:
    """Whether ``lvl`` is a level object implementing generation itself (``check_spec(spec)``,
    ``sample_case(spec, index)``, ``render_case(spec, params)``, ``generate_case(spec, index)``), e.g. the
    real-anatomy levels ct1-ct3."""
    return not isinstance(lvl, (DummyLevel, int, str)) and hasattr(lvl, "generate_case")


def as_spec(spec: Optional[SpecLike] = None, **fields: Any) -> DummySpec:
    """``spec`` (a :class:`DummySpec`, or a level for ``DummySpec(level=...)``; None: the defaults) with ``fields``
    (DummySpec field names) overriding its values. Not validated: see :func:`check_params`."""
    if spec is None:
        return DummySpec(**fields)
    if isinstance(spec, DummySpec):
        return replace(spec, **fields) if fields else spec
    return DummySpec(level=spec, **fields)


def check_params(spec: SpecLike, **fields: Any) -> DummyLevel:
    """Validate generation parameters (``as_spec(spec, **fields)``); returns the level.

    Raises:
        ConfigError: naming the bad parameter, its value and the valid range.
    """
    spec = as_spec(spec, **fields)
    lvl = get_level(spec.level)
    n, size, seed, feat_frac = spec.n, spec.size, spec.seed, spec.feat_frac
    censor_frac, spacing, tmax = spec.censor_frac, spec.spacing, spec.tmax
    if int(n) != n or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n}.")
    if int(size) != size or size < lvl.min_size:
        raise ConfigError(
            f"size {size} is too small for {lvl.name}: its smallest sphere (radius {MIN_RADIUS_VOXELS} voxels "
            f"at the minimum) needs size >= {lvl.min_size}."
        )
    if int(seed) != seed or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}.")
    if not 0.0 <= feat_frac <= 1.0:
        raise ConfigError(f"feat_frac must be in [0, 1], got {feat_frac}.")
    if censor_frac is not None and not 0.0 <= censor_frac < 1.0:
        raise ConfigError(f"censor_frac must be in [0, 1), got {censor_frac}.")
    if not (spacing > 0 and math.isfinite(spacing)):
        raise ConfigError(f"spacing must be a positive number of mm, got {spacing}.")
    if not tmax >= 2:
        raise ConfigError(f"tmax must be >= 2, got {tmax}.")
    if _delegates(lvl):
        lvl.check_spec(spec)  # the level's own inputs (ct1-ct3: the background CTs), before anything is written
    elif spec.backgrounds is not None:
        raise ConfigError(f"backgrounds is for the real-anatomy levels ct1-ct3; {lvl.name} draws its own background, "
                          f"got backgrounds={spec.backgrounds!r}.")
    return lvl


# --------------------------------------------------------------------------------------------------- generation
@dataclass
class CaseParams:
    """Everything about a case except its voxels (resolution independent)."""

    id: str
    index: int
    level: str
    anatomy: dict
    lesions: list  # [(center (3,), radius)] in normalised units
    distractors: list
    covariates: dict
    expected_time: float
    true_time: float  # before censoring
    time: float  # observed
    event: int
    extra: dict = field(default_factory=dict)  # level-specific scalars for the manifest (e.g. ct2's extent)


def _case_seeds(lvl: DummyLevel, index: int, seed: int) -> list[np.random.SeedSequence]:
    return np.random.SeedSequence([int(seed), int(index), zlib.crc32(lvl.name.encode())]).spawn(4)


def _censor_u(lvl: DummyLevel, index: int, seed: int) -> float:
    """The case's position in a golden-ratio low-discrepancy sequence, offset per (seed, level)."""
    offset = np.random.SeedSequence([int(seed), zlib.crc32(lvl.name.encode()), 0xCE45]).generate_state(1)[0] / 2**32
    return (offset + index * _GOLDEN) % 1.0


def _place(
    rng: np.random.Generator, radii: Sequence[float], sites, anatomy: dict, avoid: Sequence[tuple] = ()
) -> list[tuple[np.ndarray, float]]:
    """Sequential vectorised rejection sampling of non-overlapping sphere centres."""
    placed: list[tuple[np.ndarray, float]] = []
    others = list(avoid)
    for r in radii:
        for _ in range(_MAX_ROUNDS):
            cand, ok = sites(anatomy, rng, r, _N_CANDIDATES)
            for c2, r2 in others:
                ok &= np.linalg.norm(cand - c2, axis=1) > r + r2 + _GAP
            if ok.any():
                c = cand[int(np.argmax(ok))]
                placed.append((c, float(r)))
                others.append((c, float(r)))
                break
        else:
            raise RuntimeError(f"could not place a sphere of radius {r:.3f} after {_MAX_ROUNDS} rounds.")
    return placed


def sample_case(spec: SpecLike, index: int, **fields: Any) -> CaseParams:
    """Draw case ``index``'s anatomy, spheres, covariates and times without rendering voxels (uses ``level``,
    ``seed``, ``feat_frac``, ``censor_frac`` and ``tmax`` of ``as_spec(spec, **fields)``).

    ``censor_frac=None`` uses the level's default (0.3; 0.6 for dummy6). Times are clipped to [1, tmax] and
    rounded to 0.01. A censored case (``u_index < censor_frac`` in the golden-ratio sequence, independent of
    everything else about the case) is observed at ``1 + (T - 1) * U``, U ~ Uniform(0, 1).
    """
    spec = as_spec(spec, **fields)
    lvl = get_level(spec.level)
    if _delegates(lvl):
        return lvl.sample_case(spec, index)
    seed, feat_frac, tmax = spec.seed, spec.feat_frac, spec.tmax
    censor_frac = lvl.default_censor_frac if spec.censor_frac is None else spec.censor_frac
    geo_ss, cov_ss, time_ss, _ = _case_seeds(lvl, index, seed)
    rng = np.random.default_rng(geo_ss)
    anatomy = lvl.background.sample(rng)
    has_lesion = rng.random() < feat_frac
    k = int(rng.integers(lvl.lesions.count[0], lvl.lesions.count[1] + 1)) if has_lesion else 0
    radii = np.sort(rng.uniform(*lvl.lesions.radius, k))[::-1]  # biggest first: easiest to place
    lesions = _place(rng, radii, lvl.background.lesion_sites, anatomy)
    distractors: list = []
    if lvl.distractors is not None:
        kd = int(rng.integers(lvl.distractors.count[0], lvl.distractors.count[1] + 1))
        dradii = np.sort(rng.uniform(*lvl.distractors.radius, kd))[::-1]
        distractors = _place(rng, dradii, lvl.background.distractor_sites, anatomy, avoid=lesions)
    covariates = lvl.covariates.sample(np.random.default_rng(cov_ss)) if lvl.covariates is not None else {}
    shift = lvl.covariates.log_time_shift(covariates) if lvl.covariates is not None else 0.0

    trng = np.random.default_rng(time_ss)
    lesion_radii = [r for _, r in lesions]
    expected = lvl.times.expected(lesion_radii, shift)
    true_time = float(np.clip(lvl.times.sample(expected, lesion_radii, trng), 1.0, tmax))
    u_cens = trng.random()
    event = int(_censor_u(lvl, index, seed) >= censor_frac)
    time = true_time if event else 1.0 + (true_time - 1.0) * u_cens
    return CaseParams(
        id=f"{lvl.name}_{index:05d}",
        index=int(index),
        level=lvl.name,
        anatomy=anatomy,
        lesions=lesions,
        distractors=distractors,
        covariates=covariates,
        expected_time=round(float(np.clip(expected, 1.0, tmax)), 2),
        true_time=round(true_time, 2),
        time=round(float(time), 2),
        event=event,
    )


def render_case(spec: SpecLike, params: CaseParams, **fields: Any) -> dict[str, Optional[np.ndarray]]:
    """Voxelise a case at ``size`` with the noise of ``seed`` (of ``as_spec(spec, **fields)``): ``image``
    (float32 HU), ``mask``, ``lung_mask``, ``distractor_mask`` (uint8 or None)."""
    spec = as_spec(spec, **fields)
    lvl = get_level(spec.level)
    if _delegates(lvl):
        return lvl.render_case(spec, params)
    size, seed = spec.size, spec.seed
    bg = lvl.background
    rng = np.random.default_rng(_case_seeds(lvl, params.index, seed)[3])
    image, lung = bg.render(params.anatomy, size)
    image += bg.noise_sd * rng.standard_normal(image.shape, dtype=np.float32)
    mask = np.zeros(image.shape, dtype=np.uint8)
    for center, r in params.lesions:
        sl, m = _sphere(center, r, size)
        if lung is not None:
            m &= lung[sl]
        k = int(m.sum())
        z = rng.standard_normal(k).astype(np.float32)
        if lvl.lesions.hu is None:  # average brightness: exactly the surround's mean, texture only
            z = (z - z.mean()) / (z.std() if k > 1 and z.std() > 0 else 1.0)
            values = bg.surround_hu(params.anatomy) + lvl.lesions.texture_sd * z
        else:
            values = lvl.lesions.hu + (lvl.lesions.texture_sd or bg.noise_sd) * z
        image[sl][m] = values
        mask[sl][m] = 1
    distractor = None
    if lvl.distractors is not None:
        distractor = np.zeros(image.shape, dtype=np.uint8)
        for center, r in params.distractors:
            sl, m = _sphere(center, r, size)
            if lung is not None:
                m &= ~lung[sl]
            sd = lvl.distractors.texture_sd or bg.noise_sd
            image[sl][m] = lvl.distractors.hu + sd * rng.standard_normal(int(m.sum())).astype(np.float32)
            distractor[sl][m] = 1
    return {
        "image": image,
        "mask": mask,
        "lung_mask": None if lung is None else lung.astype(np.uint8),
        "distractor_mask": distractor,
    }


def _affine(spacing: float) -> np.ndarray:
    return np.diag([spacing, spacing, spacing, 1.0])


def case_scalars(params: CaseParams, lvl: DummyLevel) -> dict[str, Any]:
    """The manifest's scalar columns of a case (without voxel-derived ones such as ``lesion_volume_mm3``)."""
    out = {
        "id": params.id,
        "time": params.time,
        "event": params.event,
        "expected_time": params.expected_time,
        "n_lesions": len(params.lesions),
        "n_distractors": len(params.distractors) if lvl.distractors is not None else None,
    }
    out.update(params.covariates)
    out.update(params.extra)
    return out


def generate_case(spec: SpecLike, index: int, **fields: Any) -> dict[str, Any]:
    """Generate case ``index`` of ``as_spec(spec, **fields)``, e.g. ``generate_case(3, 0, size=64, seed=0)``
    (``n`` is not used).

    Raises:
        ConfigError: invalid parameters (see :func:`check_params`).

    Returns:
        ``image`` (size³ float32, HU-like), ``mask`` (uint8 lesion mask), ``lung_mask`` / ``distractor_mask``
        (uint8, or None where the level has none), ``time``, ``event``, ``expected_time``, ``id``, ``affine``
        (4x4), ``n_lesions``, ``lesion_volume_mm3``, ``n_distractors`` (None without distractors), and for
        dummy6 the covariates ``age``, ``sex``, ``smoking_status``.
    """
    spec = as_spec(spec, **fields)
    spec = replace(spec, level=check_params(spec))  # resolve the level once
    lvl = spec.level
    if _delegates(lvl):
        return lvl.generate_case(spec, index)
    params = sample_case(spec, index)
    case = render_case(spec, params)
    case.update(case_scalars(params, lvl))
    case["lesion_volume_mm3"] = float(case["mask"].sum()) * spec.spacing**3
    case["affine"] = _affine(spec.spacing)
    return case


# ------------------------------------------------------------------------------------------------------- writing
def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """The case volume as NIfTI (dtype kept, affine as qform and sform code 1, units mm/s), written atomically."""
    from survival3d.io import write_nifti

    write_nifti(path, array, affine, xyzt_units=("mm", "sec"), qform_code=1, sform_code=1)


_FOLDERS = {"image": "images", "mask": "masks", "lung_mask": "lung_masks", "distractor_mask": "distractor_masks"}


def _write_case(index: int, *, out: Path, spec: DummySpec) -> dict[str, Any]:
    case = generate_case(spec, index)
    row: dict[str, Any] = {}
    for key, folder in _FOLDERS.items():
        if case[key] is None:
            row[key] = None
            continue
        path = out / folder / f"{case['id']}.nii.gz"
        _save_nifti(case[key], case["affine"], path)
        row[key] = str(path)
    row.update({k: v for k, v in case.items() if k not in _FOLDERS and k != "affine"})
    return row


def write_dummy_dataset(
    out: Union[str, os.PathLike],
    spec: SpecLike,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    **fields: Any,
) -> Path:
    """Write the ``n`` cases of ``as_spec(spec, **fields)`` as NIfTI (``images/``, ``masks/``, ``lung_masks/``, ``distractor_masks/``), a
    ``dummy_params.json`` with the generation parameters, and ``manifest.csv`` (relative paths) last and
    atomically, so an interrupted run leaves no manifest. Returns the manifest's path.

    Raises:
        ConfigError: bad parameters, or ``out`` already holds a manifest and ``overwrite`` is False.
    """
    import json

    import pandas as pd
    from tqdm.auto import tqdm

    from survival3d.data.manifest import write_manifest

    spec = as_spec(spec, **fields)
    lvl = check_params(spec)
    n, size = spec.n, spec.size
    if int(workers) != workers or workers < 0:
        raise ConfigError(f"workers must be a non-negative integer, got {workers}.")
    out = Path(out)
    manifest = out / "manifest.csv"
    if manifest.exists():
        if not overwrite:
            raise ConfigError(f"{manifest} already exists; choose another --out or pass --overwrite.")
        manifest.unlink()  # first, so that an interrupted overwrite leaves no stale manifest
    for key, folder in _FOLDERS.items():
        if key in ("image", "mask") or (key == "lung_mask" and lvl.has_lungs) or (
            key == "distractor_mask" and lvl.distractors is not None
        ):
            (out / folder).mkdir(parents=True, exist_ok=True)
    params = {"level": lvl.name, "n": n, **spec.case_kwargs()}
    from survival3d.io import write_text

    write_text(out / "dummy_params.json", json.dumps(params, indent=2) + "\n")

    job = partial(_write_case, out=out.resolve(), spec=replace(spec, level=lvl.name))
    bar = tqdm(total=n, desc=f"{lvl.name} ({size}^3)", unit="case", disable=None if progress else True)
    rows = []
    if workers <= 1:
        for i in range(n):
            rows.append(job(i))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for row in pool.map(job, range(n), chunksize=max(1, min(16, n // (4 * workers)))):
                rows.append(row)
                bar.update()
    bar.close()
    frame = pd.DataFrame(rows)
    frame = frame.drop(columns=[c for c in ("n_distractors",) if frame[c].isna().all()])
    write_manifest(frame, manifest)
    logger.info("wrote %d %s cases to %s", n, lvl.name, manifest)
    return manifest
