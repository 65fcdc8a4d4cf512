import numpy as np
import pytest
import torch

import engine_standins as standins
from survival3d.config import ExperimentConfig, load_config
from survival3d.data.covariates import CovariateEncoder
from survival3d.data.datasets import build_dataset, collate_cases, load_cases
from survival3d.data.transforms import deterministic_transforms, random_transforms
from survival3d.errors import ConfigError


def _cfg(*over):
    return load_config(None, ["data.dummy.n=8", "data.dummy.size=24", "data.image_size=[24,24,24]", "data.dummy.feat_frac=1.0",
                              *over], schema=ExperimentConfig)


def test_intensity_window_matches_formula(rng):
    img = rng.uniform(-1500, 600, (1, 9, 8, 7)).astype(np.float32)
    t = deterministic_transforms(mask_keys=[], image_size=[9, 8, 7], intensity_window=[-1024, 150])
    out = t({"image": torch.from_numpy(img)})["image"]
    np.testing.assert_allclose(out.numpy(), np.clip((img + 1024) / 1174, 0, 1), atol=1e-6)


def test_resize_and_pad_crop_reach_image_size(rng):
    img = torch.from_numpy(rng.normal(size=(1, 10, 20, 30)).astype(np.float32))
    mask = (torch.rand(1, 10, 20, 30) > 0.5).float()
    for spatial in ("resize", "pad_crop"):
        t = deterministic_transforms(mask_keys=["mask"], image_size=[16, 16, 16], intensity_window=[-1, 1], spatial=spatial)
        out = t({"image": img, "mask": mask})
        assert out["image"].shape == (1, 16, 16, 16) and out["mask"].shape == (1, 16, 16, 16)
        assert set(torch.unique(out["mask"]).tolist()) <= {0.0, 1.0}
    with pytest.raises(ConfigError, match="data.spatial"):
        deterministic_transforms(mask_keys=[], image_size=[8, 8, 8], intensity_window=[0, 1], spatial="crop")
    with pytest.raises(ConfigError, match="intensity_window"):
        deterministic_transforms(mask_keys=[], image_size=[8, 8, 8], intensity_window=[1, 0])


@pytest.mark.parametrize("spatial", ["resize", "pad_crop"])
def test_outside_lung_air_blanks_everything_but_the_lungs(rng, spatial):
    img = torch.from_numpy(rng.uniform(-1100, 400, (1, 12, 10, 14)).astype(np.float32))
    lung = torch.from_numpy((rng.random((1, 12, 10, 14)) < 0.4).astype(np.float32))
    kw = dict(image_size=[12, 10, 14], intensity_window=[-1024, 150], spatial=spatial)
    keep = deterministic_transforms(mask_keys=["lung_mask"], **kw)({"image": img, "lung_mask": lung})
    air = deterministic_transforms(mask_keys=["lung_mask"], outside_lung="air", **kw)({"image": img, "lung_mask": lung})
    inside = air["lung_mask"] > 0
    np.testing.assert_allclose(air["image"][inside].numpy(), keep["image"][inside].numpy())
    assert (air["image"][~inside] == 0).all() and (keep["image"][~inside] > 0).any()
    with pytest.raises(ConfigError, match="data.outside_lung=air needs lung masks"):
        deterministic_transforms(mask_keys=["mask"], outside_lung="air", **kw)
    with pytest.raises(ConfigError, match="data.outside_lung 'lung'"):
        deterministic_transforms(mask_keys=["lung_mask"], outside_lung="lung", **kw)


def test_augmentation_moves_image_and_mask_together_and_is_seeded():
    cfg = _cfg("data.affine_prob=1.0", "data.rotate_deg=15")
    cases = load_cases(cfg.data, generate_case=standins.components().case_generator())
    assert "mask" in cases.mask_keys
    enc = CovariateEncoder().fit(cases.records)
    ds = build_dataset(cases, cases.ids, enc, cfg.data, train=True, seed=3)
    val = build_dataset(cases, cases.ids, enc, cfg.data, train=False)
    moved = 0
    for i in range(len(ds)):
        plain = val[i]
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            a, b = ds[i], ds[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])  # same (epoch, case)
            m = a["mask"][0] > 0.5
            if m.sum() < 8:
                continue
            # the lesion is bright in the image: after augmentation the mask still sits on bright voxels
            lesion, background = a["image"][0][m].mean(), a["image"][0][~m].mean()
            inside = plain["image"][0][plain["mask"][0] > 0.5].mean()
            assert lesion > background + 0.5 * (inside - plain["image"][0][plain["mask"][0] <= 0.5].mean())
            moved += int(not torch.equal(a["mask"], plain["mask"]))
        ds.set_epoch(0)
        e0 = ds[i]["image"]
        ds.set_epoch(1)
        assert not torch.equal(e0, ds[i]["image"])  # a new epoch draws new augmentation
        assert torch.equal(val[i]["image"], plain["image"])  # validation is never augmented
    assert moved > 0


