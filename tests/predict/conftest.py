"""Fixtures for predict: the real sample CTs preprocessed (fake times) and a tiny model trained on them."""

from __future__ import annotations

import pandas as pd
import pytest

from survival3d.data.samples import fetch_samples

from predict_helpers import PP_ARGS, TINY_RUN


@pytest.fixture(scope="session")
def ct_samples():
    return fetch_samples()


@pytest.fixture(scope="session")
def tiny_realct(ct_samples, tmp_path_factory) -> dict:
    """``preprocess`` the three sample CTs with fake times, add covariates, train a tiny model for 2 epochs."""
    from survival3d.cli import main

    root = tmp_path_factory.mktemp("predict_realct")
    surv = root / "survival.csv"
    surv.write_text("id,time,event\nlung1_image,40,1\nlung2_image,20,1\nexample_ct_dicom,60,0\n")
    pp = root / "pp"
    rc = main(["preprocess", "--input", str(ct_samples["lung1"]), str(ct_samples["lung2"]), str(ct_samples["dicom"]),
               "--survival", str(surv), "--out", str(pp), *PP_ARGS])
    assert rc == 0
    manifest = pd.read_csv(pp / "manifest.csv")
    manifest["age"] = [61, 72, 55]
    manifest["sex"] = ["M", "F", "M"]
    manifest.to_csv(pp / "manifest.csv", index=False)
    rc = main(["train", f"out_dir={root / 'runs'}", "name=tiny", f"data.manifest={pp / 'manifest.csv'}", *TINY_RUN])
    assert rc == 0
    cov = root / "covariates.csv"
    cov.write_text("id,age,sex\nlung2_image,70,F\nexample_ct_dicom,58,M\nlung1_image,64,M\n")
    return {"root": root, "pp": pp, "manifest": pp / "manifest.csv", "run": root / "runs" / "tiny",
            "covariates": cov, "samples": ct_samples}
