"""Real CT samples load with the right geometry and HU; DICOM JPEG 2000 decodes, slices are ordered by position."""

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from survival3d.data.readers import LPS_TO_RAS, read_ct, read_nifti
from survival3d.data.samples import SAMPLE_ARCHIVES


def test_samples_cached_with_verified_hash(ct_samples):
    root = ct_samples["lung1"].parent
    for archive in SAMPLE_ARCHIVES:
        stamp = root / f".{archive.package}-{archive.version}.sha256"
        assert stamp.read_text().strip() == archive.sha256
    # only the needed members were extracted: no label maps, no other pyradiomics data
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    assert names == ["example_ct_dicom", "lung1_image.nrrd", "lung2_image.nrrd"]
    assert len(list(ct_samples["dicom"].iterdir())) == 20


@pytest.mark.parametrize(
    "name, shape, spacing",
    [("lung1", (512, 512, 48), (0.5703125, 0.5703125, 5.0)), ("lung2", (512, 512, 61), (0.6269531, 0.6269531, 5.0))],
)
def test_nrrd_samples_load(ct_samples, name, shape, spacing):
    vol = read_ct(ct_samples[name])
    assert vol.shape == shape
    np.testing.assert_allclose(vol.spacing, spacing, rtol=1e-6)
    assert vol.array.dtype == np.float32
    assert vol.array.min() == -1024.0 and 1000.0 < vol.array.max() < 3100.0  # air .. bone/metal, in HU
    # lung parenchyma present: a sizeable fraction of voxels between -950 and -600 HU
    assert 0.05 < np.mean((vol.array > -950) & (vol.array < -600)) < 0.5
    ref = sitk.ReadImage(str(ct_samples[name]))
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref).transpose(2, 1, 0))
    lps_origin = np.asarray(ref.GetOrigin())
    np.testing.assert_allclose((LPS_TO_RAS @ vol.affine)[:3, 3], lps_origin)


def test_dicom_jpeg2000_series_matches_gdcm(ct_samples):
    vol = read_ct(ct_samples["dicom"])
    assert vol.meta["transfer_syntax"] == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    assert vol.meta["modality"] == "CT" and vol.meta["n_slices"] == 20
    assert vol.shape == (512, 512, 20)
    np.testing.assert_allclose(vol.spacing, (0.9765625, 0.9765625, 2.0))
    assert vol.array.min() == -1024.0 and 1500 < vol.array.max() < 2500  # slope 1, intercept -1024
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(ct_samples["dicom"])))
    ref = reader.Execute()
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref).transpose(2, 1, 0))
    lps = LPS_TO_RAS @ vol.affine
    np.testing.assert_allclose(lps[:3, 3], ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(lps[:3, :3], axis=0), ref.GetSpacing(), atol=1e-6)
    # k increases superior: z of the last slice is above the first
    assert vol.affine[2, 2] > 0


def test_dicom_order_comes_from_positions_not_names(ct_samples, tmp_path, rng):
    files = sorted(ct_samples["dicom"].iterdir())
    dst = tmp_path / "shuffled"
    dst.mkdir()
    for f, new in zip(files, rng.permutation(len(files))):
        shutil.copyfile(f, dst / f"img{new:03d}.dcm")
    ref = read_ct(ct_samples["dicom"])
    vol = read_ct(dst)
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.affine, ref.affine)
    import pydicom

    zs = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in vol.meta["files"]]
    assert zs == sorted(zs) and len(set(zs)) == 20


def test_dicom_single_file_reads_its_series(ct_samples):
    one = sorted(ct_samples["dicom"].iterdir())[7]
    assert read_ct(one).shape == (512, 512, 20)


def test_several_series_pick_ct_with_most_slices(dicom_copy, tmp_path, caplog):
    import logging

    import pydicom

    files = sorted(dicom_copy.iterdir())
    for n, f in enumerate(files[:8]):  # a second, shorter CT series in the same folder
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.3.4.5"
        ds.save_as(dicom_copy / f"second_{n}.dcm")
    mr = pydicom.dcmread(files[0])  # and a longer non-CT series must not be chosen by default
    for n, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.Modality = "9.9.9", "MR"
        ds.save_as(dicom_copy / f"mr_{n}.dcm")
    for n in range(3):
        mr.SeriesInstanceUID, mr.Modality = "9.9.9", "MR"
        mr.ImagePositionPatient = [mr.ImagePositionPatient[0], mr.ImagePositionPatient[1], 100.0 + 2 * n]
        mr.save_as(dicom_copy / f"mr_extra_{n}.dcm")
    with caplog.at_level(logging.INFO):
        vol = read_ct(dicom_copy)
    assert vol.meta["n_slices"] == 20 and vol.meta["series_uid"] == ""
    assert vol.meta["other_series"] == {"1.2.3.4.5": 8, "9.9.9": 23}
    assert "using (no SeriesInstanceUID)" in caplog.text
    assert read_ct(dicom_copy, series_uid="1.2.3.4.5").shape == (512, 512, 8)
    from survival3d.errors import InputError

    with pytest.raises(InputError, match="not found; available") as e:
        read_ct(dicom_copy, series_uid="1.2.3")
    assert e.value.field == "SeriesInstanceUID"


def test_nifti_roundtrip_keeps_affine(tmp_path, rng):
    import nibabel as nib

    arr = rng.normal(-500, 300, size=(12, 10, 8)).astype(np.float32)
    affine = np.array([[0, -0.8, 0, 10], [0.7, 0, 0, -20], [0, 0, 2.5, 30], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(arr, affine), tmp_path / "x.nii.gz")
    vol = read_nifti(tmp_path / "x.nii.gz")
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    np.testing.assert_allclose(vol.array, arr, rtol=1e-6)
    assert vol.spacing == pytest.approx((0.7, 0.8, 2.5), rel=1e-5)
