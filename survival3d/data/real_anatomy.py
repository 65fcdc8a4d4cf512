"""Dummy levels on real anatomy (ct1–ct3): synthetic lesions drawn inside the lungs of real chest CTs.

Each case starts from a real chest CT (the fetched pyradiomics samples ``lung1``/``lung2``, or every CT file of a
folder) preprocessed once per size with the project's own pipeline (:func:`survival3d.data.preprocess.
preprocess_volume`: RAS, 2 mm, classical lung mask, crop to the lungs + 10 mm, fit to ``size``³) and cached in
``<cache>/real_anatomy/``. Per case, from the level's per-case ``SeedSequence`` (as dummy1–6):

1. a background is picked and varied: random rigid motion (rotations ≤ 8° about the body axis, ≤ 4° about the
   others, ±5 % isotropic scale, ±6 mm shift) plus a smooth elastic field (Gaussian-RBF interpolation of a 6³ grid
   of N(0, 4 mm) displacements), applied with one ``scipy.ndimage.map_coordinates`` per volume; a left–right flip
   with probability ½ (lung labels swapped, so label 1 stays the lung on the patient's right);
2. lesions are drawn inside the deformed lung mask (ct1 nodules, ct2/ct3 fibrosis, below);
3. HU scale (×U(0.97, 1.03)) and offset (U(−15, 15) HU) jitter and Gaussian noise (σ ~ U(8, 20) HU).

Geometry lives in normalised coordinates of the cube (−1…1 per axis) and millimetres, so a case is nearly the same
object at 64³ and 128³ (the backgrounds cover the same field of view); placement checks use the lung mask at the
rendered size, so a case can differ slightly between sizes. See docs/dummy.md ("Real anatomy: ct1–ct3").

Levels (registered in :data:`survival3d.data.dummy.DUMMY_LEVELS`, used through ``generate_case("ct1", i, ...)``):

* ``ct1``: 1–3 solid nodules (lobulated, half of them spiculated; 4–30 mm body diameter, log-uniform; 0–60 HU) in
  ``feat_frac`` of the cases; log-normal AFT on presence and total body volume.
* ``ct2``: a fibrosis-like pattern (ground glass −700…−300 HU, reticulation, honeycombing in the most severe part)
  with basal and subpleural predominance covering a fraction ``extent`` ~ U(0.05, 0.4) of the lung in ``feat_frac``
  of the cases; log-time linear in the extent.
* ``ct3``: ``ct2`` + survival-irrelevant distractors (1–4 calcified granulomas in the lungs, 0–2 calcified nodes
  outside the lungs) + covariates (age, sex, smoking status, FVC % predicted) with a known effect.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np

from survival3d.data.dummy import (
    DUMMY_LEVELS,
    CaseParams,
    ClinicalCovariates,
    _case_seeds,
    _censor_u,
    _fibonacci_sphere,
    case_scalars,
)
from survival3d.errors import InputError

__all__ = [
    "RealAnatomyLevel",
    "Background",
    "background_sources",
    "load_background",
    "load_backgrounds",
    "NoduleModel",
    "FibrosisModel",
    "Distractors",
    "FibrosisCovariates",
    "REAL_LEVELS",
]

logger = logging.getLogger(__name__)

CT_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".nii", ".nii.gz")
_BACKGROUND_WINDOW = (-1024.0, 1500.0)  # keep bone and calcifications; the training window clips later
_DIRS = _fibonacci_sphere(256)[:-1]  # unit vectors (the origin row dropped)
_DIRS_FINE = _fibonacci_sphere(2048)[:-1]


# ---------------------------------------------------------------------------------------------- backgrounds
@dataclass(frozen=True)
class Background:
    """A preprocessed chest CT at ``size``³: HU image, lung labels (1 right, 2 left), pleural depth (mm, inside
    the lungs), affine and voxel spacing (mm, isotropic after the fit-to-size resize)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    depth_mm: np.ndarray
    affine: np.ndarray
    spacing: float


