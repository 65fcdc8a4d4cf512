"""`run.py preprocess` on single real inputs: image + lung mask + manifest + QC, correct affine, resume, caching."""

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from survival3d.cli import main
from survival3d.data.preprocess import (
    PreprocessSettings,
    ct_load_transforms,
    ct_persistent_dataset,
    map_to_original,
    preprocess_volume,
)
from survival3d.data.readers import read_ct
from survival3d.errors import ConfigError


@pytest.fixture(scope="module")
def lung1_run(ct_samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("pp_lung1")
    rc = main(["preprocess", "--input", str(ct_samples["lung1"]), "--id", "lung1", "--time", "42.5", "--event", "1",
               "--out", str(out), "--lung-mask", "classical"])  # fmt: skip
    return rc, out


def test_single_nrrd_end_to_end(lung1_run, ct_samples):
    rc, out = lung1_run
    assert rc == 0
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest.columns) == ["id", "image", "lung_mask", "time", "event"]
    assert manifest.iloc[0].to_dict() == {"id": "lung1", "image": "images/lung1.nii.gz",
                                          "lung_mask": "lung_masks/lung1.nii.gz", "time": 42.5, "event": 1}
    img = nib.load(out / "images" / "lung1.nii.gz")
    mask = nib.load(out / "lung_masks" / "lung1.nii.gz")
    assert img.shape == mask.shape == (128, 128, 128)
    np.testing.assert_allclose(img.affine, mask.affine)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.int16 and data.min() == -1024 and data.max() <= 150  # HU clipped to the window
    labels = np.asarray(mask.dataobj)
    assert set(np.unique(labels)) == {0, 1, 2}
    qc = json.loads((out / "qc" / "lung1.json").read_text())
    for key in ("original_spacing_mm", "spacing_mm", "shape", "hu_range", "lung_volume_l", "lung_components"):
        assert key in qc
    assert 2.0 <= qc["lung_volume_l"] <= 7.0 and qc["hu_range"] == [-1024.0, 3071.0]
    import matplotlib.image as mpimg

    png = mpimg.imread(out / "qc" / "lung1.png")
    assert png.ndim == 3 and png.shape[0] > 200 and png.std() > 0.05
    side = json.loads((out / "images" / "lung1.json").read_text())
    assert side["original"]["source"] == str(ct_samples["lung1"])
    assert [s["step"] for s in side["chain"]] == ["Orientation", "Spacing", "SpatialCrop", "Resize", "SpatialPad",
                                                  "Window"]  # fmt: skip
    np.testing.assert_allclose(side["chain"][-2]["affine"], img.affine, atol=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 1 and summary["failed"] == 0
    assert not [p for p in out.rglob(".*")]  # no temp files left


def test_affine_maps_back_onto_original(lung1_run, ct_samples):
    """The saved affine is right: resampled back through world coordinates, the preprocessed image matches the
    original CT inside the lungs, and the mask's volume is preserved."""
    _, out = lung1_run
    vol = read_ct(ct_samples["lung1"])
    # compare on every second in-plane voxel of the original grid (same world geometry, 4x less work)
    vol.array, vol.affine = vol.array[::2, ::2], vol.affine @ np.diag([2.0, 2.0, 1.0, 1.0])
    img = nib.load(out / "images" / "lung1.nii.gz")
    mask = nib.load(out / "lung_masks" / "lung1.nii.gz")
    back = map_to_original(np.asarray(img.dataobj, dtype=np.float32), img.affine, vol.affine, vol.shape,
                           padding_value=-1024)  # fmt: skip
    mask_back = map_to_original(np.asarray(mask.dataobj), mask.affine, vol.affine, vol.shape, mode="nearest")
    inside = mask_back > 0
    orig = np.clip(vol.array, -1024, 150)
    assert np.corrcoef(back[inside], orig[inside])[0, 1] > 0.85
    assert np.abs(back[inside] - orig[inside]).mean() < 80
    # a shifted affine would not match: the check can fail
    shifted = img.affine.copy()
    shifted[:3, 3] += 15.0
    bad = map_to_original(np.asarray(img.dataobj, dtype=np.float32), shifted, vol.affine, vol.shape,
                          padding_value=-1024)  # fmt: skip
    assert np.corrcoef(bad[inside], orig[inside])[0, 1] < 0.7
    qc = json.loads((out / "qc" / "lung1.json").read_text())
    vox_l = abs(np.linalg.det(vol.affine[:3, :3])) / 1e6
    assert inside.sum() * vox_l == pytest.approx(qc["lung_volume_l"], rel=0.1)


def test_resume_skips_and_settings_change_redoes(lung1_run, ct_samples):
    _, out = lung1_run
    image = out / "images" / "lung1.nii.gz"
    before = image.stat().st_mtime_ns
    args = ["preprocess", "--input", str(ct_samples["lung1"]), "--id", "lung1", "--time", "42.5", "--event", "1",
            "--out", str(out), "--lung-mask", "classical"]  # fmt: skip
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["skipped"] == 1
    assert image.stat().st_mtime_ns == before
    (out / "lung_masks" / "lung1.nii.gz").unlink()  # an output went missing: the case is redone
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["done"] == 1
    assert (out / "lung_masks" / "lung1.nii.gz").is_file()


def test_dicom_series_end_to_end(dicom_with_lungs, tmp_path):
    surv = tmp_path / "surv.csv"
    pd.DataFrame({"id": ["example_ct_dicom"], "time": [12.0], "event": [0]}).to_csv(surv, index=False)
    out = tmp_path / "out"
    series = tmp_path / "example_ct_dicom"
    shutil.copytree(dicom_with_lungs, series)  # the real series has no lung to mask: painted lung bases
    rc = main(["preprocess", "--input", str(series), "--survival", str(surv), "--out", str(out),
               "--size", "64", "--spacing", "3", "--lung-volume-range", "0.001", "10",
               "--lung-mask", "classical"])  # fmt: skip
    assert rc == 0
    row = pd.read_csv(out / "manifest.csv").iloc[0]
    assert (row["id"], row["time"], row["event"]) == ("example_ct_dicom", 12.0, 0)
    img = nib.load(out / row["image"])
    assert img.shape == (64, 64, 64)
    side = json.loads((out / "images" / "example_ct_dicom.json").read_text())
    assert len(side["original"]["files"]) == 20 and side["original"]["series_uid"] == ""
    qc = json.loads((out / "qc" / "example_ct_dicom.json").read_text())
    assert qc["series"]["modality"] == "CT" and qc["series"]["n_slices"] == 20
    assert (out / "qc" / "example_ct_dicom.png").is_file()


def test_settings_validation():
    with pytest.raises(ConfigError, match="window"):
        PreprocessSettings(window=(150, -1024))
    with pytest.raises(ConfigError, match="spacing"):
        PreprocessSettings(spacing=(0, 1, 1))
    with pytest.raises(ConfigError, match="size"):
        PreprocessSettings(size=(4, 128, 128))
    a, b = PreprocessSettings(), PreprocessSettings(window=(-1000, 150))
    assert a.digest() == PreprocessSettings().digest() != b.digest()


def test_persistent_cache_key_follows_settings(ct_samples, tmp_path, monkeypatch):
    import survival3d.data.preprocess as pp

    calls = []
    real = pp.read_ct
    monkeypatch.setattr(pp, "read_ct", lambda *a, **k: calls.append(a) or real(*a, **k))
    data = [{"image": str(ct_samples["lung1"]), "id": "lung1"}]
    s1 = PreprocessSettings(size=(32, 32, 32), spacing=(6, 6, 6))
    first = ct_persistent_dataset(data, s1, tmp_path)[0]
    assert len(calls) == 1
    assert tuple(first["image"].shape) == (1, 32, 32, 32) and 0.0 <= float(first["image"].min()) < 0.01
    assert float(first["image"].max()) <= 1.0 and first["lung_mask"].any()
    again = ct_persistent_dataset(data, s1, tmp_path)[0]  # a new epoch / new dataset: read from the cache
    assert len(calls) == 1
    np.testing.assert_array_equal(np.asarray(again["image"]), np.asarray(first["image"]))
    s2 = PreprocessSettings(size=(32, 32, 32), spacing=(6, 6, 6), window=(-1000, 200))
    ct_persistent_dataset(data, s2, tmp_path)[0]
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"ct-{s1.digest()}", f"ct-{s2.digest()}"])


def test_load_transforms_scale_window(lung1_run):
    _, out = lung1_run
    item = ct_load_transforms((-1024, 150))({"image": str(out / "images" / "lung1.nii.gz"),
                                              "lung_mask": str(out / "lung_masks" / "lung1.nii.gz")})  # fmt: skip
    assert tuple(item["image"].shape) == (1, 128, 128, 128)
    assert float(item["image"].min()) == 0.0 and float(item["image"].max()) <= 1.0
    img = nib.load(out / "images" / "lung1.nii.gz")
    np.testing.assert_allclose(np.asarray(item["image"].affine), img.affine, atol=1e-5)


def test_preprocess_volume_smaller_than_size_is_padded(ct_samples):
    res = preprocess_volume(read_ct(ct_samples["lung2"]), PreprocessSettings(size=(160, 160, 160), spacing=(3, 3, 3)))
    assert res.image.shape == (160, 160, 160)
    assert "Resize" not in [s["step"] for s in res.chain]  # the lung box fits: no resize, only padding
    assert (res.image[0] == -1024).all() and (res.lung_mask[0] == 0).all()
