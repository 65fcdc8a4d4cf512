"""Skin-lesion datasets in their official layouts, plus scikit-learn's digits for smoke tests.

HAM10000 (Tschandl et al., Sci. Data 2018)::

    <root>/HAM10000_metadata.csv        lesion_id,image_id,dx,dx_type,age,sex,localization
    <root>/HAM10000_images_part_1/ISIC_0024306.jpg ...
    <root>/HAM10000_images_part_2/ISIC_0029306.jpg ...   (or all images in one folder: HAM10000_images/ or <root>)

Classes ``akiec, bcc, bkl, df, mel, nv, vasc``. Several images show the same lesion, so the split is made over
``lesion_id`` (stratified by diagnosis): no lesion has images in both training and validation.

ISIC 2018 Task 3 (Codella et al., 2019)::

    <root>/ISIC2018_Task3_Training_GroundTruth.csv      image,MEL,NV,BCC,AKIEC,BKL,DF,VASC   (one-hot, 0.0/1.0)
    <root>/ISIC2018_Task3_Training_Input/ISIC_0024306.jpg ...
    <root>/ISIC2018_Task3_Training_LesionGroupings.csv  image,lesion_id,...  (optional: split by lesion)
    <root>/ISIC2018_Task3_Validation_GroundTruth.csv + ISIC2018_Task3_Validation_Input/  (optional, official_val)

Datasets are registered in :data:`DATASETS`; each builder returns a :class:`SplitData`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms import v2

from survival3d.errors import ConfigError, InputError
from survival3d.layers.attention import build_with_context
from survival3d.registry import Registry

__all__ = [
    "DATASETS",
    "HAM10000_CLASSES",
    "ISIC2018_CLASSES",
    "HAM10000_COLUMNS",
    "SplitData",
    "ImageFileDataset",
    "ArrayImageDataset",
    "read_ham10000",
    "read_isic2018",
    "split_by_group",
    "build_transforms",
    "build_dataset",
    "make_loader",
    "class_counts",
]

log = logging.getLogger(__name__)

DATASETS: Registry = Registry("dataset")

HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
HAM10000_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
HAM10000_CSV = "HAM10000_metadata.csv"
HAM10000_IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images", ".")
ISIC2018_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ISIC2018_TRAIN_CSV = "ISIC2018_Task3_Training_GroundTruth.csv"
ISIC2018_TRAIN_DIR = "ISIC2018_Task3_Training_Input"
ISIC2018_GROUPS_CSV = "ISIC2018_Task3_Training_LesionGroupings.csv"
ISIC2018_VAL_CSV = "ISIC2018_Task3_Validation_GroundTruth.csv"
ISIC2018_VAL_DIR = "ISIC2018_Task3_Validation_Input"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class SplitData:
    """Training and validation datasets with their integer labels and the class names (label order)."""

    train: Dataset
    val: Dataset
    class_names: list[str]
    train_labels: np.ndarray
    val_labels: np.ndarray
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------------------------------- datasets
class ImageFileDataset(Dataset):
    """RGB images read from files; items are ``(image (3, H, W) float, label int)``."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], transform=None):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths for {len(labels)} labels.")
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> Image.Image:
        try:
            with Image.open(self.paths[i]) as im:
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"cannot read image ({e}).", path=self.paths[i]) from None

    def __getitem__(self, i: int):
        img = self.load(i)
        return (self.transform(img) if self.transform is not None else img), int(self.labels[i])


