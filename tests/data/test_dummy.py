"""dummy1–6: contract, masks, determinism, documented effects and oracle C-indices, writer and CLI."""

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lifelines.utils import concordance_index
from scipy import ndimage, stats

from survival3d.data import dummy as dm
from survival3d.data.dummy import DUMMY_LEVELS, check_params, generate_case, get_level, sample_case
from survival3d.data.manifest import read_manifest
from survival3d.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
LEVELS = [name for name in DUMMY_LEVELS.keys() if name.startswith("dummy")]  # ct1-ct3: test_real_anatomy.py
SIZE = 32  # >= every level's minimum size, small enough to be fast


def _seed(rng) -> int:
    return int(rng.integers(0, 2**31))


def _cases(level, n, rng, **kw):
    """``n`` consecutive cases of a fresh seed (size SIZE unless given)."""
    seed = _seed(rng)
    kw = {"size": SIZE, **kw}
    return [generate_case(level, i, seed=seed, **kw) for i in range(n)]


def test_registry_holds_the_six_levels():
    assert LEVELS == [f"dummy{i}" for i in range(1, 7)]
    assert get_level(3) is not get_level("dummy3") and get_level("3").name == "dummy3"
    with pytest.raises(ConfigError, match="dummy7.*Valid"):
        get_level(7)


@pytest.mark.parametrize("level", LEVELS)
def test_case_contract(level, rng):
    lvl = get_level(level)
    spacing = float(rng.uniform(0.5, 3.0))
    for feat_frac in (0.0, 1.0):
        case = generate_case(level, int(rng.integers(0, 10_000)), size=SIZE, seed=_seed(rng), feat_frac=feat_frac,
                             spacing=spacing)
        assert case["image"].dtype == np.float32 and case["image"].shape == (SIZE,) * 3
        assert case["mask"].dtype == np.uint8 and case["mask"].shape == (SIZE,) * 3
        np.testing.assert_allclose(case["affine"], np.diag([spacing] * 3 + [1.0]))
        # mask non-empty iff a lesion is present
        assert (case["n_lesions"] > 0) == bool(feat_frac) == bool(case["mask"].any())
        assert case["lesion_volume_mm3"] == pytest.approx(case["mask"].sum() * spacing**3)
        assert (case["lung_mask"] is not None) == lvl.has_lungs
        assert (case["distractor_mask"] is not None) == (lvl.distractors is not None)
        if lvl.has_lungs:
            assert case["lung_mask"].shape == (SIZE,) * 3 and case["lung_mask"].sum() > 0.1 * SIZE**3
            assert not np.any(case["mask"] & (1 - case["lung_mask"]))  # lesions inside the lungs
        if case["distractor_mask"] is not None:
            assert case["distractor_mask"].any() == (case["n_distractors"] > 0)
        assert 1.0 <= case["time"] <= 100.0 and 1.0 <= case["expected_time"] <= 100.0 and case["event"] in (0, 1)
        assert case["id"].startswith(level)
        assert {"age", "sex", "smoking_status"} <= set(case) if lvl.covariates else "age" not in case


@pytest.mark.parametrize("level", [name for name in LEVELS if get_level(name).lesions.hu is not None])
def test_mask_voxels_are_the_anomalous_ones(level, rng):
    """Within the lesion's surroundings (the lungs, or the whole noise volume) a voxel is lesion-bright iff it is in
    the mask: a threshold halfway between the two intensities separates them exactly."""
    lvl = get_level(level)
    for case in _cases(level, 4, rng, feat_frac=1.0):
        image, mask = case["image"], case["mask"].astype(bool)
        region = case["lung_mask"].astype(bool) if lvl.has_lungs else np.ones_like(mask)
        threshold = (lvl.lesions.hu + lvl.background.surround_hu({"lung_hu": -850.0})) / 2
        assert mask.sum() >= 7
        assert np.all(image[mask] > threshold)
        assert np.all(image[region & ~mask] < threshold)


