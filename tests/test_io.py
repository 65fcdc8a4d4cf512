"""survival3d.io: atomic writes and the JSON / CSV / NIfTI writers built on them."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from survival3d import io


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as f:
            f.write("{half")
            raise RuntimeError("interrupted")
    assert not target.exists() and _leftovers(tmp_path) == []


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "table.csv"
    io.write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as f:
            f.write("new")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old\n" and _leftovers(tmp_path) == []


def test_write_json_and_csv(tmp_path):
    io.write_json(tmp_path / "a" / "m.json", {"x": 1.5, "p": tmp_path}, default=str)
    assert json.loads((tmp_path / "a" / "m.json").read_text()) == {"x": 1.5, "p": str(tmp_path)}
    with pytest.raises(ValueError):
        io.write_json(tmp_path / "nan.json", {"x": float("nan")}, allow_nan=False)
    assert not (tmp_path / "nan.json").exists() and _leftovers(tmp_path) == []
    df = pd.DataFrame({"id": ["a", "b"], "t": [1 / 3, 2.0]})
    io.write_csv(tmp_path / "t.csv", df)
    back = pd.read_csv(tmp_path / "t.csv")
    assert back["id"].tolist() == ["a", "b"] and back["t"].tolist() == df["t"].tolist()


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_write_nifti_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.random((4, 5, 6)) * 100).astype(dtype)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    path = io.write_nifti(tmp_path / "x.nii.gz", arr, affine)
    img = nib.load(str(path))
    assert img.shape == arr.shape and img.get_data_dtype() == np.dtype(dtype)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), arr)
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    assert int(img.header["sform_code"]) == 2 and int(img.header["qform_code"]) == 0  # nibabel's defaults
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # gzip by name
    assert _leftovers(tmp_path) == []


def test_write_nifti_options(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    path = io.write_nifti(tmp_path / "y.nii.gz", np.ones((3, 3, 3)), affine, dtype=np.float32,
                          xyzt_units=("mm", "sec"), qform_code=1, sform_code=1)
    img = nib.load(str(path))
    assert img.get_data_dtype() == np.float32
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    io.write_nifti(tmp_path / "z.nii", np.zeros((2, 2, 2), np.uint8), affine, xyzt_units="mm")
    assert nib.load(str(tmp_path / "z.nii")).header.get_xyzt_units() == ("mm", "unknown")


def test_write_nifti_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(img, filename):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.write_nifti(tmp_path / "x.nii.gz", np.zeros((2, 2, 2), np.float32), np.eye(4))
    assert list(tmp_path.iterdir()) == []