class ArrayImageDataset(Dataset):
    """Images held in memory as a ``(N, H, W, 3)`` uint8 array."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], transform=None):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}.")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images for {len(labels)} labels.")
        self.images, self.labels, self.transform = images, np.asarray(labels, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def __getitem__(self, i: int):
        img = self.load(i)
        return (self.transform(img) if self.transform is not None else img), int(self.labels[i])


def build_transforms(image_size: int, *, train: bool, augment: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """torchvision v2 pipelines: training = random resized crop, flips, rotation, colour jitter; eval = resize."""
    if image_size < 8:
        raise ConfigError(f"data.image_size must be >= 8, got {image_size}.")
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if train and augment:
        aug = [
            v2.RandomResizedCrop(image_size, scale=(0.7, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomRotation(20),
            v2.ColorJitter(0.2, 0.2, 0.2, 0.02),
        ]
        return v2.Compose([v2.ToImage(), *aug, *tail])
    return v2.Compose([v2.ToImage(), v2.Resize((image_size, image_size), antialias=True), *tail])


# ------------------------------------------------------------------------------------------------ CSV readers
def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputError("file not found.", path=path)
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"not a readable CSV ({e}).", path=path) from None


def _require_columns(df: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    for c in columns:
        if c not in df.columns:
            raise InputError(f"missing column '{c}' (found: {', '.join(df.columns)}).", path=path, field=c)


def _bad_rows(mask: pd.Series | np.ndarray, df: pd.DataFrame, column: str) -> str:
    rows = np.flatnonzero(np.asarray(mask))
    shown = ", ".join(f"row {r + 2}: {df[column].iloc[r]!r}" for r in rows[:3])  # +2: header line, 1-based
    return f"{len(rows)} bad value(s) ({shown}{', ...' if len(rows) > 3 else ''})"


def _index_images(folders: Sequence[Path]) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for p in folder.iterdir():
                if p.suffix.lower() in _IMAGE_SUFFIXES:
                    index.setdefault(p.stem, p)
    return index


def _attach_images(ids: pd.Series, folders: Sequence[Path], csv: Path, field: str) -> list[Path]:
    index = _index_images(folders)
    missing = [i for i in ids if i not in index]
    if missing:
        where = ", ".join(str(f) for f in folders if f.is_dir()) or ", ".join(str(f) for f in folders)
        raise InputError(
            f"{len(missing)} image(s) not found in {where} (first: {missing[0]}.jpg).", path=csv, field=field
        )
    return [index[i] for i in ids]


def read_ham10000(root: str | Path) -> pd.DataFrame:
    """Read and validate ``HAM10000_metadata.csv``; returns it with ``label`` (int) and ``path`` columns.

    Raises:
        InputError: naming the CSV and column for a missing column, empty ids, duplicate ``image_id``, an unknown
            ``dx``, a lesion with two diagnoses, a non-numeric ``age``, or images that are not on disk.
    """
    root = Path(root)
    csv = root / HAM10000_CSV
    df = _read_csv(csv)
    _require_columns(df, HAM10000_COLUMNS, csv)
    for c in ("lesion_id", "image_id"):
        empty = df[c].str.strip() == ""
        if empty.any():
            raise InputError(f"empty {c}: {_bad_rows(empty, df, c)}.", path=csv, field=c)
    dup = df["image_id"].duplicated()
    if dup.any():
        raise InputError(f"duplicate image_id: {_bad_rows(dup, df, 'image_id')}.", path=csv, field="image_id")
    dx = df["dx"].str.strip().str.lower()
    bad = ~dx.isin(HAM10000_CLASSES)
    if bad.any():
        raise InputError(f"dx must be one of {', '.join(HAM10000_CLASSES)}: {_bad_rows(bad, df, 'dx')}.", path=csv, field="dx")
    per_lesion = dx.groupby(df["lesion_id"]).nunique()
    if (per_lesion > 1).any():
        lesion = per_lesion.index[per_lesion > 1][0]
        raise InputError(f"lesion {lesion} has images with different dx.", path=csv, field="dx")
    age = pd.to_numeric(df["age"].replace("", np.nan), errors="coerce")
    bad_age = (age.isna() & (df["age"].str.strip() != "")) | (age < 0)
    if bad_age.any():
        raise InputError(f"age must be a non-negative number or empty: {_bad_rows(bad_age, df, 'age')}.", path=csv, field="age")
    folders = [root / d for d in HAM10000_IMAGE_DIRS]
    out = df.assign(dx=dx, age=age, label=dx.map({c: i for i, c in enumerate(HAM10000_CLASSES)}).astype(int))
    out["path"] = _attach_images(out["image_id"], folders, csv, "image_id")
    return out


def _read_isic_gt(csv: Path, folder: Path) -> pd.DataFrame:
    df = _read_csv(csv)
    _require_columns(df, ("image", *ISIC2018_CLASSES), csv)
    onehot = np.zeros((len(df), len(ISIC2018_CLASSES)))
    for j, c in enumerate(ISIC2018_CLASSES):
        v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() | ~v.isin([0.0, 1.0])
        if bad.any():
            raise InputError(f"values must be 0 or 1: {_bad_rows(bad, df, c)}.", path=csv, field=c)
        onehot[:, j] = v
    not_one = onehot.sum(1) != 1
    if not_one.any():
        r = int(np.flatnonzero(not_one)[0])
        raise InputError(
            f"{int(not_one.sum())} row(s) are not one-hot over {','.join(ISIC2018_CLASSES)} (first: row {r + 2}, "
            f"image {df['image'].iloc[r]}).",
            path=csv,
            field=",".join(ISIC2018_CLASSES),
        )
    empty = df["image"].str.strip() == ""
    if empty.any() or df["image"].duplicated().any():
        raise InputError("image ids must be non-empty and unique.", path=csv, field="image")
    out = df[["image"]].assign(label=onehot.argmax(1))
    out["path"] = _attach_images(out["image"], [folder], csv, "image")
    return out


def read_isic2018(root: str | Path, *, split: str = "train") -> pd.DataFrame:
    """Read ISIC 2018 Task 3 ground truth (``split`` = ``train`` or ``val``) with ``label`` and ``path`` columns.

    For the training split, lesion groupings (``ISIC2018_Task3_Training_LesionGroupings.csv``), when present, add
    a ``lesion_id`` column.
    """
    root = Path(root)
    if split == "train":
        df = _read_isic_gt(root / ISIC2018_TRAIN_CSV, root / ISIC2018_TRAIN_DIR)
        groups_csv = root / ISIC2018_GROUPS_CSV
        if groups_csv.is_file():
            g = _read_csv(groups_csv)
            _require_columns(g, ("image", "lesion_id"), groups_csv)
            lesion = df["image"].map(dict(zip(g["image"], g["lesion_id"])))
            if lesion.isna().any():
                first = df["image"][lesion.isna()].iloc[0]
                raise InputError(f"no lesion_id for image {first}.", path=groups_csv, field="lesion_id")
            df["lesion_id"] = lesion
        return df
    if split == "val":
        return _read_isic_gt(root / ISIC2018_VAL_CSV, root / ISIC2018_VAL_DIR)
    raise ValueError(f"split must be 'train' or 'val', got {split!r}.")


# --------------------------------------------------------------------------------------------------- splitting
def split_by_group(labels: Sequence[int], groups: Sequence | None, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation indices with whole groups (lesions) on one side.

    Groups are shuffled within each class (a group's class is its first sample's) and the first
    ``round(val_frac · n_groups)`` of each class go to validation (at least one when the class has two or more
    groups). ``groups=None`` treats every sample as its own group.
    """
    if not 0.0 < val_frac < 1.0:
        raise ConfigError(f"data.val_frac must be in (0, 1), got {val_frac}.")
    labels = np.asarray(labels)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    uniq, first = np.unique(groups, return_index=True)
    group_label = labels[first]
    rng = np.random.default_rng(seed)
    val_groups = []
    for c in np.unique(group_label):
        g = uniq[group_label == c]
        g = g[rng.permutation(len(g))]
        k = int(round(val_frac * len(g)))
        if len(g) >= 2:
            k = min(max(k, 1), len(g) - 1)
        val_groups.append(g[:k])
    in_val = np.isin(groups, np.concatenate(val_groups) if val_groups else [])
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def _log_counts(name: str, class_names: Sequence[str], train: np.ndarray, val: np.ndarray) -> None:
    tc, vc = class_counts(train, len(class_names)), class_counts(val, len(class_names))
    log.info("%s: %d training / %d validation images", name, len(train), len(val))
    for c, a, b in zip(class_names, tc, vc):
        log.info("  %-6s train %6d  val %6d", c, a, b)