def test_dummy4_lesion_has_the_mean_of_its_surround_but_another_texture(rng):
    for case in _cases("dummy4", 5, rng, feat_frac=1.0):
        image, mask = case["image"], case["mask"].astype(bool)
        shell = ndimage.binary_dilation(mask, iterations=2) & case["lung_mask"].astype(bool) & ~mask
        lung = case["lung_mask"].astype(bool) & ~mask
        assert shell.sum() > 50
        assert abs(image[mask].mean() - image[lung].mean()) < 2.0  # HU; the lung mean is known to ~0.3 HU
        assert abs(image[mask].mean() - image[shell].mean()) < 8.0  # the immediate surround, ~2 HU noise
        assert image[mask].std() > 2.5 * image[shell].std()


def test_distractors_lie_outside_the_lungs(rng):
    seen = 0
    for case in _cases("dummy6", 12, rng):
        d = case["distractor_mask"].astype(bool)
        assert not np.any(d & case["lung_mask"].astype(bool))
        assert not np.any(d & case["mask"].astype(bool))
        seen += int(d.any())
        if d.any():  # and they stand out from every tissue around them
            assert case["image"][d].mean() > 400
    assert seen > 0


def test_deterministic_and_seed_dependent(rng):
    seed = _seed(rng)
    for level in LEVELS:
        index = int(rng.integers(0, 1000))
        a = generate_case(level, index, size=SIZE, seed=seed)
        b = generate_case(level, index, size=SIZE, seed=seed)
        for key, value in a.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, b[key])
            else:
                assert value == b[key], key
        c = generate_case(level, index, size=SIZE, seed=seed + 1)
        assert not np.array_equal(a["image"], c["image"])
        # the voxel-free sampler gives the same scalars as the full generator
        p = sample_case(level, index, seed=seed)
        assert dm.case_scalars(p, get_level(level)) == {k: a[k] for k in dm.case_scalars(p, get_level(level))}
        # and the case does not depend on the volume size (geometry and times are resolution independent)
        big = generate_case(level, index, size=48, seed=seed)
        assert (big["time"], big["event"], big["n_lesions"]) == (a["time"], a["event"], a["n_lesions"])


def _expected_reference(level: str, p) -> float:
    """expected_time recomputed from docs/dummy.md's formulas and parameters."""
    radii = [r for _, r in p.lesions]
    if level in ("dummy1", "dummy3", "dummy4"):
        return 20.0 if radii else 70.0
    t0, r_ref = {"dummy2": (75.0, 0.25), "dummy5": (75.0, 0.15), "dummy6": (50.0, 0.15)}[level]
    shift = 0.0
    if level == "dummy6":
        cov = p.covariates
        shift = -0.02 * (cov["age"] - 65) - 0.2 * (cov["sex"] == "M")
        shift += {"never": 0.0, "former": -0.15, "current": -0.35}[cov["smoking_status"]]
    burden = sum((r / r_ref) ** 3 for r in radii)
    return min(max(t0 / (1.0 + burden) * math.exp(shift), 1.0), 100.0)


@pytest.mark.parametrize("level", LEVELS)
def test_expected_time_follows_the_documented_model(level, rng):
    seed = _seed(rng)
    for i in range(100):
        p = sample_case(level, i, seed=seed)
        assert p.expected_time == pytest.approx(_expected_reference(level, p), abs=0.006)
        if p.event:
            assert p.time == p.true_time
        else:
            assert 1.0 <= p.time <= p.true_time


def test_dummy1_time_distributions(rng):
    seed = _seed(rng)
    cases = [sample_case(1, i, seed=seed, censor_frac=0.0) for i in range(1500)]
    for has, mean, sd in ((True, 20.0, 4.0), (False, 70.0, 8.0)):
        t = np.array([c.true_time for c in cases if bool(c.lesions) == has])
        assert abs(t.mean() - mean) < 4 * sd / math.sqrt(len(t)) + 0.05
        assert abs(t.std() - sd) < 0.15 * sd


