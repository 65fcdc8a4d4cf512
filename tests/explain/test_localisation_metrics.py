"""Localisation metrics on hand-built heatmaps."""

import numpy as np
import pytest

from survival3d.metrics.localisation import (DISTRACTOR_COLUMNS, LOCALISATION_COLUMNS, cubelet_sum,
                                             distractor_metrics, localisation_metrics)


def _blob(rng, shape=(16, 16, 16), r=3):
    c = rng.integers(r + 1, np.array(shape) - r - 1)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= r * r


def test_columns_are_exactly_the_documented_names():
    assert LOCALISATION_COLUMNS == (
        "pointing_game", "energy_pg", "energy_pg_cubelet", "pointing_cubelet", "auroc", "dice_topk", "chance_energy")


def test_heatmap_equal_to_mask_is_perfect(rng):
    mask = _blob(rng)
    m = localisation_metrics(mask.astype(float) * rng.uniform(0.5, 3), mask, patch_size=4)
    for col in ("pointing_game", "energy_pg", "energy_pg_cubelet", "pointing_cubelet", "auroc", "dice_topk"):
        assert m[col] == pytest.approx(1.0), col
    assert m["chance_energy"] == pytest.approx(mask.mean())


def test_uniform_heatmap_scores_chance(rng):
    mask = _blob(rng)
    lung = np.zeros_like(mask)
    lung[1:15, 2:14, 1:15] = True
    m = localisation_metrics(np.full(mask.shape, rng.uniform(0.1, 5)), mask, lung_mask=lung, patch_size=4)
    assert m["energy_pg"] == pytest.approx(m["chance_energy"])
    assert m["chance_energy"] == pytest.approx((mask & lung).sum() / lung.sum())
    assert m["auroc"] == pytest.approx(0.5)
    assert m["pointing_game"] == 0.0  # a flat map points nowhere
    assert m["peak_to_mean"] == pytest.approx(1.0)


def test_inverted_heatmap_has_auroc_zero(rng):
    mask = _blob(rng)
    m = localisation_metrics(1.0 - mask, mask)
    assert m["auroc"] == pytest.approx(0.0) and m["energy_pg"] == 0.0 and m["pointing_game"] == 0.0


def test_pointing_tolerance(rng):
    mask = np.zeros((12, 12, 12), bool)
    mask[4:7, 4:7, 4:7] = True
    h = np.zeros(mask.shape)
    h[9, 5, 5] = 1.0  # 3 voxels from the nearest mask voxel (6, 5, 5)
    assert localisation_metrics(h, mask)["pointing_game"] == 0.0
    assert localisation_metrics(h, mask, tolerance=2.9)["pointing_game"] == 0.0
    assert localisation_metrics(h, mask, tolerance=3.0)["pointing_game"] == 1.0


def test_negative_values_are_clipped_and_outside_lung_ignored(rng):
    mask = np.zeros((8, 8, 8), bool)
    mask[2:4, 2:4, 2:4] = True
    lung = np.zeros_like(mask)
    lung[:, :, :6] = True
    h = np.zeros(mask.shape)
    h[mask] = 1.0
    h[0, 0, 0] = -50.0  # negative: clipped, contributes no mass
    h[:, :, 7] = 100.0  # outside the lung: ignored
    m = localisation_metrics(h, mask, lung_mask=lung)
    assert m["energy_pg"] == pytest.approx(1.0) and m["pointing_game"] == 1.0
    m2 = localisation_metrics(h, mask)  # without a lung mask the mass outside counts
    assert m2["energy_pg"] == pytest.approx(8 / (8 + 64 * 100)) and m2["pointing_game"] == 0.0


def test_energy_cubelet_counts_mass_on_cubelets_touching_the_mask():
    mask = np.zeros((8, 8, 8), bool)
    mask[3, 3, 3] = True  # inside cubelet (0, 0, 0) of size 4
    h = np.zeros(mask.shape)
    h[0, 0, 0] = 3.0  # same cubelet, not on the lesion
    h[7, 7, 7] = 1.0  # another cubelet
    m = localisation_metrics(h, mask, patch_size=4)
    assert m["energy_pg"] == 0.0
    assert m["energy_pg_cubelet"] == pytest.approx(0.75)
    assert np.isnan(localisation_metrics(h, mask)["energy_pg_cubelet"])


