"""`run.py explain` end to end on the stand-in model (the engine/data glue is replaced by a fixture), and the
NIfTI geometry: heatmaps land on the source grid with the source affine."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from evalx_standin import TinySurvivalModel, sphere_case

from survival3d.cli import main
from survival3d.explain.io import save_nifti, source_geometry, to_source_grid
from survival3d.metrics.localisation import LOCALISATION_COLUMNS
from survival3d.explain.pipeline import Case


def _random_affine(rng, spacing):
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = rng.uniform(-100, 100, 3)
    return aff


def test_heatmap_nifti_has_the_source_affine_and_shape(tmp_path, rng):
    src_shape = (20, 24, 18)
    aff = _random_affine(rng, rng.uniform(0.5, 2.5, 3))
    nib.save(nib.Nifti1Image(np.zeros(src_shape, np.float32), aff), tmp_path / "ct.nii.gz")
    got_aff, got_shape = source_geometry(tmp_path / "ct.nii.gz")
    assert got_shape == src_shape and np.allclose(got_aff, aff)
    heat = rng.random((1, 16, 16, 16)).astype(np.float32)  # model space (resized)
    on_src = to_source_grid(heat, src_shape, src_affine=aff)
    save_nifti(on_src, aff, tmp_path / "h.nii.gz")
    img = nib.load(tmp_path / "h.nii.gz")
    assert img.shape == src_shape
    np.testing.assert_array_equal(img.affine, nib.load(tmp_path / "ct.nii.gz").affine)  # bit-identical


@pytest.mark.parametrize("with_model_affine", [True, False])
def test_to_source_grid_puts_a_blob_back_where_it_was(rng, with_model_affine):
    src_aff = _random_affine(rng, (2.0, 2.0, 2.0))
    model_aff = src_aff.copy()
    model_aff[:3, :3] *= 2  # the source (20^3) resized by 1/2 to the model grid (10^3)
    model_aff[:3, 3] += src_aff[:3, :3] @ np.full(3, 0.5)  # voxel centres of the coarser grid
    heat = np.zeros((1, 10, 10, 10), np.float32)
    idx = rng.integers(2, 8, 3)
    heat[0, idx[0], idx[1], idx[2]] = 1.0
    out = to_source_grid(heat, (20, 20, 20), src_affine=src_aff, model_affine=model_aff if with_model_affine else None)
    peak = np.array(np.unravel_index(np.argmax(out[0]), out.shape[1:]))
    assert np.all(np.abs(peak - (2 * idx + 0.5)) <= 0.5 + 1e-6)


@pytest.fixture
def fake_glue(tmp_path, monkeypatch, rng):
    """Three cases (one without lesion) whose sources are NIfTI files on a bigger grid than the model's."""
    sources, cases = {}, []
    for i, centre in enumerate([(5.5, 9.5, 5.5), (9.5, 5.5, 9.5), None]):
        batch = sphere_case(size=16, centre=centre or (8, 8, 8))
        if centre is None:
            batch["mask"] = torch.zeros_like(batch["mask"])
        aff = _random_affine(rng, (1.2, 1.2, 1.6))
        path = tmp_path / f"ct{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((24, 24, 20), np.float32), aff), path)
        sources[f"case{i}"] = (path, aff)
        cases.append(Case(id=f"case{i}", batch=batch, source=path))

    def load_cases(checkpoint, manifest, max_cases):
        sel = cases[:max_cases] if max_cases else cases
        return TinySurvivalModel(), len(sel), iter(sel)

    monkeypatch.setattr("survival3d.cli.explain.load_cases", load_cases)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"id": list(sources), "image": [str(p) for p, _ in sources.values()], "time": 1, "event": 1}).to_csv(
        manifest, index=False)
    (tmp_path / "model.pt").write_bytes(b"stand-in")
    return tmp_path, sources