def _subset(idx: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or len(idx) <= limit:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))


# --------------------------------------------------------------------------------------------------- builders
@DATASETS.register("ham10000")
def ham10000(root: str, image_size: int = 224, val_frac: float = 0.2, split_seed: int = 42, augment: bool = True,
             max_samples: int | None = None) -> SplitData:
    """HAM10000 split by ``lesion_id`` (stratified by diagnosis)."""
    df = read_ham10000(root)
    tr, va = split_by_group(df["label"].to_numpy(), df["lesion_id"].to_numpy(), val_frac, split_seed)
    tr, va = _subset(tr, max_samples, split_seed), _subset(va, max_samples, split_seed + 1)
    return _files_split("HAM10000", df, tr, df, va, list(HAM10000_CLASSES), image_size, augment)


@DATASETS.register("isic2018")
def isic2018(root: str, image_size: int = 224, val_frac: float = 0.2, split_seed: int = 42, augment: bool = True,
             max_samples: int | None = None, official_val: bool = False) -> SplitData:
    """ISIC 2018 Task 3: the official validation set (``official_val``) or a stratified split of the training set
    (by lesion when the lesion-groupings CSV is present)."""
    df = read_isic2018(root, split="train")
    if official_val:
        vdf = read_isic2018(root, split="val")
        tr, va = np.arange(len(df)), np.arange(len(vdf))
    else:
        vdf = df
        groups = df["lesion_id"].to_numpy() if "lesion_id" in df else None
        tr, va = split_by_group(df["label"].to_numpy(), groups, val_frac, split_seed)
    tr, va = _subset(tr, max_samples, split_seed), _subset(va, max_samples, split_seed + 1)
    return _files_split("ISIC2018", df, tr, vdf, va, list(ISIC2018_CLASSES), image_size, augment)