def test_pointing_cubelet_reads_a_cubelet_map_at_its_own_resolution(rng):
    # a 1-voxel lesion in a corner of the top cubelet of a nearest-upsampled 4^3-voxel map: the tied voxel nearest
    # the cubelet's centre misses it, the top cubelet does not
    grid = rng.random((3, 3, 3))
    top = tuple(rng.integers(0, 3, size=3))
    grid[top] = 2.0
    h = grid.repeat(4, 0).repeat(4, 1).repeat(4, 2)
    mask = np.zeros(h.shape, bool)
    mask[tuple(4 * np.array(top))] = True
    m = localisation_metrics(h, mask, patch_size=4)
    assert m["pointing_game"] == 0.0 and m["pointing_cubelet"] == 1.0
    assert np.isnan(localisation_metrics(h, mask)["pointing_cubelet"])  # no cubelet size, no cubelet score
    other = np.zeros(h.shape, bool)
    other[tuple(4 * ((np.array(top) + 1) % 3))] = True  # a lesion in another cubelet
    assert localisation_metrics(h, other, patch_size=4)["pointing_cubelet"] == 0.0
    assert localisation_metrics(np.ones(h.shape), mask, patch_size=4)["pointing_cubelet"] == 0.0  # flat: nowhere


def test_pointing_cubelet_matches_a_brute_force_reference(rng):
    shape, ps = (10, 9, 11), 4  # padded at the far end: partial cubelets
    for _ in range(20):
        h = rng.normal(size=shape)
        lung = rng.random(shape) > 0.3
        mask = np.zeros(shape, bool)
        mask[tuple(rng.integers(0, s) for s in shape)] = True
        mask &= lung
        if not mask.any():
            continue
        best, best_idx = -np.inf, None
        for idx in np.ndindex(*(-(-s // ps) for s in shape)):
            sl = tuple(slice(i * ps, (i + 1) * ps) for i in idx)
            if lung[sl].any() and h[sl][lung[sl]].mean() > best:
                best, best_idx = h[sl][lung[sl]].mean(), sl
        want = float(mask[best_idx].any())
        assert localisation_metrics(h, mask, lung_mask=lung, patch_size=ps)["pointing_cubelet"] == want


def test_pointing_cubelet_uses_the_mean_not_the_mass_of_a_cubelet():
    # a lung-border cubelet with one valid voxel at 2.0 outranks a full cubelet at 1.5 (its mass, 96, would win)
    h = np.zeros((8, 4, 4))
    lung = np.zeros(h.shape, bool)
    lung[:5] = True  # cubelet 0 fully valid, cubelet 1 only through its first plane (16 voxels)
    lung[4, 1:, :] = lung[4, 0, 1:] = False  # ... and then only one voxel
    h[:4] = 1.5
    h[4, 0, 0] = 2.0
    mask = np.zeros(h.shape, bool)
    mask[4, 0, 0] = True
    assert localisation_metrics(h, mask, lung_mask=lung, patch_size=4)["pointing_cubelet"] == 1.0
    assert localisation_metrics(h, mask, lung_mask=lung, patch_size=4)["pointing_game"] == 1.0


def test_dice_topk_of_a_shifted_blob(rng):
    mask = np.zeros((10, 10, 10), bool)
    mask[2:6, 2:6, 2:6] = True
    h = np.roll(mask, 2, axis=0).astype(float)  # overlaps half the mask
    assert localisation_metrics(h, mask)["dice_topk"] == pytest.approx(0.5)


def test_cubelet_sum_pads_at_the_far_end(rng):
    x = rng.random((5, 6, 7))
    s = cubelet_sum(x, 4)
    assert s.shape == (2, 2, 2) and s.sum() == pytest.approx(x.sum())
    assert s[1, 1, 1] == pytest.approx(x[4:, 4:, 4:].sum())


def test_no_lesion_gives_nan(rng):
    m = localisation_metrics(rng.random((8, 8, 8)), np.zeros((8, 8, 8)))
    assert all(np.isnan(m[c]) for c in LOCALISATION_COLUMNS) and np.isfinite(m["peak_to_mean"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"heatmap": np.zeros((4, 4, 4)), "mask": np.zeros((4, 4, 5))},
        {"heatmap": np.full((4, 4, 4), np.nan), "mask": np.ones((4, 4, 4))},
        {"heatmap": np.zeros((4, 4, 4)), "mask": np.ones((4, 4, 4)), "tolerance": -1},
        {"heatmap": np.zeros((4, 4, 4)), "mask": np.ones((4, 4, 4)), "topk": 1.5},
    ],
)
def test_ill_arguments(kwargs):
    with pytest.raises(ValueError):
        localisation_metrics(**kwargs)


def test_leaderboard_ignores_nan_and_separates_cases_without_lesion():
    import json

    import pandas as pd

    from survival3d.explain.pipeline import leaderboard

    rows = []
    for case, lesion in [("a", True), ("b", True), ("c", False)]:
        for method, e in [("head", 0.9), ("gradcam", 0.2)]:
            r = {c: (e if lesion else np.nan) for c in LOCALISATION_COLUMNS}
            r.update(case_id=case, method=method, has_lesion=lesion, peak_to_mean=np.nan if not lesion else 3.0)
            rows.append(r)
    rows[0]["auroc"] = np.nan  # an undefined value is left out of the mean, not propagated
    board, md = leaderboard(pd.DataFrame(rows))
    assert board["ranking"] == ["head", "gradcam"]
    assert board["lesion"]["head"]["energy_pg"] == {"mean": pytest.approx(0.9), "sd": pytest.approx(0.0), "n": 2}
    assert board["lesion"]["head"]["auroc"]["n"] == 1 and board["lesion"]["head"]["auroc"]["sd"] is None
    assert board["no_lesion"]["head"]["n"] == 1 and board["no_lesion"]["head"]["peak_to_mean"]["mean"] is None
    json.dumps(board, allow_nan=False)  # strict JSON
    assert md.index("| head |") < md.index("| gradcam |") and "without a lesion" in md


def test_distractor_mass_against_a_numpy_reference_and_its_chance(rng):
    """Random map, distractor and lung: the four columns against a direct numpy computation; a uniform map sits at
    chance on both resolutions; a map on the distractor alone scores 1; one that avoids it 0."""
    shape, ps = (12, 16, 8), 4
    d = _blob(rng, shape, r=2)
    lung = rng.uniform(size=shape) < 0.8
    h = rng.normal(size=shape)
    got = distractor_metrics(h, d, lung_mask=lung, patch_size=ps)
    hp = np.where(lung, np.clip(h, 0, None), 0.0)
    dv = d & lung
    on = np.zeros(shape, bool)  # voxels of cubelets touching a valid distractor voxel, by a loop over cubelets
    for z in range(0, shape[0], ps):
        for y in range(0, shape[1], ps):
            for x in range(0, shape[2], ps):
                sl = np.s_[z:z + ps, y:y + ps, x:x + ps]
                on[sl] = dv[sl].any()
    assert got["energy_distractor"] == pytest.approx(hp[dv].sum() / hp.sum())
    assert got["energy_distractor_cubelet"] == pytest.approx(hp[on].sum() / hp.sum())
    assert got["chance_distractor"] == pytest.approx(dv.sum() / lung.sum())
    assert got["chance_distractor_cubelet"] == pytest.approx((lung & on).sum() / lung.sum())
    flat = distractor_metrics(np.full(shape, rng.uniform(0.1, 3)), d, lung_mask=lung, patch_size=ps)
    assert flat["energy_distractor"] == pytest.approx(flat["chance_distractor"])
    assert flat["energy_distractor_cubelet"] == pytest.approx(flat["chance_distractor_cubelet"])
    assert distractor_metrics(d * 2.0, d, patch_size=ps)["energy_distractor"] == pytest.approx(1.0)
    assert distractor_metrics(~d * 1.0, d, patch_size=ps)["energy_distractor"] == 0.0
    assert np.isnan(distractor_metrics(h, d)["energy_distractor_cubelet"])
    none = distractor_metrics(h, np.zeros(shape, bool), patch_size=ps)  # no distractor: no score
    assert set(none) == set(DISTRACTOR_COLUMNS) and all(np.isnan(v) for v in none.values())


def test_leaderboard_reports_distractor_mass_over_cases_with_one():
    import pandas as pd

    from survival3d.explain.pipeline import leaderboard

    rows = []
    for case, lesion, dmass in [("a", True, 0.1), ("b", False, 0.3), ("c", True, np.nan)]:
        r = {c: (0.5 if lesion else np.nan) for c in LOCALISATION_COLUMNS}
        r.update({c: dmass for c in DISTRACTOR_COLUMNS})
        r.update(case_id=case, method="head_grid", has_lesion=lesion, peak_to_mean=2.0)
        rows.append(r)
    board, md = leaderboard(pd.DataFrame(rows))
    s = board["distractor"]["head_grid"]
    assert s["n"] == 2 and s["energy_distractor_cubelet"]["mean"] == pytest.approx(0.2)
    assert "Mass on distractors" in md and "| head_grid | 2 |" in md
    assert "distractor" not in leaderboard(pd.DataFrame(rows).drop(columns=list(DISTRACTOR_COLUMNS)))[0]
