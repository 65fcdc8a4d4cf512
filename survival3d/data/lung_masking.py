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
from dataclasses import dataclass
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
    "ClassicalMaskerSettings",
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


@dataclass(frozen=True)
class ClassicalMaskerSettings:
    """Settings of :class:`ClassicalLungMasker` (HU, mm, mL and fractions; see docs/data.md, "Lung masking").

    Args:
        threshold: HU below which a voxel is air or lung.
        body_threshold: HU above which a voxel is body tissue (the body mask).
        min_component_ml: low-density components smaller than this are ignored.
        min_interior_ml: a component needs this much volume deeper than one voxel (thin sheets of air between
            the table, clothes and skin have none).
        gas_hu: interior voxels below this HU count as pure gas.
        max_gas_fraction: a component whose interior holds more pure gas than this ...
        min_vessel_fraction: ... and fewer enclosed dense voxels (vessels) per voxel than this is gas (bowel,
            stomach, trachea), not lung.
        max_flat_floor: an air-fluid level: this fraction or more of a gas-containing component's dependent
            (posterior) boundary lies on one horizontal plane.
        core_radius_mm: depth defining lung cores; airway cores (homogeneous gas) are dropped.
        regrow_margin_mm: geodesic growth of the cores beyond their depth.
        closing_mm: radius of the 3D closing that pulls dense lesions at the lung surface into the mask.
    """

    threshold: float = -320.0
    body_threshold: float = -500.0
    min_component_ml: float = 2.0
    min_interior_ml: float = 1.0
    gas_hu: float = -950.0
    max_gas_fraction: float = 0.35
    min_vessel_fraction: float = 0.005
    max_flat_floor: float = 0.6
    core_radius_mm: float = 8.0
    regrow_margin_mm: float = 3.0
    closing_mm: float = 4.0
    closing_2d_mm: float = 10.0

    def __post_init__(self):
        if self.core_radius_mm <= 0 or self.regrow_margin_mm < 0 or min(self.closing_mm, self.closing_2d_mm) < 0:
            raise ValueError(
                f"core_radius_mm {self.core_radius_mm} must be > 0, regrow_margin_mm {self.regrow_margin_mm}, "
                f"closing_mm {self.closing_mm} and closing_2d_mm {self.closing_2d_mm} >= 0."
            )
        for name in ("max_gas_fraction", "min_vessel_fraction", "max_flat_floor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} {getattr(self, name)} must be in [0, 1].")
        if self.min_component_ml < 0 or self.min_interior_ml < 0:
            raise ValueError("min_component_ml and min_interior_ml must be >= 0.")


