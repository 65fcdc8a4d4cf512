"""``run.py predict`` on raw real CTs (NRRD, DICOM) with a model trained on preprocessed real CTs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from survival3d.cli import main
from survival3d.data.readers import read_ct
from survival3d.predict.runner import peak_world

from predict_helpers import TINY_RUN


@pytest.fixture(scope="module")
def predicted(tiny_realct, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred")
    s = tiny_realct["samples"]
    rc = main(["predict", "--model", str(tiny_realct["run"]), "--input", str(s["lung2"]), str(s["dicom_lungs"]),
               "--covariates", str(tiny_realct["covariates"]), "--out", str(out), "--no-progress"])
    return {"rc": rc, "out": out}


def test_plan_travels_with_the_model(tiny_realct):
    plan = json.loads((tiny_realct["run"] / "plan.json").read_text())
    side = json.loads((tiny_realct["pp"] / "images" / "lung2_image.json").read_text())
    assert plan["digest"] == side["settings_digest"] and plan["settings"] == side["settings"]
    ckpt = torch.load(tiny_realct["run"] / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["preprocessing"] == plan and ckpt["model_inputs"] == {"lung_mask": True}
    assert plan["settings"]["spacing"] == [3.0, 3.0, 3.0] and plan["settings"]["masker"]["name"] == "classical"


def test_outputs_for_raw_nrrd_and_dicom(predicted, tiny_realct):
    assert predicted["rc"] == 0
    out = predicted["out"]
    table = pd.read_csv(out / "predictions.csv")
    assert table["id"].tolist() == ["lung2_image", "example_ct_dicom"]
    assert (table["status"] == "done").all() and (table["input_kind"] == "raw").all()
    assert not (out / "failures.csv").exists()
    grid = torch.load(tiny_realct["run"] / "checkpoints" / "last.pt", weights_only=True)["time_grid"]
    expected_t = np.arange(1, grid["tmax"] + 1) * grid["bin_width"]  # the grid's bins in the data's unit
    for _, row in table.iterrows():
        case = out / "cases" / row["id"]
        for f in ("prediction.json", "survival.csv", "survival.png", "heatmap.nii.gz", "heatmap_model.nii.gz",
                  "overlay.png", "summary.html"):
            assert (case / f).is_file(), f
        curve = pd.read_csv(case / "survival.csv")
        pmf = curve["pmf"].to_numpy()
        t = curve["t"].to_numpy()
        np.testing.assert_allclose(t, expected_t, rtol=1e-12)
        assert abs(pmf.sum() - 1) < 1e-9
        np.testing.assert_allclose(curve["survival"], np.clip(1 - np.cumsum(pmf), 0, 1), atol=1e-12)
        # mean / median / interval of the written pmf, recomputed independently
        assert row["mean_time"] == pytest.approx(float((t * pmf).sum()), rel=1e-9)
        cdf = np.cumsum(pmf)
        assert row["median_time"] == t[np.argmax(cdf >= 0.5)]
        assert row["q10_time"] <= row["median_time"] <= row["q90_time"]
        assert row["risk"] == pytest.approx(-row["mean_time"])
        assert row["time_unit"] == "time units"
        page = (case / "summary.html").read_text()
        assert "time units" in page and "data:image/png;base64," in page


@pytest.mark.parametrize("case, key", [("lung2_image", "lung2"), ("example_ct_dicom", "dicom_lungs")])
def test_heatmap_on_the_original_grid(predicted, tiny_realct, case, key):
    src = read_ct(tiny_realct["samples"][key])
    heat = nib.load(predicted["out"] / "cases" / case / "heatmap.nii.gz")
    assert heat.shape == src.shape
    np.testing.assert_allclose(heat.affine, src.affine, atol=1e-4)
    model = nib.load(predicted["out"] / "cases" / case / "heatmap_model.nii.gz")
    hm, ho = model.get_fdata(), heat.get_fdata()
    # the model-space peak, among the voxels whose centre lies inside the original scan, maps to the same world
    # point as the peak of the heatmap on the original grid (within one voxel of the coarser grid)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in hm.shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ model.affine[:3, :3].T + model.affine[:3, 3]
    vox = (world - heat.affine[:3, 3]) @ np.linalg.inv(heat.affine[:3, :3]).T
    inside = np.all((vox > -0.5) & (vox < np.asarray(heat.shape) - 0.5), axis=1).reshape(hm.shape)
    assert inside.any() and ho.max() > 0
    expected = peak_world(np.where(inside, hm, 0.0), model.affine)
    got = peak_world(ho, heat.affine)
    tol = np.maximum(np.abs(np.diag(model.affine)[:3]), src.spacing)
    assert np.all(np.abs(np.subtract(got, expected)) <= tol), (got, expected, tol)


def test_preprocessed_input_with_the_same_plan_gives_the_same_prediction(predicted, tiny_realct, tmp_path):
    out = tmp_path / "pp_pred"
    man = pd.read_csv(tiny_realct["manifest"]).drop(columns=["time", "event"])  # no times needed
    man = man[man["id"].isin(["lung2_image", "example_ct_dicom"])]
    man["image"] = [str(tiny_realct["pp"] / p) for p in man["image"]]
    man["lung_mask"] = [str(tiny_realct["pp"] / p) for p in man["lung_mask"]]
    man["age"], man["sex"] = [70, 58], ["F", "M"]
    man.to_csv(tmp_path / "m.csv", index=False)
    assert main(["predict", "--model", str(tiny_realct["run"]), "--manifest", str(tmp_path / "m.csv"), "--out",
                 str(out), "--no-progress", "--no-figures"]) == 0
    a = pd.read_csv(predicted["out"] / "predictions.csv").set_index("id")
    b = pd.read_csv(out / "predictions.csv").set_index("id")
    assert (b["input_kind"] == "preprocessed").all()
    np.testing.assert_allclose(b.loc[a.index, "mean_time"], a["mean_time"], rtol=1e-5)
    ha = nib.load(predicted["out"] / "cases" / "lung2_image" / "heatmap.nii.gz")
    hb = nib.load(out / "cases" / "lung2_image" / "heatmap.nii.gz")
    assert ha.shape == hb.shape and np.allclose(ha.affine, hb.affine, atol=1e-4)
    np.testing.assert_allclose(hb.get_fdata(), ha.get_fdata(), atol=1e-5)


def test_resume_skips_finished_cases(predicted, tiny_realct, capsys):
    s = tiny_realct["samples"]
    rc = main(["predict", "--model", str(tiny_realct["run"]), "--input", str(s["lung2"]), str(s["dicom_lungs"]),
               "--covariates", str(tiny_realct["covariates"]), "--out", str(predicted["out"]), "--no-progress"])
    assert rc == 0 and "predicted 0 case(s), 2 already done, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["air", "lung_mean"])
def test_outside_lung_travels_with_the_model(tiny_realct, tmp_path, rng, mode):
    """A model trained with data.outside_lung=air or lung_mean: predict applies the same masking, so whatever lies outside the
    lung mask (here: the chest wall and mediastinum replaced by random HU) changes neither the prediction nor the
    heatmap; the model trained without it does change."""
    from survival3d.data.plan import sidecar_of
    from survival3d.io import write_nifti

    run = tmp_path / "runs" / mode
    assert main(["train", f"out_dir={tmp_path / 'runs'}", f"name={mode}", f"data.manifest={tiny_realct['manifest']}",
                 *TINY_RUN, f"data.outside_lung={mode}"]) == 0
    man = pd.read_csv(tiny_realct["manifest"]).drop(columns=["time", "event"])
    man = man[man["id"] == "lung2_image"].reset_index(drop=True)
    img = nib.load(tiny_realct["pp"] / man.loc[0, "image"])
    lung = np.asarray(nib.load(tiny_realct["pp"] / man.loc[0, "lung_mask"]).dataobj) > 0
    noisy = np.where(lung, img.get_fdata(), rng.uniform(-1000, 1000, lung.shape)).astype(np.float32)
    write_nifti(tmp_path / "noisy.nii.gz", noisy, img.affine)
    src = tiny_realct["pp"] / man.loc[0, "image"]
    sidecar_of(tmp_path / "noisy.nii.gz").write_text(sidecar_of(src).read_text())  # preprocessed with the same plan
    both = pd.concat([man, man.assign(id="noisy", image=str(tmp_path / "noisy.nii.gz"))], ignore_index=True)
    both.loc[0, "image"] = str(tiny_realct["pp"] / both.loc[0, "image"])
    both["lung_mask"] = str(tiny_realct["pp"] / man.loc[0, "lung_mask"])
    both["age"], both["sex"] = 70, "F"
    both.to_csv(tmp_path / "m.csv", index=False)
    for model, same in ((run, True), (tiny_realct["run"], False)):
        out = tmp_path / f"pred_{same}"
        assert main(["predict", "--model", str(model), "--manifest", str(tmp_path / "m.csv"), "--out", str(out),
                     "--no-progress", "--no-figures"]) == 0
        pred = pd.read_csv(out / "predictions.csv").set_index("id")
        close = np.isclose(pred.loc["noisy", "mean_time"], pred.loc["lung2_image", "mean_time"], rtol=1e-6)
        assert close == same
    ha, hb = (nib.load(tmp_path / "pred_True" / "cases" / c / "heatmap.nii.gz").get_fdata() for c in ("lung2_image", "noisy"))
    np.testing.assert_allclose(ha, hb, atol=1e-6)