def test_explain_cli_writes_everything(fake_glue):
    tmp, sources = fake_glue
    out = tmp / "out"
    rc = main(["explain", "--checkpoint", str(tmp / "model.pt"), "--data", str(tmp / "manifest.csv"), "--out",
               str(out), "--methods", "head,gradcam,feature_pca_tokens", "--max-cases", "3"])
    assert rc == 0
    table = pd.read_csv(out / "localisation.csv")
    assert set(LOCALISATION_COLUMNS) <= set(table.columns)
    assert set(table["method"]) == {"head", "gradcam"}  # the RGB view has files but no localisation row
    assert len(table) == 3 * 2
    lesion = table[table["has_lesion"]]
    assert (lesion.loc[lesion.method == "head", "pointing_game"] == 1.0).all()
    assert table.loc[~table["has_lesion"], "energy_pg"].isna().all()
    board = json.loads((out / "leaderboard.json").read_text())
    assert set(board["lesion"]) == {"head", "gradcam"} and board["no_lesion"]["head"]["n"] == 1
    head = lesion[lesion.method == "head"]
    assert board["lesion"]["head"]["energy_pg"]["mean"] == pytest.approx(head["energy_pg"].mean())
    assert board["lesion"]["head"]["energy_pg"]["sd"] == pytest.approx(head["energy_pg"].std(ddof=1))
    assert "| head |" in (out / "leaderboard.md").read_text()
    for cid, (path, aff) in sources.items():
        src = nib.load(path)
        for m in ("head", "gradcam", "feature_pca_tokens"):
            img = nib.load(out / "cases" / cid / f"{m}.nii.gz")
            np.testing.assert_array_equal(img.affine, src.affine)
            assert img.shape[:3] == src.shape
        assert (out / "cases" / cid / "head_overlay.png").stat().st_size > 0
        assert (out / "cases" / cid / "gradcam_3d.png").stat().st_size > 0


    # the results page built from this explain folder and an evaluate folder
    from survival3d.explain.results import main as results_main

    ev = tmp / "eval"
    ev.mkdir()
    (ev / "metrics.json").write_text(json.dumps({"n": 3, "c_index": 0.71, "c_index_oracle": 0.75}))
    page = tmp / "docs" / "results.md"
    assert results_main(["--entry", f"dummy1={ev},{out}", "--out", str(page)]) == 0
    text = page.read_text()
    assert "| dummy1 | 3 | 0.710 | 0.750 | 0.040 |" in text and "## dummy1" in text
    assert (tmp / "docs" / "results" / "dummy1" / "head_overlay.png").is_file()
    assert "results/dummy1/head_overlay.png" in text


def test_max_views_limits_pngs_not_metrics(fake_glue):
    tmp, sources = fake_glue
    out = tmp / "out_mv"
    rc = main(["explain", "--checkpoint", str(tmp / "model.pt"), "--data", str(tmp / "manifest.csv"), "--out",
               str(out), "--methods", "head", "--max-cases", "3", "--max-views", "1"])
    assert rc == 0
    assert len(pd.read_csv(out / "localisation.csv")) == 3
    ids = list(sources)[:3]
    assert (out / "cases" / ids[0] / "head_overlay.png").is_file()
    for cid in ids[1:]:
        assert (out / "cases" / cid / "head.nii.gz").is_file()
        assert not list((out / "cases" / cid).glob("*.png"))
    assert main(["explain", "--checkpoint", str(tmp / "model.pt"), "--data", str(tmp / "manifest.csv"), "--out",
                 str(tmp / "o2"), "--max-views", "-1"]) == 2


def test_explain_cli_rejects_unknown_method_and_missing_manifest(fake_glue, capsys):
    tmp, _ = fake_glue
    args = ["explain", "--checkpoint", str(tmp / "model.pt"), "--out", str(tmp / "o")]
    assert main([*args, "--data", str(tmp / "manifest.csv"), "--methods", "head,gradcamm"]) == 2
    assert "gradcam" in capsys.readouterr().err
    assert main([*args, "--data", str(tmp / "nope.csv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.csv" in err[0]
    assert not (tmp / "o").exists()


def test_plane_axes_follow_the_affine_orientation():
    from survival3d.explain.io import plane_axes

    assert plane_axes(None) == {"axial": 0, "coronal": 1, "sagittal": 2}
    assert plane_axes(np.diag([1.5, 1.5, 2.0, 1.0])) == {"sagittal": 0, "coronal": 1, "axial": 2}  # RAS
    swapped = np.array([[0, 0, 1.0, 0], [0, -1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])  # axis 0 = S
    assert plane_axes(swapped) == {"axial": 0, "coronal": 1, "sagittal": 2}