@pytest.mark.parametrize("level", LEVELS)
def test_censoring_fraction_matches_request(level, rng):
    frac = float(rng.uniform(0.05, 0.8))
    seed = _seed(rng)
    events = np.array([sample_case(level, i, seed=seed, censor_frac=frac).event for i in range(200)])
    assert abs((1 - events.mean()) - frac) <= 0.05
    default = np.array([sample_case(level, i, seed=seed).event for i in range(200)])
    assert abs((1 - default.mean()) - get_level(level).default_censor_frac) <= 0.05


@pytest.mark.parametrize("level", ["dummy2", "dummy5"])
def test_bigger_lesion_volume_means_shorter_time(level, rng):
    cases = _cases(level, 200, rng)
    volume = np.array([c["mask"].sum() for c in cases])
    time = np.array([c["time"] for c in cases])
    assert stats.spearmanr(volume, time).statistic < -0.5
    with_lesion = volume > 0
    expected = np.array([c["expected_time"] for c in cases])
    # among cases with lesions the noise-free time falls with the voxelised volume (up to voxelisation)
    assert stats.spearmanr(volume[with_lesion], expected[with_lesion]).statistic < -0.8


def _documented_oracle() -> dict[str, float]:
    text = (ROOT / "docs" / "dummy.md").read_text()
    table = text.split("<!-- oracle-table -->", 1)[1]
    return {m[0]: float(m[1]) for m in re.findall(r"^\|\s*(dummy\d)\s*\|\s*([0-9.]+)\s*\|", table, re.M)}


def test_oracle_c_index_matches_docs(rng):
    documented = _documented_oracle()
    assert sorted(documented) == LEVELS
    for level in LEVELS:
        values = []
        for _ in range(8):  # the documented value is the mean over 200-case datasets (sd <= 0.021 each)
            seed = _seed(rng)
            cases = [sample_case(level, i, seed=seed) for i in range(200)]
            values.append(
                concordance_index([c.time for c in cases], [c.expected_time for c in cases], [c.event for c in cases])
            )
        assert abs(np.mean(values) - documented[level]) <= 0.03, (level, np.mean(values))


@pytest.mark.parametrize("level", LEVELS)
def test_min_size(level):
    lvl = get_level(level)
    check_params(level, size=lvl.min_size)
    with pytest.raises(ConfigError, match="too small"):
        check_params(level, size=lvl.min_size - 1)
    case = generate_case(level, 0, size=lvl.min_size, feat_frac=1.0)
    assert case["mask"].sum() >= 7  # even the smallest sphere is more than a voxel


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n": 0}, "n must be"),
        ({"feat_frac": 1.5}, "feat_frac"),
        ({"censor_frac": 1.0}, "censor_frac"),
        ({"spacing": 0.0}, "spacing"),
        ({"tmax": 1}, "tmax"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        check_params(1, **kwargs)


def _read_nifti(path):
    import nibabel as nib

    img = nib.load(path)
    return np.asanyarray(img.dataobj), img.affine


def test_written_dataset_identical_across_worker_counts(tmp_path, rng):
    import nibabel as nib

    seed, spacing = _seed(rng), float(rng.uniform(0.7, 2.5))
    kw = dict(size=SIZE, seed=seed, spacing=spacing, progress=False)
    m1 = dm.write_dummy_dataset(tmp_path / "w1", 6, n=6, workers=1, **kw)
    m2 = dm.write_dummy_dataset(tmp_path / "w2", 6, n=6, workers=2, **kw)
    assert m1.read_text() == m2.read_text()
    df = read_manifest(m1)
    assert {"id", "image", "mask", "lung_mask", "distractor_mask", "time", "event", "expected_time", "age", "sex",
            "smoking_status"} <= set(df.columns)
    for row in df.itertuples():
        case = generate_case(6, int(row.id.split("_")[1]), size=SIZE, seed=seed, spacing=spacing)
        for key in ("image", "mask", "lung_mask", "distractor_mask"):
            arr, affine = _read_nifti(getattr(row, key))
            other, _ = _read_nifti(getattr(row, key).replace(str(tmp_path / "w1"), str(tmp_path / "w2")))
            np.testing.assert_array_equal(arr, other)
            np.testing.assert_array_equal(arr, case[key])  # what is on disk is what is generated in memory
            np.testing.assert_allclose(affine, np.diag([spacing] * 3 + [1.0]))
            assert arr.shape == (SIZE,) * 3
        assert nib.load(row.image).get_data_dtype() == np.float32
        assert (row.time, row.event, row.expected_time) == (case["time"], case["event"], case["expected_time"])


def test_interrupted_write_leaves_no_manifest(tmp_path, monkeypatch):
    out = tmp_path / "d"
    dm.write_dummy_dataset(out, 1, n=3, size=24, progress=False)
    with pytest.raises(ConfigError, match="already exists"):
        dm.write_dummy_dataset(out, 1, n=3, size=24, progress=False)
    real = dm._write_case

    def flaky(index, **kw):
        if index == 2:
            raise KeyboardInterrupt
        return real(index, **kw)

    monkeypatch.setattr(dm, "_write_case", flaky)
    with pytest.raises(KeyboardInterrupt):
        dm.write_dummy_dataset(out, 1, n=5, size=24, progress=False, overwrite=True)
    assert not (out / "manifest.csv").exists()


def _cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "dummy", *args], capture_output=True, text=True,
                          cwd=cwd)


