"""Every bad input gives one InputError naming the file (and field), a non-zero exit, nothing half-written."""

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import make_chest_phantom

from survival3d.cli import main
from survival3d.data.osic import osic_jobs, read_survival_csv
from survival3d.data.preprocess import PreprocessSettings, preprocess_volume
from survival3d.data.readers import CTVolume, read_ct
from survival3d.errors import InputError


def _files(folder):
    return sorted(p for p in folder.iterdir() if p.is_file())


def _edit(path, **tags):
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)


def _assert_nothing_written(out):
    if out.exists():
        left = [p for p in out.rglob("*") if p.is_file() and p.name != "summary.json"]
        left = [p for p in left if p.name != "failures.csv"]
        assert not left, left


def test_truncated_dicom(dicom_copy, tmp_path, caplog):
    victim = _files(dicom_copy)[9]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(InputError) as e:
        read_ct(dicom_copy)
    assert e.value.path == str(victim) and e.value.field == "PixelData"
    out = tmp_path / "out"
    assert main(["preprocess", "--input", str(dicom_copy), "--out", str(out), "--no-volume-check"]) == 1
    assert victim.name in caplog.text  # the batch log names the file
    _assert_nothing_written(out)
    assert not (out / "manifest.csv").exists()


def test_truncated_dicom_header(dicom_copy):
    victim = _files(dicom_copy)[3]
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(InputError) as e:
        read_ct(dicom_copy)
    assert e.value.path == str(victim)


def test_non_image_dcm(dicom_copy):
    notes = dicom_copy / "notes.dcm"
    notes.write_text("patient notes, not an image\n")
    with pytest.raises(InputError, match="not a DICOM file") as e:
        read_ct(dicom_copy)
    assert e.value.path == str(notes)


def test_folder_without_dicom(tmp_path):
    folder = tmp_path / "empty_series"
    folder.mkdir()
    (folder / "README.txt").write_text("nothing here")
    with pytest.raises(InputError, match="no DICOM image files") as e:
        read_ct(folder)
    assert e.value.path == str(folder)


def test_missing_slice(dicom_copy):
    vol = read_ct(dicom_copy)
    removed = vol.meta["files"][10]
    (dicom_copy / removed.split("/")[-1]).unlink()
    with pytest.raises(InputError, match="missing slice: gap of 4 mm") as e:
        read_ct(dicom_copy)
    assert e.value.field == "ImagePositionPatient"
    assert e.value.path == vol.meta["files"][11].replace(str(vol.meta["source"]), str(dicom_copy))


def test_inconsistent_slice_spacing(dicom_copy):
    vol = read_ct(dicom_copy)
    victim = dicom_copy / vol.meta["files"][6].split("/")[-1]
    ipp = [float(v) for v in pydicom.dcmread(victim).ImagePositionPatient]
    _edit(victim, ImagePositionPatient=[ipp[0], ipp[1], ipp[2] + 0.7])
    with pytest.raises(InputError, match="inconsistent spacing") as e:
        read_ct(dicom_copy)
    assert e.value.field == "ImagePositionPatient"


def test_inconsistent_pixel_spacing(dicom_copy):
    victim = _files(dicom_copy)[4]
    _edit(victim, PixelSpacing=[0.8, 0.8])
    with pytest.raises(InputError, match="inconsistent spacing") as e:
        read_ct(dicom_copy)
    assert e.value.path == str(victim) and e.value.field == "PixelSpacing"


def test_non_ct_modality(dicom_copy):
    for f in _files(dicom_copy):
        _edit(f, Modality="MR")
    with pytest.raises(InputError, match="modality 'MR' is not CT") as e:
        read_ct(dicom_copy)
    assert e.value.field == "Modality"
    assert e.value.path.startswith(str(dicom_copy))


@pytest.mark.parametrize("kind", ["zero", "nan"])
def test_nifti_bad_affine(tmp_path, kind, rng):
    hdr = nib.Nifti1Header()  # written through the header: nibabel would not build an image from such an affine
    hdr.set_data_shape((8, 8, 8))
    hdr.set_data_dtype(np.float32)
    srow_y = [0.0, 0.0, 0.0, 0.0] if kind == "zero" else [0.0, np.nan, 0.0, 0.0]
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = [1.0, 0, 0, 0], srow_y, [0, 0, 1.0, 0]
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    img = nib.Nifti1Image(rng.normal(-500, 200, size=(8, 8, 8)).astype(np.float32), None, hdr)
    path = tmp_path / f"{kind}.nii.gz"
    nib.save(img, path)
    with pytest.raises(InputError, match="singular|NaN") as e:
        read_ct(path)
    assert e.value.path == str(path) and e.value.field == "sform/qform"
    out = tmp_path / "out"
    assert main(["preprocess", "--input", str(path), "--out", str(out)]) == 1
    _assert_nothing_written(out)


