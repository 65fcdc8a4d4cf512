"""Classical lung masker with anatomical priors on the real sample CTs (issue 14): crops of the full scans (lung
bases + abdomen, apices + neck) against the crop of the full-scan mask, CT-like noise, inserted fibrosis-like dense
regions, full-scan volumes, and the TotalSegmentator upper-abdomen series (bowel/stomach gas must stay out).

The CTs are resampled to 3 mm first (speed); references are the masker's own full-scan masks on that grid."""

import numpy as np
import pytest

from survival3d.data.lung_masking import LEFT, RIGHT, ClassicalLungMasker, lung_volumes
from survival3d.data.readers import read_ct

SPACING_MM = 3.0


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


def _resampled(path, spacing=SPACING_MM):
    """``(hu, affine)`` on a RAS grid of ``spacing`` mm (MONAI Orientation + Spacing, as the preprocessing does)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    vol = read_ct(path)
    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(vol.array, dtype=np.float32))[None],
                     affine=torch.as_tensor(vol.affine, dtype=torch.float64))  # fmt: skip
    img = Orientation(axcodes="RAS", labels=None)(img)
    img = Spacing(pixdim=(spacing,) * 3, mode="bilinear", padding_mode="border", dtype=torch.float32)(img)
    return img[0].numpy(), img.affine.numpy()


@pytest.fixture(scope="module")
def full_scans(ct_samples):
    """``{name: (hu, affine, labels, report)}`` for lung1 and lung2 at 3 mm."""
    masker = ClassicalLungMasker()
    out = {}
    for name in ("lung1", "lung2"):
        hu, affine = _resampled(ct_samples[name])
        labels, report = masker.segment(hu, affine)
        out[name] = (hu, affine, labels, report)
    return out


def _crop_k(affine, k0):
    a = affine.copy()
    a[:3, 3] = affine[:3, :3] @ np.array([0, 0, k0]) + affine[:3, 3]
    return a


@pytest.mark.parametrize("name", ["lung1", "lung2"])
def test_full_scan_volumes_and_sides(full_scans, name):
    _, affine, labels, report = full_scans[name]
    vols = lung_volumes(labels, affine)
    print(f"{name}: total {vols['total_l']:.2f} L (right {vols['right_l']:.2f}, left {vols['left_l']:.2f}), "
          f"confidence {report['confidence']}, flags {report['flags']}")  # fmt: skip
    assert 2.0 <= vols["total_l"] <= 7.0
    assert vols["right_l"] > 0.8 and vols["left_l"] > 0.8
    ijk = [np.argwhere(labels == lab).mean(axis=0) for lab in (RIGHT, LEFT)]
    x = [(affine[:3, :3] @ c + affine[:3, 3])[0] for c in ijk]
    assert x[0] > x[1]  # right lung towards world +x (RAS)
    assert 0.0 < report["confidence"] <= 1.0


@pytest.mark.parametrize("name", ["lung1", "lung2"])
@pytest.mark.parametrize("part,cm", [("base", 6), ("base", 10), ("apex", 5)])
def test_crop_self_consistency(full_scans, name, part, cm):
    """Mask of a crop vs crop of the full-scan mask: lowest ``cm`` of lung + everything below, or top ``cm``
    of lung + everything above."""
    hu, affine, labels, _ = full_scans[name]
    ks = np.flatnonzero((labels > 0).any(axis=(0, 1)))
    n = round(cm * 10 / SPACING_MM)
    sl = slice(0, ks[0] + n) if part == "base" else slice(max(0, ks[-1] + 1 - n), hu.shape[2])
    labels_c, report = ClassicalLungMasker().segment(hu[:, :, sl], _crop_k(affine, sl.start))
    ref = labels[:, :, sl]
    d = _dice(labels_c > 0, ref > 0)
    d_sides = _dice(labels_c == RIGHT, ref == RIGHT), _dice(labels_c == LEFT, ref == LEFT)
    print(f"{name} {part} {cm} cm: Dice {d:.3f} (right {d_sides[0]:.3f}, left {d_sides[1]:.3f}), "
          f"ref {lung_volumes(ref, affine)['total_l']:.3f} L, confidence {report['confidence']}, {report['flags']}")
    assert d >= 0.90


@pytest.mark.parametrize("sigma", [30, 80])
def test_noise_robustness(full_scans, sigma):
    rng = np.random.default_rng(sigma)
    for name in ("lung1", "lung2"):
        hu, affine, labels, _ = full_scans[name]
        noisy = hu + rng.normal(0.0, sigma, size=hu.shape).astype(np.float32)
        labels_n = ClassicalLungMasker()(noisy, affine)
        d = _dice(labels_n > 0, labels > 0)
        print(f"{name} sigma {sigma} HU: Dice {d:.3f}")
        assert d >= 0.95


def _fibrosis_blobs(labels, affine, rng, centre_depth_mm, n_blobs=4, radius_mm=18.0):
    """Spheres (radius 18 mm) centred ``centre_depth_mm`` (±1.5) deep inside the lungs, kept inside the clean
    mask, with a reticular texture between −500 and −100 HU: ``(region, values)``."""
    from scipy import ndimage as ndi

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    depth = ndi.distance_transform_edt(labels > 0, sampling=spacing)
    centres = np.argwhere(np.abs(depth - centre_depth_mm) < 1.5)
    grid = np.indices(labels.shape).astype(np.float32)
    region = np.zeros(labels.shape, dtype=bool)
    for c in centres[rng.choice(len(centres), size=n_blobs, replace=False)]:
        d2 = sum(((g - ci) * s) ** 2 for g, ci, s in zip(grid, c, spacing))
        region |= d2 <= radius_mm**2
    texture = ndi.gaussian_filter(rng.normal(size=labels.shape), 1.0)
    texture = (texture - texture.min()) / np.ptp(texture)
    return region & (labels > 0), (-500.0 + 400.0 * texture).astype(np.float32)


@pytest.mark.parametrize("where,centre_depth_mm,min_inside", [
    ("interior", 21.0, 0.95),  # the whole sphere ≥ 3 mm inside the lung: the target
    ("subpleural", 9.0, 0.60),  # half outside the lung (cut to it): a regression floor, not a target (docs/data.md)
])  # fmt: skip
def test_fibrosis_like_regions_stay_inside(full_scans, where, centre_depth_mm, min_inside):
    for name in ("lung1", "lung2"):
        hu, affine, labels, _ = full_scans[name]
        for seed in range(3):
            region, values = _fibrosis_blobs(labels, affine, np.random.default_rng(seed), centre_depth_mm)
            dense = hu.copy()
            dense[region] = values[region]
            labels_f = ClassicalLungMasker()(dense, affine)
            inside = float((labels_f[region] > 0).mean())
            ml = region.sum() * np.prod(np.linalg.norm(affine[:3, :3], axis=0)) / 1e3
            print(f"{name} {where} seed {seed}: fibrosis-like {ml:.0f} mL, {100 * inside:.1f} % inside, "
                  f"Dice vs clean {_dice(labels_f > 0, labels > 0):.3f}")
            assert inside >= min_inside


def test_totalsegmentator_abdomen_has_no_gut_gas(ct_samples, tmp_path):
    """The 20-slice upper-abdomen series: two anterior gas pockets (homogeneous ≈ −1000 HU, no vessels; bowel /
    stomach) and only sub-millilitre partial-volume slivers of the posterior lung bases in the top slices. The
    mask must not touch the gas: it is empty (the slivers are below the minimum component size)."""
    from scipy import ndimage as ndi

    hu, affine = _resampled(ct_samples["dicom"], spacing=2.0)
    labels, report = ClassicalLungMasker().segment(hu, affine)
    gas_l, n = ndi.label(ndi.binary_opening(hu < -900))
    sizes = np.bincount(gas_l.ravel())
    print(f"TotalSegmentator: mask {lung_volumes(labels, affine)['total_l'] * 1e3:.1f} mL, "
          f"rejected {[(r['volume_ml'], r['reason']) for r in report['rejected']]}, flags {report['flags']}")
    gas_ids = [c for c in range(1, n + 1) if sizes[c] * 8e-3 > 5 and not (gas_l == c)[[0, -1]].any()]
    # the inside-body gas pockets (not touching the in-plane border = not outside air)
    gas = np.isin(gas_l, gas_ids)
    assert gas.sum() * 8e-3 > 20  # the two pockets are found by the test itself
    assert not (labels[ndi.binary_dilation(gas, iterations=2)] > 0).any()
    assert lung_volumes(labels, affine)["total_l"] < 0.01  # empty or lung-base slivers only
    assert any("gas" in r["reason"] for r in report["rejected"])
    assert report["confidence"] < 0.5
    from survival3d.data.qc import save_qc_montage

    png = save_qc_montage(np.clip(hu, -1024, 150), labels, affine, tmp_path / "example_ct_dicom.png",
                          title="TotalSegmentator example_ct_dicom", report=report)  # fmt: skip
    assert png.stat().st_size > 10_000
