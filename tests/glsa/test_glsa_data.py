"""Loaders on trees in the official HAM10000 / ISIC-2018 layouts (tiny generated JPEGs), and glsa-train on them."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from survival3d.cli import main
from survival3d.errors import ConfigError, InputError
from survival3d.glsa.data import (
    HAM10000_CLASSES,
    HAM10000_COLUMNS,
    ISIC2018_CLASSES,
    build_dataset,
    make_loader,
    read_ham10000,
    read_isic2018,
    split_by_group,
)




def _jpeg(path, rng, size=12):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, quality=90)


def make_ham_tree(root, rng, *, lesions_per_class=4, one_folder=False):
    """HAM10000 layout: metadata CSV plus images split over HAM10000_images_part_1/ and _part_2/."""
    rows, k = [], 0
    for dx in HAM10000_CLASSES:
        for j in range(lesions_per_class):
            lesion = f"HAM_{len(rows):07d}"
            for _ in range(int(rng.integers(1, 4))):  # 1-3 images per lesion, as in the real data
                image_id = f"ISIC_{24306 + k:07d}"
                folder = "HAM10000_images" if one_folder else f"HAM10000_images_part_{1 + k % 2}"
                _jpeg(root / folder / f"{image_id}.jpg", rng)
                rows.append({"lesion_id": lesion, "image_id": image_id, "dx": dx, "dx_type": "histo",
                             "age": "" if k % 9 == 0 else f"{30 + k % 50}.0", "sex": ["male", "female", "unknown"][k % 3],
                             "localization": "back"})
                k += 1
    df = pd.DataFrame(rows, columns=list(HAM10000_COLUMNS))
    df.to_csv(root / "HAM10000_metadata.csv", index=False)
    return df


def make_isic_tree(root, rng, *, per_class=4, groupings=False, validation=False):
    """ISIC 2018 Task 3 layout: one-hot ground-truth CSV (0.0/1.0) and ISIC2018_Task3_Training_Input/."""
    def write(csv_name, folder, n_per_class, start):
        rows = []
        for c, name in enumerate(ISIC2018_CLASSES):
            for _ in range(n_per_class):
                image = f"ISIC_{start + len(rows):07d}"
                _jpeg(root / folder / f"{image}.jpg", rng)
                rows.append({"image": image, **{cl: "1.0" if cl == name else "0.0" for cl in ISIC2018_CLASSES}})
        df = pd.DataFrame(rows)
        df.to_csv(root / csv_name, index=False)
        return df

    df = write("ISIC2018_Task3_Training_GroundTruth.csv", "ISIC2018_Task3_Training_Input", per_class, 24306)
    (root / "ISIC2018_Task3_Training_Input" / "ATTRIBUTION.txt").write_text("tiny generated test images")
    if groupings:
        lesion = [f"IL_{i // 2:07d}" for i in range(len(df))]  # pairs of images of one lesion (same class)
        pd.DataFrame({"image": df["image"], "lesion_id": lesion, "diagnosis_confirm_type": "histopathology"}).to_csv(
            root / "ISIC2018_Task3_Training_LesionGroupings.csv", index=False)
    if validation:
        write("ISIC2018_Task3_Validation_GroundTruth.csv", "ISIC2018_Task3_Validation_Input", 1, 34321)
    return df


# ------------------------------------------------------------------------------------------------------ HAM10000
@pytest.mark.parametrize("one_folder", [False, True])
def test_ham10000_reader(tmp_path, rng, one_folder):
    df = make_ham_tree(tmp_path, rng, one_folder=one_folder)
    out = read_ham10000(tmp_path)
    assert len(out) == len(df)
    assert [HAM10000_CLASSES[i] for i in out["label"]] == list(df["dx"])
    assert all(p.is_file() and p.stem == i for p, i in zip(out["path"], out["image_id"]))
    assert out["age"].isna().sum() == (df["age"] == "").sum()


def test_ham10000_split_has_no_lesion_leakage(tmp_path, rng):
    make_ham_tree(tmp_path, rng, lesions_per_class=5)
    seed = int(rng.integers(0, 10_000))
    data = build_dataset("ham10000", root=str(tmp_path), image_size=16, val_frac=0.3, split_seed=seed)
    df = read_ham10000(tmp_path)
    by_path = dict(zip(map(str, df["path"]), df["lesion_id"]))
    train_lesions = {by_path[str(p)] for p in data.train.paths}
    val_lesions = {by_path[str(p)] for p in data.val.paths}
    assert train_lesions and val_lesions and not (train_lesions & val_lesions)
    assert len(data.train) + len(data.val) == len(df)
    assert set(data.val_labels) == set(range(7))  # stratified: every class has a lesion in validation
    x, y = data.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= y < 7


def test_split_by_group_property(rng):
    groups = rng.integers(0, 60, 200)
    labels = groups % 3  # every group has one class
    tr, va = split_by_group(labels, groups, 0.25, int(rng.integers(0, 1000)))
    assert len(set(groups[tr]) & set(groups[va])) == 0
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(200))
    frac = len(set(groups[va])) / len(set(groups))
    assert 0.15 < frac < 0.35


@pytest.mark.parametrize(
    "column, value, match",
    [("dx", "melanoma", "dx must be one of"), ("age", "forty", "age must be"), ("image_id", "", "empty image_id")],
)
def test_ham10000_bad_values_name_file_and_column(tmp_path, rng, column, value, match):
    df = make_ham_tree(tmp_path, rng, lesions_per_class=1)
    df.loc[2, column] = value
    df.to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    with pytest.raises(InputError, match=match) as e:
        read_ham10000(tmp_path)
    assert e.value.field == column and e.value.path.endswith("HAM10000_metadata.csv")
    assert "row 4" in str(e.value)  # header is line 1, df row 2 is line 4


def test_ham10000_missing_column_and_image(tmp_path, rng):
    df = make_ham_tree(tmp_path, rng, lesions_per_class=1)
    df.drop(columns="localization").to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    with pytest.raises(InputError, match="missing column 'localization'"):
        read_ham10000(tmp_path)
    df.to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    victim = next((tmp_path / "HAM10000_images_part_1").glob("*.jpg"))
    victim.unlink()
    with pytest.raises(InputError, match=victim.stem) as e:
        read_ham10000(tmp_path)
    assert e.value.field == "image_id"


def test_ham10000_lesion_with_two_diagnoses(tmp_path, rng):
    df = make_ham_tree(tmp_path, rng, lesions_per_class=1)
    df.loc[1, "lesion_id"] = df.loc[len(df) - 1, "lesion_id"]
    df.to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    with pytest.raises(InputError, match="different dx"):
        read_ham10000(tmp_path)


def test_weighted_sampler_balances_classes(tmp_path, rng):
    labels = np.array([0] * 90 + [1] * 10)
    ds = torch.utils.data.TensorDataset(torch.zeros(100, 1), torch.as_tensor(labels))
    loader = make_loader(ds, labels, batch_size=50, train=True, weighted_sampler=True, seed=int(rng.integers(1000)))
    drawn = np.concatenate([y.numpy() for _ in range(20) for _, y in loader])
    assert abs(drawn.mean() - 0.5) < 0.05


def test_file_dataset_needs_root():
    with pytest.raises(ConfigError, match="data.root"):
        build_dataset("ham10000", root=None)


# ------------------------------------------------------------------------------------------------------ ISIC 2018
def test_isic2018_reader(tmp_path, rng):
    df = make_isic_tree(tmp_path, rng)
    out = read_isic2018(tmp_path)
    assert list(out["image"]) == list(df["image"])
    assert [ISIC2018_CLASSES[i] for i in out["label"]] == [ISIC2018_CLASSES[i // 4] for i in range(len(df))]
    assert "lesion_id" not in out


def test_isic2018_lesion_groupings_split_and_official_val(tmp_path, rng):
    make_isic_tree(tmp_path, rng, groupings=True, validation=True)
    data = build_dataset("isic2018", root=str(tmp_path), image_size=16, val_frac=0.5, split_seed=int(rng.integers(1000)))
    lesion = dict(zip(*pd.read_csv(tmp_path / "ISIC2018_Task3_Training_LesionGroupings.csv")[["image", "lesion_id"]].T.values))
    tr = {lesion[p.stem] for p in data.train.paths}
    va = {lesion[p.stem] for p in data.val.paths}
    assert tr and va and not (tr & va)
    official = build_dataset("isic2018", root=str(tmp_path), image_size=16, official_val=True)
    assert len(official.train) == 28 and len(official.val) == 7
    assert all("Validation_Input" in str(p) for p in official.val.paths)


@pytest.mark.parametrize("bad", ["0.5", "yes"])
def test_isic2018_bad_value_names_file_and_column(tmp_path, rng, bad):
    df = make_isic_tree(tmp_path, rng, per_class=1)
    df.loc[3, "DF"] = bad
    df.to_csv(tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv", index=False)
    with pytest.raises(InputError, match="must be 0 or 1") as e:
        read_isic2018(tmp_path)
    assert e.value.field == "DF" and e.value.path.endswith("ISIC2018_Task3_Training_GroundTruth.csv")


def test_isic2018_not_one_hot(tmp_path, rng):
    df = make_isic_tree(tmp_path, rng, per_class=1)
    df.loc[0, "NV"] = "1.0"  # row 0 is MEL: now two labels
    df.to_csv(tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv", index=False)
    with pytest.raises(InputError, match="not one-hot"):
        read_isic2018(tmp_path)


# --------------------------------------------------------------------------------------- glsa-train on the trees
_TINY = ["data.image_size=32", "data.batch_size=8", "model.backbone=resnet18", "model.width=8", "model.num_heads=2",
         "model.glsa_stage=2", "train.epochs=1", "train.gradcam_images=2", "logging.wandb=false"]


@pytest.mark.parametrize("dataset", ["ham10000", "isic2018"])
def test_glsa_train_cli_on_official_layouts(tmp_path, rng, dataset, capsys):
    root = tmp_path / "data"
    (make_ham_tree if dataset == "ham10000" else make_isic_tree)(root, rng)
    out = tmp_path / "runs"
    code = main(["glsa-train", "--config", f"configs/glsa/{dataset}.yaml", f"data.root={root}", f"train.output_dir={out}",
                 "model.fusion=learnable_gate", "model.residual=progressive", *_TINY])
    assert code == 0
    run = out / f"{dataset}_resnet50_learnable_gate_progressive_cbam"
    for name in ("config.yaml", "train.log", "metrics.csv", "best.pt", "confusion_matrix.png", "gradcam.png", "results.json"):
        assert (run / name).is_file(), name
    res = json.loads((run / "results.json").read_text())
    assert res["dataset"] == dataset and len(res["per_class_recall"]) == 7
    assert "DEBUG" in (run / "train.log").read_text()
    assert "balanced accuracy" in capsys.readouterr().out


def test_glsa_train_cli_bad_csv_exits_1(tmp_path, rng, capsys):
    df = make_ham_tree(tmp_path, rng, lesions_per_class=1)
    df.loc[0, "dx"] = "xyz"
    df.to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    code = main(["glsa-train", "--config", "configs/glsa/ham10000.yaml", f"data.root={tmp_path}",
                 f"train.output_dir={tmp_path / 'runs'}", *_TINY])
    err = capsys.readouterr().err
    assert code == 1 and "HAM10000_metadata.csv [dx]" in err