def test_empty_lung_mask(tmp_path, rng):
    arr = rng.normal(40, 10, size=(40, 40, 30)).astype(np.float32)  # soft tissue only: no lung
    vol = CTVolume(arr, np.diag([3.0, 3.0, 3.0, 1.0]), {"source": "soft_tissue.nii.gz"})
    with pytest.raises(InputError, match="empty lung mask") as e:
        preprocess_volume(vol, PreprocessSettings(size=(32, 32, 32)))
    assert e.value.path == "soft_tissue.nii.gz" and e.value.field == "lung_mask"


def test_implausible_lung_volume(tmp_path, rng):
    arr, affine, _ = make_chest_phantom(rng)  # about 1 L of lung
    path = tmp_path / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(arr, affine), path)
    out = tmp_path / "out"
    rc = main(["preprocess", "--input", str(path), "--out", str(out), "--size", "32", "--spacing", "6",
               "--lung-volume-range", "2", "7"])  # fmt: skip
    assert rc == 1
    fail = pd.read_csv(out / "failures.csv")
    assert "implausible lung mask" in fail["error"].iloc[0] and str(path) in fail["error"].iloc[0]
    _assert_nothing_written(out)
    # with a range that holds ~1 L the same input passes
    assert main(["preprocess", "--input", str(path), "--out", str(out), "--size", "32", "--spacing", "6",
                 "--lung-volume-range", "0.5", "2"]) == 0  # fmt: skip
    assert not (out / "failures.csv").exists()


@pytest.mark.parametrize(
    "rows, field, message",
    [
        ({"time": [10.0, -3.0], "event": [1, 0]}, "time", "negative time"),
        ({"time": [10.0, np.nan], "event": [1, 0]}, "time", "NaN"),
        ({"time": [10.0, 5.0], "event": [1, 2]}, "event", "event must be 0 or 1"),
        ({"time": [10.0, 5.0], "event": [1, "yes"]}, "event", "non-numeric"),
    ],
)
def test_bad_survival_values(synthetic_osic, tmp_path, rows, field, message):
    pids = pd.read_csv(synthetic_osic["survival_csv"])["Patient"].tolist()[:2]
    csv = tmp_path / "surv.csv"
    pd.DataFrame({"Patient": pids, **rows}).to_csv(csv, index=False)
    with pytest.raises(InputError, match=message) as e:
        read_survival_csv(csv)
    assert e.value.path == str(csv) and e.value.field == field
    out = tmp_path / "out"
    rc = main(["preprocess", "--osic", str(synthetic_osic["root"]), "--survival", str(csv), "--out", str(out)])
    assert rc == 1 and not out.exists()


def test_unknown_patient(synthetic_osic, tmp_path):
    surv = pd.read_csv(synthetic_osic["survival_csv"])
    csv = tmp_path / "surv.csv"
    pd.concat([surv, pd.DataFrame({"Patient": ["ID_NOBODY"], "time": [3.0], "event": [0]})]).to_csv(csv, index=False)
    with pytest.raises(InputError, match="unknown patient.*ID_NOBODY") as e:
        osic_jobs(synthetic_osic["root"], csv)
    assert e.value.path == str(csv) and e.value.field == "Patient"


def test_duplicated_ids(synthetic_osic, tmp_path):
    surv = pd.read_csv(synthetic_osic["survival_csv"])
    csv = tmp_path / "surv.csv"
    pd.concat([surv, surv.iloc[[0]]]).to_csv(csv, index=False)
    with pytest.raises(InputError, match="duplicated id") as e:
        read_survival_csv(csv)
    assert e.value.field == "Patient" and surv["Patient"].iloc[0] in str(e.value)


def test_missing_survival_column(tmp_path):
    csv = tmp_path / "surv.csv"
    pd.DataFrame({"Patient": ["a"], "time": [1.0]}).to_csv(csv, index=False)
    with pytest.raises(InputError, match="missing column") as e:
        read_survival_csv(csv)
    assert e.value.field == "event"


def test_unknown_input_path(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_ct(tmp_path / "nope.nii.gz")
    odd = tmp_path / "scan.xyz"
    odd.write_text("?")
    with pytest.raises(InputError, match="unknown image format"):
        read_ct(odd)


def test_cli_argument_errors(tmp_path, ct_samples):
    with pytest.raises(SystemExit) as e:
        main(["preprocess", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert main(["preprocess", "--input", str(ct_samples["lung1"]), "--out", str(tmp_path), "--spacing", "1", "2"]) == 2
    assert main(["preprocess", "--input", str(ct_samples["lung1"]), "--out", str(tmp_path), "--time", "3"]) == 2
    assert not any(tmp_path.iterdir())


def test_copy_of_series_still_reads(dicom_copy):
    """Guard for the fixtures above: the untouched copy is a valid series."""
    shutil.copy(_files(dicom_copy)[0], dicom_copy / "dup_name_same_slice.dcm")
    with pytest.raises(InputError, match="same position"):
        read_ct(dicom_copy)
