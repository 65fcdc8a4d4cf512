"""Fixtures for predict: the real sample CTs preprocessed (fake times) and a tiny model trained on them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from survival3d.data.samples import fetch_samples

from predict_helpers import PP_ARGS, TINY_RUN


@pytest.fixture(scope="session")
def ct_samples():
    return fetch_samples()


def _paint_lung_bases():
    """tests/realct/conftest.py::paint_lung_bases (the TotalSegmentator series is the upper abdomen: the classical
    masker finds no lung in it, so tests that need a lung on real DICOM paint two lung bases into a copy)."""
    spec = importlib.util.spec_from_file_location("realct_conftest", Path(__file__).parents[1] / "realct" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.paint_lung_bases


@pytest.fixture(scope="session")
def tiny_realct(ct_samples, tmp_path_factory) -> dict:
    """``preprocess`` lung1, lung2 and the DICOM series with painted lung bases (raw DICOM folder) with fake times,
    add covariates, train a tiny model for 2 epochs. ``samples["dicom_lungs"]``: the painted series."""
    from survival3d.cli import main

    root = tmp_path_factory.mktemp("predict_realct")
    ct_samples = dict(ct_samples)
    ct_samples["dicom_lungs"] = _paint_lung_bases()(ct_samples["dicom"], root / "painted" / "example_ct_dicom",
                                                    np.random.default_rng(14))
    surv = root / "survival.csv"
    surv.write_text("id,time,event\nlung1_image,40,1\nlung2_image,20,1\nexample_ct_dicom,60,0\n")
    pp = root / "pp"
    rc = main(["preprocess", "--input", str(ct_samples["lung1"]), str(ct_samples["lung2"]),
               str(ct_samples["dicom_lungs"]),
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