@pytest.mark.parametrize(
    "args, words", [(["--level", "7"], "dummy level"), (["--n", "0"], "n must"), (["--size", "8"], "too small")]
)
def test_cli_bad_arguments_one_line_exit_2(tmp_path, args, words):
    base = {"--level": "3", "--n": "4", "--size": "32"}
    base.update(dict(zip(args[::2], args[1::2])))
    r = _cli(*[x for kv in base.items() for x in kv], "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr
    assert not (tmp_path / "o" / "manifest.csv").exists()


def test_cli_writes_dataset_and_preview(tmp_path):
    r = _cli("--level", "3", "--n", "6", "--size", "32", "--seed", "5", "--out", "d3", "--workers", "2", "--preview",
             "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    df = read_manifest(tmp_path / "d3" / "manifest.csv")
    assert len(df) == 6 and df["lung_mask"].notna().all() and df["distractor_mask"].isna().all()
    for name in ("preview.png", "times_hist.png"):
        assert (tmp_path / "d3" / name).stat().st_size > 10_000
    r = _cli("--level", "3", "--n", "6", "--size", "32", "--out", "d3", cwd=tmp_path)
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_dummy_dataset_in_memory_with_monai_loader(rng):
    from monai.data import DataLoader
    from monai.transforms import EnsureChannelFirstd

    from survival3d.data.dummy_dataset import DummyDataset

    seed = _seed(rng)
    keys = ["image", "mask", "lung_mask", "distractor_mask"]
    ds = DummyDataset(6, n=5, size=SIZE, seed=seed,
                      transform=EnsureChannelFirstd(keys=keys, channel_dim="no_channel"))
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch["image"].shape == (5, 1, SIZE, SIZE, SIZE) and batch["lung_mask"].shape == (5, 1, SIZE, SIZE, SIZE)
    assert batch["time"].shape == (5,) and len(batch["id"]) == 5 and len(batch["sex"]) == 5
    np.testing.assert_array_equal(batch["image"][2, 0].numpy(), generate_case(6, 2, size=SIZE, seed=seed)["image"])
    table = ds.table()
    assert list(table["time"]) == pytest.approx(batch["time"].tolist())
    plain = DummyDataset(1, n=3, size=24, seed=seed, indices=[10, 11, 12], cache=True)
    assert "lung_mask" not in plain[0] and plain[0]["id"] == "dummy1_00010"
    assert plain.case(1) is plain.case(1) and plain.case(1) is not plain[1]  # cached, but items are fresh dicts
    with pytest.raises(ConfigError):
        DummyDataset(2, n=3, size=16)