def test_batch_dict_contract():
    cfg = _cfg("data.dummy.level=1")
    cases = load_cases(cfg.data, generate_case=standins.components().case_generator())
    for r in cases.records:
        r.setdefault("sex", "F")
        r.setdefault("age", 60.0)
    enc = CovariateEncoder(numeric=["age"], categorical=["sex"]).fit(cases.records)
    ds = build_dataset(cases, cases.ids[:3], enc, cfg.data, train=False)
    batch = collate_cases([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 1, 24, 24, 24) and batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert batch["mask"].shape == (3, 1, 24, 24, 24)
    assert batch["time"].shape == (3,) and batch["event"].shape == (3,) and batch["time"].dtype == torch.float32
    assert batch["cov_num"].shape == (3, 1) and batch["cov_cat"].shape == (3, 1) and batch["cov_cat"].dtype == torch.int64
    assert batch["id"] == cases.ids[:3] and batch["expected_time"].shape == (3,)
    assert batch["affine"].shape == (3, 4, 4)
    assert not type(batch["image"]).__name__ == "MetaTensor"
    np.testing.assert_allclose(batch["time"].numpy(), [cases.records[i]["time"] for i in range(3)], rtol=1e-6)


def test_manifest_source_keeps_affine(tmp_path, rng):
    manifest = pytest.importorskip("survival3d.data.manifest")
    import nibabel as nib
    import pandas as pd

    affine = np.array([[0.0, 0, -1.5, 10], [0, 2.0, 0, -5], [1.2, 0, 0, 3], [0, 0, 0, 1]])
    rows = []
    for i in range(4):
        img = rng.normal(-700, 50, (12, 12, 12)).astype(np.float32)
        m = np.zeros((12, 12, 12), np.float32)
        m[4:8, 4:8, 4:8] = 1
        nib.save(nib.Nifti1Image(img, affine), tmp_path / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(m, affine), tmp_path / f"c{i}_mask.nii.gz")
        rows.append({"id": f"c{i}", "image": f"c{i}.nii.gz", "mask": f"c{i}_mask.nii.gz", "time": 10.0 + i, "event": i % 2,
                     "age": 50 + i})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    cfg = load_config(None, [f"data.manifest={tmp_path / 'manifest.csv'}", "data.source=manifest", "data.image_size=[12,12,12]",
                             "data.covariates.numeric=[age]"], schema=ExperimentConfig)
    cases = load_cases(cfg.data)
    enc = CovariateEncoder(numeric=["age"]).fit(cases.records)
    ds = build_dataset(cases, cases.ids, enc, cfg.data, train=False)
    batch = collate_cases([ds[0], ds[1]])
    assert batch["image"].shape == (2, 1, 12, 12, 12) and batch["mask"].shape == (2, 1, 12, 12, 12)
    np.testing.assert_allclose(batch["affine"][0].numpy(), affine, atol=1e-5)  # MONAI's affine is the NIfTI's (RAS)
    assert manifest is not None


def test_random_transforms_ill_arguments():
    with pytest.raises(ConfigError, match="data.flip_prob must be in"):
        random_transforms(mask_keys=[], flip_prob=1.5)
    with pytest.raises(ConfigError, match="data.affine_prob must be in"):
        random_transforms(mask_keys=["mask"], affine_prob=-0.1)
    chain = random_transforms(mask_keys=["mask"], affine_prob=0.0)
    assert len(chain.transforms) == 3  # flips only


@pytest.mark.parametrize("spatial", ["resize", "pad_crop"])
def test_outside_lung_mean_fills_with_the_lungs_mean_and_leaves_no_edge(rng, spatial):
    """lung_mean: inside the lung mask unchanged, outside it the mean of the (windowed) image inside; the lung's
    border then carries no edge (a cubelet half in, half out has the parenchyma's own spread); an empty mask is a
    no-op."""
    shape = (1, 12, 10, 14)
    img = torch.from_numpy(rng.normal(-850, 25, shape).astype(np.float32))
    lung = torch.zeros(shape)
    lung[..., : shape[-1] // 2] = 1  # the left half is lung, the right half soft tissue
    img[..., shape[-1] // 2:] = 40.0
    kw = dict(image_size=list(shape[1:]), intensity_window=[-1024, 150], spatial=spatial)
    keep = deterministic_transforms(mask_keys=["lung_mask"], **kw)({"image": img, "lung_mask": lung})
    out = deterministic_transforms(mask_keys=["lung_mask"], outside_lung="lung_mean", **kw)({"image": img,
                                                                                           "lung_mask": lung})
    inside = out["lung_mask"] > 0
    np.testing.assert_allclose(out["image"][inside].numpy(), keep["image"][inside].numpy())
    mean = keep["image"][inside].double().mean().item()
    np.testing.assert_allclose(out["image"][~inside].numpy(), mean, rtol=1e-6)
    border = (slice(None), slice(0, 4), slice(0, 4), slice(shape[-1] // 2 - 2, shape[-1] // 2 + 2))
    assert keep["image"][border].std() > 10 * out["image"][border].std()  # the edge is gone
    assert out["image"][border].std() <= keep["image"][inside].std()
    empty = deterministic_transforms(mask_keys=["lung_mask"], outside_lung="lung_mean", **kw)(
        {"image": img, "lung_mask": torch.zeros(shape)})
    np.testing.assert_allclose(empty["image"].numpy(), keep["image"].numpy())
    with pytest.raises(ConfigError, match="data.outside_lung=lung_mean needs lung masks"):
        deterministic_transforms(mask_keys=["mask"], outside_lung="lung_mean", **kw)