def _files_split(name, tdf, tr, vdf, va, classes, image_size, augment) -> SplitData:
    ytr, yva = tdf["label"].to_numpy()[tr], vdf["label"].to_numpy()[va]
    _log_counts(name, classes, ytr, yva)
    train = ImageFileDataset(tdf["path"].to_numpy()[tr], ytr, build_transforms(image_size, train=True, augment=augment))
    val = ImageFileDataset(vdf["path"].to_numpy()[va], yva, build_transforms(image_size, train=False))
    return SplitData(train, val, classes, ytr, yva)


@DATASETS.register("digits")
def digits(root: str | None = None, image_size: int = 32, val_frac: float = 0.2, split_seed: int = 42,
           augment: bool = False, max_samples: int | None = None, n_class: int = 7) -> SplitData:
    """scikit-learn's 8×8 handwritten digits (classes 0..n_class−1) as RGB images, resized to ``image_size``.

    Real data shipped inside scikit-learn, for smoke tests and learning tests without downloads.
    """
    from sklearn.datasets import load_digits

    if root is not None:
        raise ConfigError("the digits dataset ships with scikit-learn: leave data.root empty.")
    d = load_digits(n_class=n_class)
    images = np.repeat((d.images * (255.0 / 16.0)).round().astype(np.uint8)[..., None], 3, axis=-1)
    tr, va = split_by_group(d.target, None, val_frac, split_seed)
    tr, va = _subset(tr, max_samples, split_seed), _subset(va, max_samples, split_seed + 1)
    classes = [str(i) for i in range(n_class)]
    _log_counts("digits", classes, d.target[tr], d.target[va])
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    train = ArrayImageDataset(images[tr], d.target[tr], build_transforms(image_size, train=True, augment=augment, mean=mean, std=std))
    val = ArrayImageDataset(images[va], d.target[va], build_transforms(image_size, train=False, mean=mean, std=std))
    return SplitData(train, val, classes, d.target[tr], d.target[va], mean, std)


def build_dataset(name: str, **options) -> SplitData:
    """Build a registered dataset with those ``options`` it takes (a whole ``data`` config section can be passed).

    Raises:
        ConfigError: unknown dataset, or a file-based dataset without ``root``.
    """
    DATASETS.get(name)  # unknown names fail here, with a did-you-mean
    if name.lower() == "digits":
        options["root"] = None
    elif not options.get("root"):
        raise ConfigError(f"data.root must point at the {name} folder.")
    return build_with_context(DATASETS, name, **options)


def make_loader(ds: Dataset, labels: np.ndarray, *, batch_size: int, train: bool, weighted_sampler: bool = False,
                num_workers: int = 0, seed: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader; for training with ``weighted_sampler`` samples are drawn with probability ∝ 1 / class count
    (with replacement, one epoch = ``len(ds)`` draws), so every class is seen equally often on average."""
    g = torch.Generator().manual_seed(seed)
    sampler = None
    if train and weighted_sampler:
        counts = np.bincount(labels)
        weights = 1.0 / counts[labels]
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels), replacement=True, generator=g)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=train and len(ds) > batch_size,
        generator=g,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
