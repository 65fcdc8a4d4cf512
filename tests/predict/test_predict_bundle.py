"""``run.py export`` → a MONAI bundle whose runner reproduces ``run.py predict`` on the same NIfTI (to 1e-4)."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from survival3d.cli import main
from survival3d.data.readers import read_ct


@pytest.fixture(scope="module")
def exported(tiny_realct, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    vol = read_ct(tiny_realct["samples"]["lung2"])
    ct = root / "lung2.nii.gz"
    nib.save(nib.Nifti1Image(vol.array.astype(np.float32), vol.affine), ct)
    assert main(["export", "--model", str(tiny_realct["run"]), "--out", str(root / "bundle")]) == 0
    assert main(["predict", "--model", str(tiny_realct["run"]), "--input", str(ct), "--id", "lung2_image",
                 "--covariates", str(tiny_realct["covariates"]), "--out", str(root / "pred"), "--no-progress",
                 "--no-figures"]) == 0
    return {"root": root, "ct": ct, "bundle": root / "bundle", "pred": root / "pred" / "cases" / "lung2_image"}


def _compare(pred_dir, bundle_dir):
    a = json.loads((pred_dir / "prediction.json").read_text())
    b = json.loads((bundle_dir / "prediction.json").read_text())
    for k in ("mean_time", "median_time", "q10_time", "q90_time", "risk"):
        assert b[k] == pytest.approx(a[k], abs=1e-4), k
    pa, pb = pd.read_csv(pred_dir / "survival.csv"), pd.read_csv(bundle_dir / "survival.csv")
    np.testing.assert_allclose(pb["pmf"], pa["pmf"], atol=1e-4)
    ha, hb = nib.load(pred_dir / "heatmap.nii.gz"), nib.load(bundle_dir / "heatmap.nii.gz")
    assert ha.shape == hb.shape and np.allclose(ha.affine, hb.affine, atol=1e-6)
    np.testing.assert_allclose(hb.get_fdata(), ha.get_fdata(), atol=1e-4)


def test_bundle_layout_and_metadata(exported, tiny_realct):
    b = exported["bundle"]
    for f in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (b / f).is_file(), f
    meta = json.loads((b / "configs" / "metadata.json").read_text())
    plan = json.loads((tiny_realct["run"] / "plan.json").read_text())
    assert meta["preprocessing"] == plan
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [48, 48, 48]
    assert set(meta["network_data_format"]["outputs"]) >= {"pred", "pmf", "heatmap"}
    ts = meta["survival3d"]["torchscript"]
    assert ts["torchscript"] == "model.ts" and (b / "models" / "model.ts").is_file(), ts


@pytest.mark.parametrize("torchscript", [True, False])
def test_bundle_runner_matches_predict(exported, tiny_realct, tmp_path, torchscript):
    from monai.bundle import run

    out = tmp_path / "out"
    cfg = exported["bundle"] / "configs"
    run(config_file=str(cfg / "inference.json"), meta_file=str(cfg / "metadata.json"), input_image=str(exported["ct"]),
        output_dir=str(out), case_id="lung2_image", covariates_file=str(tiny_realct["covariates"]),
        use_torchscript=torchscript)
    _compare(exported["pred"], out / "cases" / "lung2_image")


def test_python_m_monai_bundle_run(exported, tiny_realct, tmp_path):
    pytest.importorskip("fire", reason="`python -m monai.bundle` needs the fire package (pip install fire)")
    out = tmp_path / "out"
    cfg = exported["bundle"] / "configs"
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(cfg / "inference.json"),
                        "--meta_file", str(cfg / "metadata.json"), "--input_image", str(exported["ct"]),
                        "--output_dir", str(out), "--case_id", "lung2_image", "--covariates_file",
                        str(tiny_realct["covariates"])], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    _compare(exported["pred"], out / "cases" / "lung2_image")