def background_sources(backgrounds: Optional[str] = None) -> list[Path]:
    """The CT files behind ``backgrounds``: ``None`` or ``"samples"`` = the fetched lung1/lung2 samples
    (``data_prep/fetch_samples.py``), else every CT file (NRRD, MetaImage, NIfTI) in the folder, sorted by name.

    Raises:
        InputError: nothing usable there (naming the path).
    """
    from survival3d.data.samples import sample_paths

    if backgrounds in (None, "", "samples"):
        paths = sample_paths()
        found = [paths[k] for k in ("lung1", "lung2") if paths[k].is_file()]
        if not found:
            raise InputError(
                "no chest CT samples in the cache; run `python data_prep/fetch_samples.py` first "
                "or pass --backgrounds DIR.", path=str(paths["lung1"].parent), field="backgrounds")
        return found
    folder = Path(backgrounds).expanduser()
    if not folder.is_dir():
        raise InputError("backgrounds must be 'samples' or a folder of chest CTs.", path=str(folder),
                         field="backgrounds")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(CT_SUFFIXES))
    if not found:
        raise InputError(f"no CT files ({', '.join(CT_SUFFIXES)}) in the folder.", path=str(folder),
                         field="backgrounds")
    return found


def _settings(size: int):
    from survival3d.data.preprocess import PreprocessSettings

    return PreprocessSettings(spacing=(2.0, 2.0, 2.0), size=(size,) * 3, window=_BACKGROUND_WINDOW, margin_mm=10.0)


def _cache_file(path: Path, size: int) -> Path:
    from survival3d.data.samples import cache_root

    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}|{_settings(size).digest()}".encode())
    return cache_root() / "real_anatomy" / f"{path.name.split('.')[0]}_{size}_{key.hexdigest()[:12]}.npz"


def load_background(path: str | os.PathLike, size: int) -> Background:
    """The background of CT ``path`` at ``size``³: from the cache, else preprocessed (seconds) and cached."""
    from scipy import ndimage as ndi

    from survival3d.io import atomic_path

    path = Path(path)
    cached = _cache_file(path, size)
    if cached.is_file():
        with np.load(cached) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        from survival3d.data.preprocess import preprocess_volume
        from survival3d.data.readers import read_ct

        pre = preprocess_volume(read_ct(path), _settings(size))
        spacing = float(np.mean(np.linalg.norm(pre.affine[:3, :3], axis=0)))
        lung = pre.lung_mask > 0
        depth = ndi.distance_transform_edt(lung).astype(np.float32) * spacing
        arrays = {"image": pre.image.astype(np.float32), "labels": pre.lung_mask.astype(np.uint8),
                  "depth_mm": depth, "affine": pre.affine.astype(np.float64)}
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        logger.info("cached background %s at %d^3 in %s", path.name, size, cached)
    spacing = float(np.mean(np.linalg.norm(arrays["affine"][:3, :3], axis=0)))
    return Background(path.name.split(".")[0], arrays["image"], arrays["labels"], arrays["depth_mm"],
                      arrays["affine"], spacing)


@lru_cache(maxsize=8)
def load_backgrounds(backgrounds: Optional[str], size: int) -> tuple[Background, ...]:
    """Every background of ``backgrounds`` (see :func:`background_sources`) at ``size``³, cached in memory."""
    return tuple(load_background(p, size) for p in background_sources(backgrounds))


