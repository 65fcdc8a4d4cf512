"""bench.blob_scales: the blob filter's case maxima on what the model sees, each set of scales scored like a risk,
and its command line (file written, one-line errors)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from survival3d.bench.blob_scales import case_maxima, main, score_scale_sets

N = 20


def _dataset(tmp_path, rng):
    """Cases of 20^3 at -850 HU in a 'lung' box: half with a bright blob (radius 1.5-3 voxels, random place), half
    with a bright tube of the same HU across the box (a vessel), so only the blob filter tells them apart."""
    z, y, x = np.meshgrid(*[np.arange(20.0)] * 3, indexing="ij")
    lung = np.zeros((20, 20, 20), np.uint8)
    lung[2:18, 2:18, 2:18] = 1
    rows = []
    for i in range(N):
        img = np.full((20, 20, 20), -850.0) + rng.normal(0, 10, (20, 20, 20))
        c = rng.uniform(8, 12, 3)
        if i % 2:
            r = rng.uniform(1.5, 3.0)
            img[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r] = 40.0
            vol = 4 / 3 * np.pi * r**3
        else:
            img[(y - c[1]) ** 2 + (x - c[2]) ** 2 <= 2.0] = 40.0
            vol = 0.0
        for kind, arr in (("image", img.astype(np.float32)), ("lung_mask", lung)):
            (tmp_path / kind).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / kind / f"c{i:02d}.nii.gz")
        rows.append({"id": f"c{i:02d}", "image": f"image/c{i:02d}.nii.gz", "lung_mask": f"lung_mask/c{i:02d}.nii.gz",
                     "time": 50.0 - vol / 10, "event": 1, "lesion_volume_mm3": vol})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    config = tmp_path / "cfg.yaml"
    config.write_text("data:\n  image_size: [20, 20, 20]\n  intensity_window: [-1024.0, 400.0]\n"
                      "  outside_lung: lung_mean\n")
    return manifest, config


def test_blobs_are_told_from_tubes_and_sets_take_the_maximum(tmp_path):
    manifest, _ = _dataset(tmp_path, np.random.default_rng())
    maxima = case_maxima(manifest, [1.0, 2.0], image_size=[20, 20, 20], intensity_window=[-1024.0, 400.0],
                         outside_lung="lung_mean")
    assert list(maxima.columns) == ["id", "max_1", "max_2"] and len(maxima) == N
    frame = pd.read_csv(manifest)
    table = score_scale_sets(frame, maxima, [1.0, 2.0], 2)
    assert table["presence_auroc"].is_monotonic_decreasing
    assert set(table["scales"]) == {"1", "2", "1 2"}
    assert table["presence_auroc"].max() == pytest.approx(1.0)  # every blob above every tube
    both = table.set_index("scales").loc["1 2"]
    from sklearn.metrics import roc_auc_score

    ref = roc_auc_score(frame["lesion_volume_mm3"] > 0, np.maximum(maxima["max_1"], maxima["max_2"]))
    assert both["presence_auroc"] == pytest.approx(ref)


def test_cli_writes_the_table_and_bad_input_is_one_line(tmp_path, capsys):
    manifest, config = _dataset(tmp_path, np.random.default_rng())
    assert main([str(manifest), "--config", str(config), "--scales", "1", "2", "--out", str(tmp_path / "o")]) == 0
    table = pd.read_csv(tmp_path / "o" / "blob_scales.csv")
    assert len(table) == 3 and {"presence_auroc", "auroc_small", "burden_spearman"} <= set(table.columns)
    pd.read_csv(manifest).drop(columns=["lung_mask"]).to_csv(tmp_path / "bad.csv", index=False)
    capsys.readouterr()
    assert main([str(tmp_path / "bad.csv"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.csv" in err and "lung_mask" in err
    assert main([str(manifest), "--config", str(config), "--scales", "0"]) == 2
    pd.read_csv(manifest).assign(image="image/none.nii.gz").to_csv(tmp_path / "gone.csv", index=False)
    capsys.readouterr()
    assert main([str(tmp_path / "gone.csv"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.nii.gz" in err
