"""OSIC layout → `run.py preprocess --osic`: manifest with baseline covariates, parallel, resumable, failures."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import OSIC_FAST_ARGS

from survival3d.cli import main
from survival3d.data.osic import MANIFEST_COLUMNS, read_osic_clinical
from survival3d.data.splits import patient_kfold
from survival3d.errors import ConfigError


def test_osic_tree_preprocessed(osic_preprocessed):
    assert osic_preprocessed["rc"] == 0
    osic, out = osic_preprocessed["osic"], osic_preprocessed["out"]
    manifest = pd.read_csv(osic_preprocessed["manifest"])
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    surv = pd.read_csv(osic["survival_csv"]).set_index("Patient")
    clinical = pd.read_csv(osic["train_csv"])
    assert sorted(manifest["id"]) == sorted(surv.index)
    for _, row in manifest.iterrows():
        assert (row["time"], row["event"]) == (surv.loc[row["id"], "time"], surv.loc[row["id"], "event"])
        visits = clinical[clinical["Patient"] == row["id"]]
        base = visits.loc[visits["Weeks"].idxmin()]  # baseline = earliest visit, not the first row
        assert row["fvc_baseline"] == base["FVC"] and row["percent_baseline"] == pytest.approx(base["Percent"])
        assert (row["age"], row["sex"], row["smoking_status"]) == (base["Age"], base["Sex"], base["SmokingStatus"])
        for col in ("image", "lung_mask"):
            assert (out / row[col]).is_file()
        assert (out / "qc" / f"{row['id']}.png").is_file() and (out / "qc" / f"{row['id']}.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 3 and summary["failed"] == 0 and summary["workers"] == 2


def test_osic_resume_and_failed_case_continues(osic_preprocessed, tmp_path):
    osic = osic_preprocessed["osic"]
    root = tmp_path / "osic"
    shutil.copytree(osic["root"], root)
    out = tmp_path / "out"
    shutil.copytree(osic_preprocessed["out"], out)
    # a new patient whose series has a truncated file: it fails, the others are skipped as done
    bad_pid = "ID99999BROKEN"
    src = sorted((root / "train").iterdir())[0]
    shutil.copytree(src, root / "train" / bad_pid)
    victim = sorted((root / "train" / bad_pid).iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:3000])
    train = pd.read_csv(root / "train.csv")
    extra = train[train["Patient"] == src.name].assign(Patient=bad_pid)
    pd.concat([train, extra]).to_csv(root / "train.csv", index=False)
    surv = pd.read_csv(root / "survival.csv")
    surv = pd.concat([surv, pd.DataFrame({"Patient": [bad_pid], "time": [10.0], "event": [1]})])
    surv.to_csv(root / "survival.csv", index=False)
    rc = main(["preprocess", "--osic", str(root), "--survival", str(root / "survival.csv"), "--out", str(out),
               *OSIC_FAST_ARGS])  # fmt: skip
    assert rc == 1
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["skipped"], summary["done"], summary["failed"]) == (3, 0, 1)
    failures = pd.read_csv(out / "failures.csv")
    assert failures["id"].tolist() == [bad_pid] and victim.name in failures["error"].iloc[0]
    assert bad_pid not in pd.read_csv(out / "manifest.csv")["id"].tolist()
    assert len(pd.read_csv(out / "manifest.csv")) == 3
    assert not (out / "images" / f"{bad_pid}.nii.gz").exists()


def test_clinical_baseline_is_earliest_visit(tmp_path):
    csv = tmp_path / "train.csv"
    pd.DataFrame({"Patient": ["A", "A", "B"], "Weeks": [10, -2, 0], "FVC": [2000, 2500, 3000],
                  "Percent": [60.0, 70.0, 80.0], "Age": [70, 70, 65], "Sex": ["Male", "Male", "Female"],
                  "SmokingStatus": ["Ex-smoker"] * 3}).to_csv(csv, index=False)  # fmt: skip
    base = read_osic_clinical(csv)
    assert base.loc["A", "fvc_baseline"] == 2500 and base.loc["A", "percent_baseline"] == 70.0
    assert base.loc["B", "sex"] == "Female"


def test_patient_kfold_stratified(rng):
    n = int(rng.integers(30, 60))
    df = pd.DataFrame({"id": [f"p{i}" for i in range(n)], "event": rng.integers(0, 2, size=n)})
    df.loc[:1, "event"] = [0, 1]
    splits = patient_kfold(df, 5, seed=int(rng.integers(1000)))
    assert sorted(splits["fold"].unique()) == [0, 1, 2, 3, 4]
    rate = df["event"].mean()
    per_fold = df.assign(fold=splits["fold"]).groupby("fold")["event"].mean()
    assert (per_fold - rate).abs().max() < 0.2
    # several scans of one patient stay together
    df2 = pd.DataFrame({"id": [f"s{i}" for i in range(2 * n)], "patient": np.repeat(df["id"], 2).to_numpy(),
                        "event": np.repeat(df["event"], 2).to_numpy()})  # fmt: skip
    s2 = patient_kfold(df2, 4, group_column="patient")
    assert (s2.groupby("patient")["fold"].nunique() == 1).all()
    with pytest.raises(ConfigError, match="folds"):
        patient_kfold(df, 1)


def test_make_splits_script(osic_preprocessed, tmp_path):
    out = tmp_path / "splits.csv"
    r = subprocess.run([sys.executable, "data_prep/make_splits.py", "--manifest", str(osic_preprocessed["manifest"]),
                        "--folds", "2", "--out", str(out)], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    splits = pd.read_csv(out)
    assert sorted(splits["fold"].unique()) == [0, 1] and len(splits) == 3