# ------------------------------------------------------------------------------------------------- deformation
def _rbf_matrix(size: int, nodes: int, width: float = 1.0) -> np.ndarray:
    """(size, nodes) Gaussian-RBF interpolation weights from ``nodes`` evenly spread control points onto the voxel
    centres of one axis (rows sum to 1): a smooth tensor-product upsampling of a coarse grid."""
    x = (2.0 * np.arange(size) + 1.0) / size - 1.0
    g = np.linspace(-1.0, 1.0, nodes)
    h = width * 2.0 / (nodes - 1)
    w = np.exp(-0.5 * ((x[:, None] - g[None]) / h) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


@lru_cache(maxsize=32)
def _rbf(size: int, nodes: int) -> np.ndarray:
    m = _rbf_matrix(size, nodes)
    m.setflags(write=False)
    return m


def _upsample(coarse: np.ndarray, size: int) -> np.ndarray:
    """A coarse (n, n, n) grid onto (size, size, size) by separable RBF interpolation (three matrix products)."""
    a = _rbf(size, coarse.shape[0])
    out = np.tensordot(a, coarse.astype(np.float32), axes=(1, 0))  # (S, n, n)
    out = np.tensordot(out, a, axes=(2, 1))  # (S, n, S)
    return np.einsum("inj,kn->ikj", out, a, optimize=True)  # (S, S, S)


def _smooth_field(rng: np.random.Generator, nodes: int, size: int) -> np.ndarray:
    """A smooth random field of unit standard deviation (RBF-interpolated iid normal nodes)."""
    f = _upsample(rng.standard_normal((nodes,) * 3), size)
    return (f - f.mean()) / (f.std() + 1e-6)


@dataclass(frozen=True)
class Deformation:
    """Random rigid + elastic variation and left-right flip (parameters drawn by :meth:`sample`)."""

    max_rot_axial_deg: float = 8.0
    max_rot_other_deg: float = 4.0
    scale: float = 0.05
    shift_mm: float = 6.0
    elastic_nodes: int = 6
    elastic_mm: float = 4.0
    flip_prob: float = 0.5

    def sample(self, rng: np.random.Generator) -> dict:
        ang = np.deg2rad(rng.uniform(-1, 1, 3) * [self.max_rot_other_deg, self.max_rot_other_deg,
                                                   self.max_rot_axial_deg])
        return {"angles": ang, "scale": 1.0 + rng.uniform(-self.scale, self.scale),
                "shift_mm": rng.uniform(-self.shift_mm, self.shift_mm, 3),
                "elastic_mm": self.elastic_mm * rng.standard_normal((3,) + (self.elastic_nodes,) * 3),
                "flip": bool(rng.random() < self.flip_prob)}

    @staticmethod
    def coordinates(p: dict, size: int, spacing: float) -> np.ndarray:
        """Source voxel coordinates (3, S, S, S) of every output voxel: q = R (x - c) / s + c + t + u(x)."""
        s, c = np.sin(p["angles"]), np.cos(p["angles"])
        rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
        ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
        rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
        m = (rz @ ry @ rx) / p["scale"]
        centre = (size - 1) / 2.0
        ax = (np.arange(size, dtype=np.float32) - centre)
        grids = (ax[:, None, None], ax[None, :, None], ax[None, None, :])
        q = np.empty((3, size, size, size), dtype=np.float32)
        for i in range(3):
            q[i] = (m[i, 0] * grids[0] + m[i, 1] * grids[1] + m[i, 2] * grids[2]
                    + centre + p["shift_mm"][i] / spacing)
            q[i] += _upsample(p["elastic_mm"][i], size) / spacing
        return q


def _warp(array: np.ndarray, coords: np.ndarray, order: int, cval: float, flip: bool) -> np.ndarray:
    from scipy import ndimage as ndi

    out = ndi.map_coordinates(array, coords, order=order, mode="constant", cval=cval, prefilter=False)
    return out[::-1] if flip else out


def _deform_labels(bg: Background, deform: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates and the warped lung labels; a flip swaps labels 1 and 2 (right stays right)."""
    coords = Deformation.coordinates(deform, size, bg.spacing)
    labels = _warp(bg.labels, coords, 0, 0, deform["flip"])
    if deform["flip"]:
        labels = np.where(labels > 0, 3 - labels, 0).astype(np.uint8)
    return coords, labels


# ----------------------------------------------------------------------------------------------- lesion models
def _norm_to_vox(x: np.ndarray, size: int) -> np.ndarray:
    return (np.asarray(x) + 1.0) * size / 2.0 - 0.5


def _inside(lung: np.ndarray, vox: np.ndarray) -> np.ndarray:
    """Whether voxel coordinates (..., 3) fall in ``lung`` (nearest voxel; outside the volume = False)."""
    idx = np.rint(vox).astype(np.int64)
    size = lung.shape[0]
    ok = np.all((idx >= 0) & (idx < size), axis=-1)
    idx = np.clip(idx, 0, size - 1)
    return ok & lung[idx[..., 0], idx[..., 1], idx[..., 2]]


@dataclass(frozen=True)
class NoduleModel:
    """Solid nodules (ct1): a lobulated body ``R(u) = r0 (1 + sum_k a_k exp(kappa (u.v_k - 1)))`` (2–5 lobes,
    a_k ~ U(0.1, 0.35), kappa ~ U(3, 8)) plus, in ``p_spiculated`` of the nodules, 4–10 thin spicules of length
    U(0.4, 1.2) r0. Body diameter 2 r0 log-uniform in ``diameter_mm``; HU U(0, 60) + iid texture (sd 20 HU).
    ``volume_mm3`` (the body, 2047 directions) drives survival; spicules are margin only."""

    count: tuple[int, int] = (1, 3)
    diameter_mm: tuple[float, float] = (4.0, 30.0)
    hu: tuple[float, float] = (0.0, 60.0)
    texture_sd: float = 20.0
    p_spiculated: float = 0.5

    def sample_shape(self, rng: np.random.Generator) -> dict:
        lo, hi = np.log(self.diameter_mm)
        r0 = float(np.exp(rng.uniform(lo, hi))) / 2.0
        nl = int(rng.integers(2, 6))
        ns = int(rng.integers(4, 11)) if rng.random() < self.p_spiculated else 0
        v = rng.standard_normal((nl, 3))
        w = rng.standard_normal((ns, 3))
        return {"r0": r0, "lobe_dirs": v / np.linalg.norm(v, axis=1, keepdims=True),
                "lobe_amp": rng.uniform(0.1, 0.35, nl), "lobe_kappa": rng.uniform(3.0, 8.0, nl),
                "spic_dirs": w / np.linalg.norm(w, axis=1, keepdims=True) if ns else np.zeros((0, 3)),
                "spic_len": rng.uniform(0.4, 1.2, ns), "hu": float(rng.uniform(*self.hu))}

    @staticmethod
    def body_radius(shape: dict, u: np.ndarray) -> np.ndarray:
        lob = np.exp(shape["lobe_kappa"] * (u @ shape["lobe_dirs"].T - 1.0)) @ shape["lobe_amp"]
        return shape["r0"] * (1.0 + lob)

    @classmethod
    def radius(cls, shape: dict, u: np.ndarray) -> np.ndarray:
        r = cls.body_radius(shape, u)
        if len(shape["spic_len"]):
            r = r + shape["r0"] * (np.exp(150.0 * (u @ shape["spic_dirs"].T - 1.0)) @ shape["spic_len"])
        return r

    @classmethod
    def volume_mm3(cls, shape: dict) -> float:
        return float(4.0 * np.pi / 3.0 * np.mean(cls.body_radius(shape, _DIRS_FINE) ** 3))


@dataclass(frozen=True)
class FibrosisModel:
    """A fibrosis-like pattern (ct2/ct3) covering a fraction ``extent`` of the lung voxels: those with the highest
    score ``-depth/lambda - height/eta + gamma g`` (depth under the pleura in mm, height 0 at the lung base to 1 at
    the apex, g a smooth random field), so basal and subpleural lung is taken first. Inside: ground glass
    (HU U(-700, -300) per case, blended 85 % over the lung), reticulation (a net of lines at U(-250, -50) HU where a
    band-limited field crosses zero, soft-edged) and, in the top ``honeycomb_frac`` of the score when ``extent`` >=
    0.12, honeycombing (clustered soft-edged cysts at -930 HU with 0 HU rims)."""

    extent: tuple[float, float] = (0.05, 0.4)
    depth_scale_mm: float = 12.0
    height_scale: float = 0.3
    patchiness: float = 0.8
    ggo_hu: tuple[float, float] = (-700.0, -300.0)
    reticular_hu: tuple[float, float] = (-250.0, -50.0)
    honeycomb_frac: float = 0.3
    coarse_nodes: int = 8  # smooth-field control points per axis (about 4 cm apart)
    fine_nodes: int = 36  # texture control points per axis (about 9 mm apart)

    def sample(self, rng: np.random.Generator) -> dict:
        return {"extent": float(rng.uniform(*self.extent)), "ggo_hu": float(rng.uniform(*self.ggo_hu)),
                "reticular_hu": float(rng.uniform(*self.reticular_hu)), "reticular_width": float(rng.uniform(0.15, 0.35))}


@dataclass(frozen=True)
class Distractors:
    """Survival-irrelevant bright lesions (ct3): calcified granulomas inside the lungs and calcified nodes in
    the soft tissue outside them (spheres with partial-volume edges)."""

    granulomas: tuple[int, int] = (1, 4)
    granuloma_diameter_mm: tuple[float, float] = (4.0, 10.0)
    nodes: tuple[int, int] = (0, 2)
    node_diameter_mm: tuple[float, float] = (8.0, 16.0)
    hu: tuple[float, float] = (300.0, 900.0)


@dataclass(frozen=True)
class FibrosisCovariates(ClinicalCovariates):
    """Age, sex, smoking status (as dummy6) and FVC % predicted, which falls with the fibrosis extent:
    ``fvc = fvc_mean - fvc_per_extent * extent + N(0, fvc_sd)`` clipped to [30, 140]; its effect on log-time is
    ``fvc_effect * (fvc - 80)`` on top of the dummy6 shifts."""

    fvc_mean: float = 95.0
    fvc_per_extent: float = 100.0
    fvc_sd: float = 10.0
    fvc_effect: float = 0.01

    def sample_fvc(self, rng: np.random.Generator, extent: float) -> float:
        return round(float(np.clip(self.fvc_mean - self.fvc_per_extent * extent + self.fvc_sd * rng.standard_normal(),
                                   30.0, 140.0)), 1)

    def log_time_shift(self, cov: dict) -> float:
        return super().log_time_shift(cov) + self.fvc_effect * (cov["fvc_percent"] - 80.0)


# ------------------------------------------------------------------------------------------------------ levels
@dataclass(frozen=True)
class RealAnatomyLevel:
    """A dummy level on real chest CT backgrounds (see the module docstring). It implements the level protocol
    :mod:`survival3d.data.dummy` delegates to: ``check_spec(spec)``, ``sample_case(spec, index)``,
    ``render_case(spec, params)``, ``generate_case(spec, index)``, plus ``min_size``, ``has_lungs`` and
    ``distractors``.

    Time model (log-normal AFT; ``expected_time`` = the median ``t0 exp(eta + shift)``):
    ct1: ``eta = -presence_effect [k > 0] - beta log(1 + V / v_ref_mm3)`` with V the total nodule body volume;
    ct2/ct3: ``eta = -extent_effect * extent``; ct3 adds the covariate shift.
    """

    name: str
    description: str
    lesion: str  # "nodules" | "fibrosis"
    nodules: NoduleModel = field(default_factory=NoduleModel)
    fibrosis: FibrosisModel = field(default_factory=FibrosisModel)
    distractors: Optional[Distractors] = None
    covariates: Optional[FibrosisCovariates] = None
    deformation: Deformation = field(default_factory=Deformation)
    t0: float = 75.0
    sigma: float = 0.15
    presence_effect: float = 0.3
    beta: float = 1.0
    v_ref_mm3: float = 4.0 / 3.0 * math.pi * 7.5**3  # a 15 mm nodule
    extent_effect: float = 5.0
    default_censor_frac: float = 0.3
    min_size: int = 24
    has_lungs: bool = True

    # ---------------------------------------------------------------- geometry without voxels (but a lung mask)
    def _geometry(self, spec, index: int) -> tuple[dict, np.ndarray, np.ndarray, list, list, dict]:
        backgrounds = load_backgrounds(spec.backgrounds, int(spec.size))
        geo_ss, cov_ss, _, _ = _case_seeds(self, index, spec.seed)
        rng = np.random.default_rng(geo_ss)
        b = int(rng.integers(len(backgrounds)))
        bg = backgrounds[b]
        deform = self.deformation.sample(rng)
        size = int(spec.size)
        coords, labels = _deform_labels(bg, deform, size)
        lung = labels > 0
        anatomy = {"background": bg.name, "background_index": b, "deform": deform, "spacing": bg.spacing}
        has_lesion = rng.random() < spec.feat_frac
        lesions: list = []
        extra: dict = {}
        if self.lesion == "nodules":
            k = int(rng.integers(self.nodules.count[0], self.nodules.count[1] + 1)) if has_lesion else 0
            shapes = sorted((self.nodules.sample_shape(rng) for _ in range(k)), key=lambda s: -s["r0"])
            lesions = self._place_nodules(rng, shapes, lung, size, bg.spacing)
            extra["lesion_volume_true_mm3"] = round(sum(NoduleModel.volume_mm3(s) for s in lesions), 1)
        else:
            fib = self.fibrosis.sample(rng)
            fib["extent"] = fib["extent"] if has_lesion else 0.0
            fib["field_seed"] = int(rng.integers(2**31))
            lesions = [fib] if has_lesion else []
            extra["extent"] = round(fib["extent"], 4)
        distractors: list = []
        if self.distractors is not None:
            distractors = self._place_distractors(rng, lung, size, bg.spacing, lesions)
        covariates: dict = {}
        if self.covariates is not None:
            crng = np.random.default_rng(cov_ss)
            covariates = self.covariates.sample(crng)
            covariates["fvc_percent"] = self.covariates.sample_fvc(crng, extra.get("extent", 0.0))
        return anatomy, coords, labels, lesions, distractors, {**extra, "covariates": covariates}

    def _place_nodules(self, rng, shapes, lung, size, spacing) -> list:
        placed: list = []
        lung_idx = np.flatnonzero(lung)
        if lung_idx.size == 0:
            return placed
        for shape in shapes:
            for attempt in range(40):
                cand_vox = np.stack(np.unravel_index(rng.choice(lung_idx, 64), lung.shape), axis=1)
                cand_vox = cand_vox + rng.uniform(-0.5, 0.5, cand_vox.shape)
                body = NoduleModel.body_radius(shape, _DIRS) * 1.1 / spacing  # voxels
                pts = cand_vox[:, None, :] + body[None, :, None] * _DIRS[None]
                ok = _inside(lung, pts).all(axis=1)
                for other in placed:
                    oc = _norm_to_vox(other["center"], size)
                    ok &= np.linalg.norm(cand_vox - oc, axis=1) * spacing > 1.4 * (shape["r0"] + other["r0"]) + 2.0
                if ok.any():
                    c = cand_vox[int(np.argmax(ok))]
                    placed.append({**shape, "center": (2.0 * c + 1.0) / size - 1.0})
                    break
                if attempt % 8 == 7:  # too big for this lung: shrink (the oracle uses the drawn shape)
                    shape = {**shape, "r0": shape["r0"] * 0.8}
        return placed

    def _place_distractors(self, rng, lung, size, spacing, lesions) -> list:
        d = self.distractors
        out: list = []
        kinds = [("granuloma", d.granuloma_diameter_mm)] * int(rng.integers(d.granulomas[0], d.granulomas[1] + 1))
        kinds += [("node", d.node_diameter_mm)] * int(rng.integers(d.nodes[0], d.nodes[1] + 1))
        from scipy import ndimage as ndi

        near_lung = ndi.binary_dilation(lung, iterations=2)
        for kind, diam in kinds:
            r = float(rng.uniform(*diam)) / 2.0
            hu = float(rng.uniform(*d.hu))
            for _ in range(40):
                cand = rng.uniform(-0.85, 0.85, (64, 3))
                vox = _norm_to_vox(cand, size)
                pts = vox[:, None, :] + (r * 1.2 / spacing) * _DIRS[None]
                inside = _inside(lung, pts)
                if kind == "granuloma":
                    ok = inside.all(axis=1)
                else:  # outside the lungs and away from them, in tissue (checked at render: body > -300 HU)
                    ok = ~_inside(near_lung, pts).any(axis=1)
                for o in out:
                    ok &= np.linalg.norm(vox - _norm_to_vox(o["center"], size), axis=1) * spacing > r + o["r"] + 3
                if ok.any():
                    out.append({"kind": kind, "center": cand[int(np.argmax(ok))], "r": r, "hu": hu})
                    break
        return out

    def _times(self, spec, index: int, lesions: list, extra: dict) -> tuple[float, float, float, int]:
        if self.lesion == "nodules":
            eta = -self.presence_effect * (len(lesions) > 0) - self.beta * math.log1p(
                extra["lesion_volume_true_mm3"] / self.v_ref_mm3)
        else:
            eta = -self.extent_effect * extra["extent"]
        shift = self.covariates.log_time_shift(extra["covariates"]) if self.covariates is not None else 0.0
        expected = self.t0 * math.exp(eta + shift)
        _, _, time_ss, _ = _case_seeds(self, index, spec.seed)
        trng = np.random.default_rng(time_ss)
        true_time = float(np.clip(expected * math.exp(self.sigma * trng.standard_normal()), 1.0, spec.tmax))
        u_cens = trng.random()
        censor_frac = self.default_censor_frac if spec.censor_frac is None else spec.censor_frac
        event = int(_censor_u(self, index, spec.seed) >= censor_frac)
        time = true_time if event else 1.0 + (true_time - 1.0) * u_cens
        return float(np.clip(expected, 1.0, spec.tmax)), true_time, time, event

    def sample_case(self, spec, index: int) -> CaseParams:
        """Case ``index`` without its image (the deformed lung mask is computed: lesions are placed in it)."""
        return self._sample(spec, index)[0]

    def _sample(self, spec, index: int) -> tuple[CaseParams, np.ndarray, np.ndarray]:
        anatomy, coords, labels, lesions, distractors, extra = self._geometry(spec, index)
        expected, true_time, time, event = self._times(spec, index, lesions, extra)
        covariates = extra.pop("covariates")
        return CaseParams(id=f"{self.name}_{index:05d}", index=int(index), level=self.name, anatomy=anatomy,
                          lesions=lesions, distractors=distractors, covariates=covariates,
                          expected_time=round(expected, 2), true_time=round(true_time, 2), time=round(time, 2),
                          event=event, extra=extra), coords, labels

    # --------------------------------------------------------------------------------------------- rendering
    def deformed_labels(self, spec, params: CaseParams) -> tuple[np.ndarray, np.ndarray]:
        """The case's source coordinates (3, S, S, S) and lung labels (1 right, 2 left) after deformation and flip."""
        size = int(spec.size)
        bg = load_backgrounds(spec.backgrounds, size)[params.anatomy["background_index"]]
        return _deform_labels(bg, params.anatomy["deform"], size)

    def render_case(self, spec, params: CaseParams, coords=None, labels=None) -> dict[str, Optional[np.ndarray]]:
        """The voxels of a sampled case: ``image`` (float32 HU), ``mask``, ``lung_mask`` (binary),
        ``distractor_mask`` (ct3; else None)."""
        size = int(spec.size)
        bg = load_backgrounds(spec.backgrounds, size)[params.anatomy["background_index"]]
        deform = params.anatomy["deform"]
        if coords is None or labels is None:
            coords, labels = self.deformed_labels(spec, params)
        image = _warp(bg.image, coords, 1, _BACKGROUND_WINDOW[0], deform["flip"])
        lung = labels > 0
        rng = np.random.default_rng(_case_seeds(self, params.index, spec.seed)[3])
        mask = np.zeros(image.shape, dtype=np.uint8)
        if self.lesion == "nodules":
            for nod in params.lesions:
                self._draw_nodule(image, mask, lung, nod, size, bg.spacing, rng)
        elif params.lesions:
            depth = _warp(bg.depth_mm, coords, 1, 0.0, deform["flip"])
            self._draw_fibrosis(image, mask, lung, depth, params.lesions[0], size, bg.spacing)
        distractor = None
        if self.distractors is not None:
            distractor = np.zeros(image.shape, dtype=np.uint8)
            for d in params.distractors:
                self._draw_sphere(image, distractor, lung, d, size, bg.spacing, rng)
        hu_scale = rng.uniform(0.97, 1.03)
        hu_offset = rng.uniform(-15.0, 15.0)
        noise_sd = rng.uniform(8.0, 20.0)
        image = (image - _BACKGROUND_WINDOW[0]) * hu_scale + _BACKGROUND_WINDOW[0] + hu_offset
        image += noise_sd * rng.standard_normal(image.shape, dtype=np.float32)
        return {"image": image.astype(np.float32), "mask": mask, "lung_mask": lung.astype(np.uint8),
                "distractor_mask": distractor}

    @staticmethod
    def _box(center_vox: np.ndarray, radius_vox: float, size: int):
        lo = np.maximum(np.floor(center_vox - radius_vox - 1).astype(int), 0)
        hi = np.minimum(np.ceil(center_vox + radius_vox + 2).astype(int), size)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
        return sl, grid.astype(np.float64) - center_vox

    def _draw_nodule(self, image, mask, lung, nod, size, spacing, rng) -> None:
        c = _norm_to_vox(nod["center"], size)
        rmax = float(NoduleModel.radius(nod, _DIRS).max()) / spacing
        sl, rel = self._box(c, rmax, size)
        d = np.linalg.norm(rel, axis=-1)
        u = rel / np.maximum(d, 1e-6)[..., None]
        rad = NoduleModel.radius(nod, u.reshape(-1, 3)).reshape(d.shape) / spacing
        frac = np.clip(rad - d + 0.5, 0.0, 1.0)
        centre_voxel = tuple(np.clip(np.rint(c).astype(int), 0, size - 1) - [s.start for s in sl])
        sub_voxel = min(1.0, NoduleModel.volume_mm3(nod) / spacing**3)  # partial volume of a sub-voxel nodule
        frac[centre_voxel] = max(frac[centre_voxel], sub_voxel)
        frac *= lung[sl]
        values = nod["hu"] + self.nodules.texture_sd * rng.standard_normal(frac.shape)
        image[sl] = image[sl] * (1.0 - frac) + frac * values
        m = frac >= 0.5
        m[centre_voxel] |= bool(lung[sl][centre_voxel])
        mask[sl] |= m.astype(np.uint8)

    @staticmethod
    def _draw_sphere(image, out_mask, lung, d, size, spacing, rng) -> None:
        c = _norm_to_vox(d["center"], size)
        r = d["r"] / spacing
        sl, rel = RealAnatomyLevel._box(c, r, size)
        frac = np.clip(r - np.linalg.norm(rel, axis=-1) + 0.5, 0.0, 1.0)
        centre_voxel = tuple(np.clip(np.rint(c).astype(int), 0, size - 1) - [s.start for s in sl])
        frac[centre_voxel] = max(frac[centre_voxel], min(1.0, 4.0 / 3.0 * math.pi * r**3))  # sub-voxel sphere
        allowed = (image[sl] > -300.0) & ~lung[sl] if d["kind"] == "node" else lung[sl]  # tissue / lung only
        frac *= allowed
        values = d["hu"] + 30.0 * rng.standard_normal(frac.shape)
        image[sl] = image[sl] * (1.0 - frac) + frac * values
        m = frac >= 0.5
        m[centre_voxel] |= bool(allowed[centre_voxel])
        out_mask[sl] |= m.astype(np.uint8)

    def _draw_fibrosis(self, image, mask, lung, depth, fib, size, spacing) -> None:
        m = self.fibrosis
        frng = np.random.default_rng(fib["field_seed"])
        zs = np.flatnonzero(lung.any(axis=(0, 1)))
        z = np.arange(size, dtype=np.float32)
        height = np.clip((z - zs[0]) / max(zs[-1] - zs[0], 1), 0.0, 1.0) if zs.size else z * 0
        g = _smooth_field(frng, m.coarse_nodes, size)
        score = -depth / m.depth_scale_mm - height[None, None, :] / m.height_scale + m.patchiness * g
        idx = np.flatnonzero(lung)
        n_take = round(fib["extent"] * idx.size)
        if n_take == 0:
            return
        s = score.ravel()[idx]
        thr = np.partition(s, idx.size - n_take)[idx.size - n_take]
        region = lung & (score >= thr)
        honey_thr = np.partition(s, idx.size - max(1, int(n_take * m.honeycomb_frac)))[
            idx.size - max(1, int(n_take * m.honeycomb_frac))]
        honey = region & (score >= honey_thr) if fib["extent"] >= 0.12 else np.zeros_like(region)
        h = _smooth_field(frng, m.fine_nodes, size)
        h2 = _smooth_field(frng, m.fine_nodes, size)
        ggo = image * 0.15 + 0.85 * fib["ggo_hu"]
        line = np.exp(-((h / fib["reticular_width"]) ** 2))  # soft lines where h crosses zero
        val = ggo + line * (fib["reticular_hu"] - ggo)
        cyst = np.clip((h2 - 0.5) / 0.3, 0.0, 1.0)  # soft-edged cysts with a dense rim around them
        wall = np.exp(-(((h2 - 0.4) / 0.15) ** 2)) * (1.0 - cyst)
        hc = val * (1.0 - cyst - wall) + cyst * -930.0 + wall * 0.0
        val = np.where(honey, hc, val)
        image[region] = val[region]
        mask[region] = 1

    def check_spec(self, spec) -> None:
        """Refuse, before anything is generated or written, a spec whose backgrounds cannot be found (InputError
        naming the folder, from :func:`background_sources`)."""
        background_sources(spec.backgrounds)

    def generate_case(self, spec, index: int) -> dict[str, Any]:
        params, coords, labels = self._sample(spec, index)
        case = self.render_case(spec, params, coords, labels)
        case.update(case_scalars(params, self))
        bg = load_backgrounds(spec.backgrounds, int(spec.size))[params.anatomy["background_index"]]
        case["lesion_volume_mm3"] = float(case["mask"].sum()) * bg.spacing**3
        case["background"] = bg.name
        case["affine"] = bg.affine.copy()
        return case


def _register(name: str, **fields) -> None:
    DUMMY_LEVELS.register(name, lambda: RealAnatomyLevel(name=name, **fields))


_register("ct1", description="real chest CT; 1-3 solid nodules (4-30 mm, lobulated/spiculated) in the lungs; "
          "shorter with presence and volume", lesion="nodules")
_register("ct2", description="real chest CT; basal/subpleural fibrosis-like pattern whose lung extent sets "
          "survival", lesion="fibrosis", t0=60.0, sigma=0.2)
_register("ct3", description="ct2 + calcified granulomas and nodes (distractors) + age/sex/smoking/FVC covariates",
          lesion="fibrosis", t0=60.0, sigma=0.2, distractors=Distractors(), covariates=FibrosisCovariates(),
          default_censor_frac=0.5)

REAL_LEVELS = ("ct1", "ct2", "ct3")
