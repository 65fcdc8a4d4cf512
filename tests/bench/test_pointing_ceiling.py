"""bench.pointing_ceiling: the best map that is constant on the model's cubelets, its voxel pointing game against
closed cases and a brute-force reference, and its command line (file written, one-line errors)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from survival3d.bench.pointing_ceiling import best_cubelet_map, ceiling, main
from survival3d.metrics.localisation import localisation_metrics


def test_a_lesion_off_the_cubelet_centre_is_missed_by_the_best_cubelet_map(rng):
    mask = np.zeros((12, 12, 12), bool)
    cub = rng.integers(0, 3, size=3)
    mask[tuple(4 * cub)] = True  # one voxel in a corner of its cubelet
    h = best_cubelet_map(mask, None, 4)
    assert h.sum() == 64 and h[tuple(slice(4 * c, 4 * c + 4) for c in cub)].all()
    m = localisation_metrics(h, mask, patch_size=4)
    assert m["pointing_cubelet"] == 1.0 and m["energy_pg_cubelet"] == 1.0 and m["pointing_game"] == 0.0
    mask[tuple(slice(4 * c + 1, 4 * c + 3) for c in cub)] = True  # now it covers the cubelet's centre voxels
    assert localisation_metrics(best_cubelet_map(mask, None, 4), mask, patch_size=4)["pointing_game"] == 1.0


def test_best_cubelet_map_against_brute_force(rng):
    shape = (10, 13, 9)  # partial cubelets at the far end
    for _ in range(10):
        mask = rng.random(shape) < 0.05
        lung = rng.random(shape) < 0.7
        if not (mask & lung).any():
            continue
        h = best_cubelet_map(mask, lung, 4)
        counts = {}
        for idx in np.ndindex(3, 4, 3):
            sl = tuple(slice(4 * i, 4 * i + 4) for i in idx)
            counts[idx] = int((mask[sl] & lung[sl]).sum())
        top = max(counts.values())
        for idx, c in counts.items():
            sl = tuple(slice(4 * i, 4 * i + 4) for i in idx)
            assert (h[sl] == float(c == top)).all()
    with pytest.raises(ValueError):
        best_cubelet_map(np.zeros(shape, bool), None, 4)


def _dataset(tmp_path, rng, n=6):
    """16^3 cases; lesion i is a cube of edge 1 + i % 4 voxels at a random place inside a lung box."""
    lung = np.zeros((16, 16, 16), np.uint8)
    lung[1:15, 1:15, 1:15] = 1
    rows = []
    for i in range(n):
        mask = np.zeros((16, 16, 16), np.uint8)
        e = 1 + i % 4
        c = rng.integers(1, 15 - e, size=3)
        mask[c[0]:c[0] + e, c[1]:c[1] + e, c[2]:c[2] + e] = 1
        img = np.where(mask > 0, 40.0, -850.0).astype(np.float32)
        for kind, arr in (("image", img), ("mask", mask), ("lung_mask", lung)):
            (tmp_path / kind).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / kind / f"c{i}.nii.gz")
        rows.append({"id": f"c{i}", **{k: f"{k}/c{i}.nii.gz" for k in ("image", "mask", "lung_mask")},
                     "lesion_volume_mm3": float(e**3)})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    config = tmp_path / "cfg.yaml"
    config.write_text("data:\n  image_size: [16, 16, 16]\nmodel:\n  patch_size: 4\n")
    return manifest, config


def test_cli_scores_every_lesion_case_as_localisation_metrics_does(tmp_path, rng, capsys):
    manifest, config = _dataset(tmp_path, rng)
    assert main([str(manifest), "--config", str(config), "--out", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "pointing_ceiling.csv")
    assert list(table.columns) == ["id", "lesion_volume_mm3", "pointing_game", "energy_pg"] and len(table) == 6
    for rec in table.to_dict("records"):
        mask = np.asarray(nib.load(tmp_path / "mask" / f"{rec['id']}.nii.gz").dataobj) > 0
        lung = np.asarray(nib.load(tmp_path / "lung_mask" / "c0.nii.gz").dataobj) > 0
        ref = localisation_metrics(best_cubelet_map(mask, lung, 4), mask, lung_mask=lung, patch_size=4)
        assert rec["pointing_game"] == ref["pointing_game"] and rec["energy_pg"] == pytest.approx(ref["energy_pg"])
    assert "pointing_game" in capsys.readouterr().out
    frame = pd.read_csv(manifest)
    assert ceiling(manifest, frame.iloc[:2], patch_size=4, image_size=[16, 16, 16])["id"].tolist() == ["c0", "c1"]


def test_cli_names_the_missing_file_in_one_line(tmp_path, rng, capsys):
    manifest, config = _dataset(tmp_path, rng, n=2)
    (tmp_path / "mask" / "c1.nii.gz").unlink()
    rc = main([str(manifest), "--config", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "manifest.csv" in err[0] and "mask/c1.nii.gz" in err[0]
    assert not (tmp_path / "out").exists()