def _fill_2d(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes slice by slice along the last axis (one in-plane labelling of the background)."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[:, :, 1] = ndi.generate_binary_structure(2, 1)
    labels, n = ndi.label(~mask, structure=structure)
    hole = np.ones(n + 1, dtype=bool)
    hole[0] = False
    for face in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        hole[face.ravel()] = False
    return mask | hole[labels]


def _bbox(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``pad`` voxels, clipped to the array."""
    out = []
    for ax in range(mask.ndim):
        nz = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        out.append(slice(max(0, int(nz[0]) - pad), min(mask.shape[ax], int(nz[-1]) + pad + 1)))
    return tuple(out)


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    r = np.maximum(np.round(radius_vox).astype(int), 0)
    g = np.ogrid[tuple(slice(-int(v), int(v) + 1) for v in r)]
    return sum((x / max(float(v), 1e-6)) ** 2 for x, v in zip(g, np.maximum(radius_vox, 1e-6))) <= 1.0


@MASKERS.register("classical")
class ClassicalLungMasker:
    """Lung masker with anatomical priors (no trained weights).

    1. body = the largest connected tissue region (HU > ``body_threshold``), holes filled slice by slice; air
       outside it (and air touching the in-plane borders) is removed;
    2. low-density components inside the body (HU < ``threshold``) are scored: interior pure-gas fraction
       (< ``gas_hu``) and enclosed vessels tell parenchyma from bowel/stomach gas and airways; a flat dependent
       boundary marks an air-fluid level; components lying under the base of an accepted lung (below the
       diaphragm) and thin or small ones are rejected — every rejection is reported with its reason;
    3. lung cores (deeper than ``core_radius_mm``) of the accepted air are classified the same way: homogeneous
       gas cores are the trachea/main bronchi and are dropped; cores straddling the body midline are separated
       by a larger radius (×1.5, ×2, ×3); the cores grow back geodesically by their depth + ``regrow_margin_mm``;
       accepted air they did not reach joins when it is not airway-like and touches the lung (or is large);
    4. each side is labelled by the body midline (world +x of it = right, 1; the other = left, 2);
    5. holes (vessels, nodules, dense lung) are filled slice by slice, then a 3D closing (``closing_mm``), an
       in-plane closing (``closing_2d_mm``) and a second fill pull dense regions at the lung surface in.

    :meth:`segment` returns the labels and a report (accepted/rejected components, confidence); ``__call__``
    returns the labels only (the :data:`MASKERS` contract). Keyword arguments are
    :class:`ClassicalMaskerSettings` fields.
    """

    native_resolution = False

    def __init__(self, **settings: Any):
        self.settings = ClassicalMaskerSettings(**settings)

    def __call__(self, array: np.ndarray, affine: np.ndarray) -> np.ndarray:
        return self.segment(array, affine)[0]

    # ------------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _body(hu: np.ndarray, threshold: float) -> np.ndarray:
        labels, n = ndi.label(hu > threshold)
        if n == 0:
            return np.zeros(hu.shape, dtype=bool)
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        return _fill_2d(labels == int(np.argmax(sizes)))

    @staticmethod
    def _touching_border(labels: np.ndarray) -> np.ndarray:
        """Label ids touching an in-plane border face (axes 0 and 1)."""
        faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1]]
        ids = np.unique(np.concatenate([f.ravel() for f in faces]))
        return ids[ids > 0]

    def _features(self, hu, labels, ids, inner, holes_lab, ml):
        """Per-component volume (mL), interior volume, interior gas fraction, vessel fraction."""
        n = int(labels.max()) + 1
        size = np.bincount(labels.ravel(), minlength=n)
        il = np.where(inner, labels, 0).ravel()
        isize = np.bincount(il, minlength=n)
        gas = np.bincount(il, weights=(hu.ravel() < self.settings.gas_hu), minlength=n) / np.maximum(isize, 1)
        vessels = np.bincount(holes_lab.ravel(), minlength=n) / np.maximum(size, 1)
        return {int(c): {"volume_ml": float(size[c] * ml), "interior_ml": float(isize[c] * ml), "gas_fraction": float(gas[c]),
                         "vessel_fraction": float(vessels[c])} for c in ids}  # fmt: skip

    @staticmethod
    def _flat_floor(comp_idx: np.ndarray, ap_axis: int, ap_sign: float) -> float:
        """Fraction of the component's (lateral, axial) columns whose dependent (posterior) end lies on the most
        common posterior level: ≈ 1 for gas above an air-fluid level, low for curved lung surfaces."""
        other = [a for a in range(3) if a != ap_axis]
        pos = comp_idx[:, ap_axis] * (ap_sign if ap_sign != 0 else 1.0)
        key = comp_idx[:, other[0]] * 100003 + comp_idx[:, other[1]]
        order = np.lexsort((pos, key))
        key, pos = key[order], pos[order]
        first = np.r_[True, key[1:] != key[:-1]]
        floors = pos[first]  # posterior-most level per column
        if floors.size < 8:
            return 0.0
        _, counts = np.unique(floors, return_counts=True)
        return float(counts.max() / floors.size)

    def _classify(self, f: dict) -> str | None:
        """None for lung-like, else the rejection reason."""
        s = self.settings
        if f["volume_ml"] < s.min_component_ml:
            return "too small"
        if f["interior_ml"] < s.min_interior_ml:
            return "thin (no interior)"
        if f["gas_fraction"] > s.max_gas_fraction and f["vessel_fraction"] < s.min_vessel_fraction:
            return "homogeneous gas without vessels (bowel/stomach gas or airway)"
        if f.get("flat_floor", 0.0) >= s.max_flat_floor and f["gas_fraction"] > 0.5 * s.max_gas_fraction:
            return "air-fluid level (flat dependent boundary)"
        return None

    # ------------------------------------------------------------------------------------------------ main
    def segment(self, array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Lung labels (uint8, 1 right, 2 left) and a report: ``confidence`` (0-1), ``flags``, ``accepted`` and
        ``rejected`` components (volume, reason, centroid in world mm)."""
        s = self.settings
        array = np.asarray(array)
        if array.ndim != 3:
            raise ValueError(f"expected a 3D array, got shape {array.shape}.")
        affine = np.asarray(affine, dtype=float)
        axial = slice_axis(affine)
        perm = [a for a in range(3) if a != axial] + [axial]
        hu = np.transpose(array, perm).astype(np.float32, copy=False)
        aff = affine.copy()
        aff[:3, :3] = affine[:3, :3][:, perm]
        spacing = np.asarray(affine_spacing(aff))
        ml = float(abs(np.linalg.det(aff[:3, :3]))) / 1e3

        def world(idx: np.ndarray) -> np.ndarray:
            return np.asarray(idx, dtype=float) @ aff[:3, :3].T + aff[:3, 3]

        ap_axis = int(np.argmax(np.abs(aff[1, :2])))
        ap_sign = float(np.sign(aff[1, ap_axis]))
        report: dict[str, Any] = {"accepted": [], "rejected": [], "flags": [], "airway_removed": False}
        out = np.zeros(hu.shape, dtype=np.uint8)

        body = self._body(hu, s.body_threshold)
        air = (hu < s.threshold) & body
        labels, _ = ndi.label(air)
        border = self._touching_border(labels)
        if border.size:
            air &= ~np.isin(labels, border)
            labels[~air] = 0
        if not air.any():
            return self._finish(out, perm, report, body, aff, ml)
        size = np.bincount(labels.ravel())
        ids = [int(c) for c in np.flatnonzero(size * ml >= s.min_component_ml) if c > 0]
        inner = ndi.binary_erosion(air)
        holes = _fill_2d(air) & ~air
        holes_lab = np.where(holes, ndi.grey_dilation(labels, size=(5, 5, 1)), 0)
        feats = self._features(hu, labels, ids, inner, holes_lab, ml)
        n_small = int(np.count_nonzero(size[1:] * ml < s.min_component_ml))
        objs = ndi.find_objects(labels)
        accepted = []
        for c in ids:
            sl = objs[c - 1]
            idx = np.argwhere(labels[sl] == c) + np.array([x.start for x in sl])
            f = feats[c]
            f["flat_floor"] = self._flat_floor(idx, ap_axis, ap_sign)
            f["centroid_mm"] = [round(float(v), 1) for v in world(idx.mean(axis=0))]
            f["k_range"] = [int(idx[:, 2].min()), int(idx[:, 2].max())]
            reason = self._classify(f)
            (report["rejected"] if reason else accepted).append((c, f, reason))
        # below the diaphragm: under the base of a confident (large) lung component in the same column
        big = [c for c, f, _ in accepted if f["volume_ml"] >= 50 * s.min_component_ml]
        if big:
            lung = np.isin(labels, big)
            has = lung.any(axis=2)
            base = np.where(has, np.argmax(lung, axis=2), hu.shape[2])
            keep = []
            for c, f, _ in accepted:
                if c in big:
                    keep.append((c, f, None))
                    continue
                sl = objs[c - 1]
                idx = np.argwhere(labels[sl] == c) + np.array([x.start for x in sl])
                under = float(np.mean(has[idx[:, 0], idx[:, 1]] & (idx[:, 2] < base[idx[:, 0], idx[:, 1]] - 1)))
                f["under_lung_fraction"] = under
                if under > 0.5:
                    report["rejected"].append((c, f, "below the base of the lung (under the diaphragm)"))
                else:
                    keep.append((c, f, None))
            accepted = keep
        report["rejected"] = [self._entry(f, r) for _, f, r in report["rejected"]]
        report["rejected_small"] = n_small
        report["accepted"] = [self._entry(f, None) for _, f, _ in accepted]
        if not accepted:
            return self._finish(out, perm, report, body, aff, ml)

        cand = np.isin(labels, [c for c, _, _ in accepted])
        ks = np.flatnonzero(cand.reshape(-1, cand.shape[2]).any(axis=0))
        body_idx = np.argwhere(body[:, :, ks[0] : ks[-1] + 1])  # the body's left-right centre at the lung levels
        midline_x = float(world(body_idx.mean(axis=0) + [0, 0, ks[0]])[0])
        sides = self._cores_and_sides(hu, cand, spacing, world, midline_x, report)
        for label, m in sides.items():
            out[m & (out == 0)] = label
        # pieces of accepted lung-like air no core reached (thin bases, apices): by side of the midline
        rest = cand & (out == 0)
        if rest.any():
            rl, rn = ndi.label(rest)
            flat = rl.ravel()
            rsize = np.bincount(flat, minlength=rn + 1)
            rgas = np.bincount(flat, weights=hu.ravel() < s.gas_hu, minlength=rn + 1) / np.maximum(rsize, 1)
            touching = np.zeros(rn + 1, dtype=bool)
            touching[np.unique(rl[ndi.binary_dilation(out > 0) & rest])] = True
            # parenchyma the cores did not reach (behind dense lesions, thin bases and apices) joins; airway
            # pieces (homogeneous gas: the trachea and main bronchi beyond the regrowth) and isolated crumbs do not
            keep = (rgas <= s.max_gas_fraction) & (touching | (rsize * ml >= s.min_component_ml))
            for c, sl in enumerate(ndi.find_objects(rl), start=1):
                if sl is None or not keep[c]:
                    continue
                piece = rl[sl] == c
                x = float(world(np.argwhere(piece).mean(axis=0) + [b.start for b in sl])[0])
                out[sl][piece] = RIGHT if x > midline_x else LEFT
        self._fill(out, body, spacing)
        report["midline_x_mm"] = round(midline_x, 1)
        return self._finish(out, perm, report, body, aff, ml)

    @staticmethod
    def _entry(f: dict, reason: str | None) -> dict[str, Any]:
        e = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in f.items()}
        if reason:
            e["reason"] = reason
        return e

    def _cores_and_sides(self, hu, cand, spacing, world, midline_x, report) -> dict[int, np.ndarray]:
        """Lung cores (airway cores dropped), split by the midline, grown back; ``{RIGHT: mask, LEFT: mask}``."""
        s = self.settings
        box = _bbox(cand, pad=1)
        hu_b, cand_b = hu[box], cand[box]
        offset = np.array([b.start for b in box])
        depth = ndi.distance_transform_edt(cand_b, sampling=spacing)
        structure = ndi.generate_binary_structure(3, 2)
        vox_ml = float(np.prod(spacing)) / 1e3
        x_right = (world(np.argwhere(np.ones((cand_b.shape[0], 1, 1), dtype=bool)) + offset)[:, 0] > midline_x)
        right_vox = np.broadcast_to(x_right[:, None, None], cand_b.shape)  # world x depends (almost) on i only
        kept: dict[int, np.ndarray] = {}
        reach = 0.0
        for factor in (1.0, 1.5, 2.0, 3.0):
            cl, n = ndi.label(depth > s.core_radius_mm * factor)
            if n == 0:
                break
            flat = cl.ravel()
            size = np.bincount(flat, minlength=n + 1)
            gas = np.bincount(flat, weights=hu_b.ravel() < s.gas_hu, minlength=n + 1) / np.maximum(size, 1)
            right = np.bincount(flat, weights=right_vox.ravel(), minlength=n + 1) / np.maximum(size, 1)
            ok = size * vox_ml >= s.min_component_ml
            ok[0] = False
            airway = ok & (gas > s.max_gas_fraction)  # trachea / main bronchi: homogeneous gas
            lung = ok & ~airway
            report["airway_removed"] = bool(airway.any())
            straddle = lung & (np.minimum(right, 1 - right) > 0.1) & (size * vox_ml > 50.0)
            kept = {RIGHT: (lung & (right >= 0.5))[cl], LEFT: (lung & (right < 0.5))[cl]}
            reach = s.core_radius_mm * factor + s.regrow_margin_mm
            if not straddle.any():
                break
        sides: dict[int, np.ndarray] = {}
        n_iter = max(1, math.ceil(reach / float(spacing.min())))
        for lab, core in kept.items():
            if core.any():
                m = np.zeros(cand.shape, dtype=bool)
                m[box] = ndi.binary_dilation(core, structure=structure, iterations=n_iter, mask=cand_b)
                sides[lab] = m
        return sides

    def _fill(self, out: np.ndarray, body: np.ndarray, spacing: np.ndarray) -> None:
        """Per side: 2D hole filling, a 3D closing (``closing_mm``), an in-plane closing (``closing_2d_mm``),
        2D hole filling again; never outside the body nor over the other lung."""
        s = self.settings
        structures = []
        if s.closing_mm > 0:
            structures.append(_ball(s.closing_mm / spacing))
        if s.closing_2d_mm > 0:
            disk = _ball(np.r_[s.closing_2d_mm / spacing[:2], 0.0])
            structures.append(disk.reshape(disk.shape[0], disk.shape[1], 1))
        r = max([max(b.shape) // 2 for b in structures] + [0]) + 1
        for label in (RIGHT, LEFT):
            m = out == label
            if not m.any():
                continue
            box = _bbox(m, pad=r)
            sub = _fill_2d(m[box])
            for st in structures:
                if st.size > 1:
                    sub = ndi.binary_closing(sub, structure=st)
            sub = _fill_2d(sub) & body[box]
            region = out[box]
            region[sub & (region == 0)] = label

    @staticmethod
    def _finish(out, perm, report, body, aff, ml) -> tuple[np.ndarray, dict[str, Any]]:
        """Back to the input axis order; the confidence score and its flags."""
        k = out.shape[2]
        zs = np.flatnonzero((out > 0).reshape(-1, k).any(axis=0))
        total = float(np.count_nonzero(out)) * ml / 1e3
        vols = {lab: float(np.count_nonzero(out == lab)) * ml / 1e3 for lab in (RIGHT, LEFT)}
        flags = report["flags"]
        conf = 1.0
        if total == 0.0:
            flags.append("no lung found")
            conf = 0.0
        else:
            if zs[0] == 0 or zs[-1] == k - 1:
                flags.append("lung cut by the field of view (partial scan)")
                conf *= 0.7
            if min(vols.values()) < 0.15 * max(vols.values()):
                flags.append("one lung only" if min(vols.values()) == 0 else "one lung much smaller than the other")
                conf *= 0.6
            if not 2.0 <= total <= 7.0:
                flags.append(f"total volume {total:.2f} L outside 2-7 L")
                conf *= 0.7
            gas_rej = sum(r["volume_ml"] for r in report["rejected"] if "gas" in r.get("reason", ""))
            if gas_rej > 0.2 * total * 1e3:
                flags.append("large rejected gas volume (check the bowel/stomach was not lung)")
                conf *= 0.8
            acc = report["accepted"]
            if acc:
                w = np.array([a["volume_ml"] for a in acc])
                g = np.array([a["gas_fraction"] for a in acc])
                conf *= float(np.clip(1.0 - (w @ g) / w.sum(), 0.0, 1.0))  # pure gas inside the accepted air
        report["confidence"] = round(conf, 3)
        inv = np.argsort(perm)
        return np.ascontiguousarray(np.transpose(out, inv)), report


def find_lungmask_weights(modelname: str = "R231") -> Path | None:
    """The lungmask weights file for ``modelname`` in the torch hub cache (``$TORCH_HOME/hub/checkpoints``), if
    it was downloaded there before; ``None`` otherwise. Never downloads."""
    from lungmask.mask import MODEL_URLS
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
            from lungmask import LMInferer

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
    labels: np.ndarray,
    affine: np.ndarray,
    volume_range_l: tuple[float, float] | None,
    *,
    source: str | Path,
    report: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Raise :class:`InputError` for an empty mask or a total lung volume outside ``volume_range_l`` (litres); the
    classical masker's ``report`` (what it rejected, its confidence) is appended to the message."""
    vols = lung_volumes(labels, affine)
    why = ""
    if report is not None:
        rejected = "; ".join(f"{r['volume_ml']:.0f} mL: {r['reason']}" for r in report.get("rejected", [])[:4])
        why = f" [masker confidence {report.get('confidence')}; rejected: {rejected or 'nothing'}]"
    if vols["total_l"] == 0.0:
        raise InputError(f"empty lung mask: no lung found (is this a chest CT?){why}", path=source, field="lung_mask")
    if volume_range_l is not None:
        lo, hi = volume_range_l
        if not lo <= vols["total_l"] <= hi:
            raise InputError(
                f"implausible lung mask: total lung volume {vols['total_l']:.3f} L outside [{lo}, {hi}] L "
                f"(set --lung-volume-range to accept partial scans){why}", path=source, field="lung_mask",
            )  # fmt: skip
    return vols
