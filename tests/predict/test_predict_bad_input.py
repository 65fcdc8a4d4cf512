"""Bad input to ``run.py predict``: one line naming the id / column / plan, failed cases listed, the rest done."""

from __future__ import annotations

import pandas as pd
import torch

from survival3d.cli import main
from predict_helpers import PP_ARGS, TINY_RUN


def test_a_case_that_fails_preprocessing_goes_to_failures(tiny_realct, tmp_path, rng, capsys):
    solid = tiny_realct["samples"]["dicom"]  # the raw TotalSegmentator series: upper abdomen, no lung found
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    out = tmp_path / "out"
    cov = tmp_path / "cov.csv"
    cov.write_text("id,age,sex\nsolid,50,F\nlung2_image,70,F\nbroken,60,M\n")
    rc = main(["predict", "--model", str(tiny_realct["run"]), "--input", str(solid), str(tiny_realct["samples"]["lung2"]),
               str(broken), "--covariates", str(cov), "--out", str(out), "--no-progress",
               "--no-figures", "--id", "solid", "lung2_image", "broken"])
    assert rc == 1
    fails = pd.read_csv(out / "failures.csv")
    assert sorted(fails["id"]) == ["broken", "solid"]
    assert "no lung found" in fails.set_index("id").loc["solid", "error"]
    assert all("\n" not in e for e in fails["error"])
    assert pd.read_csv(out / "predictions.csv")["id"].tolist() == ["lung2_image"]
    assert "2 failed" in capsys.readouterr().out


def _run_one_line(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1, err
    return err


def test_missing_and_mistyped_covariates(tiny_realct, tmp_path, capsys):
    base = ["predict", "--model", str(tiny_realct["run"]), "--input", str(tiny_realct["samples"]["lung2"]),
            "--out", str(tmp_path / "o"), "--no-progress"]
    err = _run_one_line(base, capsys)  # no covariates at all
    assert "lung2_image" in err and "'age'" in err
    cov = tmp_path / "c.csv"
    cov.write_text("id,age,sex\nlung2_image,,F\n")
    err = _run_one_line(base + ["--covariates", str(cov)], capsys)
    assert "lung2_image" in err and "age" in err
    cov.write_text("id,age,sex\nlung2_image,seventy,F\n")
    err = _run_one_line(base + ["--covariates", str(cov)], capsys)
    assert "lung2_image" in err and "age" in err and "not a number" in err


def test_checkpoint_of_a_different_model_config(tiny_realct, tmp_path, capsys):
    state = torch.load(tiny_realct["run"] / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["model"]["embed_dim"] = 24  # the weights are for 16
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    err = _run_one_line(["predict", "--model", str(bad), "--input", str(tiny_realct["samples"]["lung2"]),
                         "--out", str(tmp_path / "o")], capsys)
    assert "does not fit the model" in err and str(bad) in err


def test_input_preprocessed_with_another_plan_is_refused(tiny_realct, tmp_path, capsys):
    pp = tmp_path / "pp40"
    args = list(PP_ARGS)
    args[args.index("--size") + 1] = "40"
    assert main(["preprocess", "--input", str(tiny_realct["samples"]["dicom_lungs"]), "--out", str(pp), *args]) == 0
    capsys.readouterr()
    man = pd.read_csv(pp / "manifest.csv").assign(age=60, sex="M")
    man.to_csv(pp / "manifest.csv", index=False)
    err = _run_one_line(["predict", "--model", str(tiny_realct["run"]), "--manifest", str(pp / "manifest.csv"),
                         "--out", str(tmp_path / "o")], capsys)
    assert "size 40x40x40" in err and "size 48x48x48" in err


def test_model_without_a_plan_given_a_raw_ct(tiny_realct, tmp_path, capsys):
    keep = [o for o in TINY_RUN if not o.startswith(("data.source", "data.covariates", "data.image_size"))]
    assert main(["train", f"out_dir={tmp_path}", "name=dummy", "data.source=dummy", "data.dummy.n=8",
                 "data.dummy.size=16", "data.image_size=[16,16,16]", "train.epochs=1", *keep]) == 0
    err = _run_one_line(["predict", "--model", str(tmp_path / "dummy"), "--input",
                         str(tiny_realct["samples"]["lung2"]), "--out", str(tmp_path / "o")], capsys)
    assert "no preprocessing plan" in err


def test_manifest_without_times_for_explain_but_not_evaluate(tiny_realct, tmp_path, capsys):
    man = pd.read_csv(tiny_realct["manifest"]).drop(columns=["time", "event"])
    man["image"] = [str(tiny_realct["pp"] / p) for p in man["image"]]
    man["lung_mask"] = [str(tiny_realct["pp"] / p) for p in man["lung_mask"]]
    man.to_csv(tmp_path / "m.csv", index=False)
    assert main(["explain", "--checkpoint", str(tiny_realct["run"]), "--data", str(tmp_path / "m.csv"), "--out",
                 str(tmp_path / "x"), "--methods", "head_grid", "--no-views", "--max-cases", "1"]) == 0
    capsys.readouterr()
    err = _run_one_line(["evaluate", "--checkpoint", str(tiny_realct["run"]), "--data", str(tmp_path / "m.csv"),
                         "--out", str(tmp_path / "e")], capsys)
    assert "time" in err
