"""Image-classification data for FlexLayer experiments: scikit-learn digits, CIFAR-10, any image folder.

Every loader returns a :class:`FlexData` of two datasets yielding ``(image, label)`` with images as float tensors
in ``[0, 1]`` (attacks work in this pixel space; normalisation lives inside the network) plus what the network
needs to know. Nothing is downloaded: CIFAR-10 and image folders must be present locally.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from survival3d.errors import InputError
from survival3d.registry import Registry

__all__ = ["DATASETS", "FlexData", "load_flex_data"]

DATASETS: Registry = Registry("flex dataset")


@dataclass
class FlexData:
    train: Dataset
    val: Dataset
    in_channels: int
    num_classes: int
    image_size: tuple[int, int]
    mean: list[float]
    std: list[float]
    name: str


def _stratified_split(labels: np.ndarray, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    if not 0 < val_frac < 1:
        raise InputError(f"val_frac must be in (0, 1), got {val_frac}.", field="data.val_frac")
    idx = np.arange(len(labels))
    return train_test_split(idx, test_size=val_frac, random_state=seed, stratify=labels)


def _limit(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    if n < 1:
        raise InputError(f"limit must be >= 1, got {n}.", field="data.limit_train/limit_val")
    keep = np.random.default_rng(seed).permutation(len(ds))[:n]
    return Subset(ds, sorted(keep.tolist()))


def _channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    dims = [0, *range(2, x.ndim)]
    return x.mean(dim=dims).tolist(), x.std(dim=dims).clamp_min(1e-3).tolist()


@DATASETS.register("digits")
def digits(*, root: str | None = None, val_frac: float = 0.2, seed: int = 0, image_size: int | None = None) -> FlexData:
    """scikit-learn's 1797 8×8 handwritten digits (bundled, no download), scaled to ``[0, 1]``, stratified split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    if image_size is not None and image_size != 8:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    tr, va = _stratified_split(bunch.target, val_frac, seed)
    mean, std = _channel_stats(x[tr])
    return FlexData(TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va]), 1, 10, tuple(x.shape[2:]),
                    mean, std, "digits")


@DATASETS.register("cifar10")
def cifar10(*, root: str | None = None, val_frac: float = 0.2, seed: int = 0, image_size: int | None = None) -> FlexData:
    """CIFAR-10 from a local ``root`` holding ``cifar-10-batches-py`` (train split for training, test for validation)."""
    from torchvision import datasets, transforms

    if root is None or not (Path(root) / "cifar-10-batches-py").is_dir():
        raise InputError("CIFAR-10 not found: expected a folder holding 'cifar-10-batches-py' (nothing is "
                         "downloaded).", path=root, field="data.root")
    tf = [transforms.ToTensor()]
    if image_size is not None and image_size != 32:
        tf.insert(0, transforms.Resize((image_size, image_size)))
    tf = transforms.Compose(tf)
    train = datasets.CIFAR10(root, train=True, transform=tf, download=False)
    val = datasets.CIFAR10(root, train=False, transform=tf, download=False)
    size = image_size or 32
    return FlexData(train, val, 3, 10, (size, size), [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616], "cifar10")


@DATASETS.register("image_folder")
def image_folder(*, root: str | None = None, val_frac: float = 0.2, seed: int = 0,
                 image_size: int | None = None) -> FlexData:
    """A torchvision ``ImageFolder`` (one sub-folder per class) at ``root/train`` and ``root/val``; without a
    ``val`` folder, ``root`` (or ``root/train``) is split stratified by ``val_frac``. RGB, resized to ``image_size``."""
    from torchvision import datasets, transforms

    if root is None or not Path(root).is_dir():
        raise InputError("image folder not found.", path=root, field="data.root")
    if image_size is None:
        raise InputError("image_folder needs data.image_size (images are resized to a square).", path=root,
                         field="data.image_size")
    tf = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])
    base = Path(root)
    train_dir = base / "train" if (base / "train").is_dir() else base
    try:
        train = datasets.ImageFolder(str(train_dir), transform=tf)
        if (base / "val").is_dir():
            val = datasets.ImageFolder(str(base / "val"), transform=tf)
            if val.classes != train.classes:
                raise InputError(f"val classes {val.classes} differ from train classes {train.classes}.",
                                 path=base / "val", field="data.root")
        else:
            tr, va = _stratified_split(np.asarray(train.targets), val_frac, seed)
            train, val = Subset(train, tr.tolist()), Subset(train, va.tolist())
    except FileNotFoundError as e:
        raise InputError(str(e), path=train_dir, field="data.root") from None
    classes = len(datasets.ImageFolder(str(train_dir)).classes)
    return FlexData(train, val, 3, classes, (image_size, image_size), [0.5] * 3, [0.25] * 3, "image_folder")


def load_flex_data(data_cfg) -> FlexData:
    """Build the datasets named by a ``data`` config section (see :class:`~survival3d.flex.config.FlexDataConfig`)."""
    seed = data_cfg.split_seed
    data = DATASETS.get(data_cfg.name)(root=data_cfg.root, val_frac=data_cfg.val_frac, seed=seed,
                                       image_size=data_cfg.image_size)
    data.train = _limit(data.train, data_cfg.limit_train, seed)
    data.val = _limit(data.val, data_cfg.limit_val, seed + 1)
    return data
