"""The schema of FlexLayer experiment configs (``configs/flex/*.yaml``), loaded by :func:`load_flex_config`.

One run is ``data`` + ``model`` + ``train`` + ``attack``; a plan adds ``grid`` (logits method × masking function ×
seed × dataset), expanded by :func:`survival3d.flex.experiments.expand_grid`. Values map one-to-one onto
constructor arguments (:class:`~survival3d.flex.nets.FlexNet`, the LOGITS/MASKING registries, the attacks).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig

from survival3d.config import load_config

__all__ = ["FlexDataConfig", "FlexModelConfig", "FlexTrainConfig", "FlexAttackConfig", "FlexGridConfig",
           "FlexConfig", "load_flex_config"]


@dataclass
class FlexDataConfig:
    name: str = "digits"  # digits (scikit-learn, 8×8) | cifar10 | image_folder
    root: Optional[str] = None  # cifar10: folder holding cifar-10-batches-py; image_folder: train/ (+ val/) folders
    image_size: Optional[int] = None  # image_folder: resize to this square size (required there)
    val_frac: float = 0.2  # digits, and image_folder without a val/ folder: stratified hold-out fraction
    split_seed: int = 0  # fixed hold-out split, independent of the training seed
    limit_train: Optional[int] = None  # use at most this many training images (None = all)
    limit_val: Optional[int] = None
    batch_size: int = 64
    num_workers: int = 0


@dataclass
class FlexModelConfig:
    arch: str = "flexnet"  # flexnet, or a torchvision classifier name (resnet18, vgg11_bn, ...) with max-pools swapped
    channels: list[int] = field(default_factory=lambda: [16, 32])  # flexnet: width per stage
    convs_per_stage: int = 1
    kernel_size: int = 2  # flexnet FlexLayers (torchvision: taken from the swapped max-pool)
    stride: Optional[int] = None  # None = kernel_size
    padding: int = 0
    pool_channels: str = "auto"  # auto | conv1x1 | repeat
    dropout: float = 0.0
    logits: dict[str, Any] = field(default_factory=lambda: {"name": "threshold"})  # LOGITS spec
    masking: dict[str, Any] = field(default_factory=lambda: {"name": "sharp_sigmoid"})  # MASKING spec (k=50)


@dataclass
class FlexTrainConfig:
    epochs: int = 10
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 3e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    scheduler: str = "cosine"  # cosine | none
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bf16 autocast for training on CUDA


@dataclass
class FlexAttackConfig:
    methods: list[str] = field(default_factory=lambda: ["fgsm", "pgd"])  # ATTACKS names
    eps_max: float = 0.1  # L∞ radius in [0, 1] pixel units
    eps_steps: int = 5  # ε grid = linspace(0, eps_max, eps_steps + 1)
    pgd_steps: int = 10
    pgd_step_size: Optional[float] = None  # None = 2.5·ε/pgd_steps
    random_start: bool = True
    n_eval: Optional[int] = None  # attack the first n validation images (None = all)
    bpda_k: Optional[float] = None  # also attack through σ(bpda_k·z) gradients (BPDA, "<attack>_bpda" curves)


@dataclass
class FlexGridConfig:
    logits: list[Any] = field(default_factory=lambda: ["threshold"])  # LOGITS specs (name or {name, kwargs})
    masking: list[Any] = field(default_factory=lambda: [{"name": "sharp_sigmoid", "k": 50.0}])  # MASKING specs
    seeds: list[int] = field(default_factory=lambda: [0])
    datasets: list[Any] = field(default_factory=list)  # data specs ({name, root, ...}); empty = the data section


@dataclass
class FlexConfig:
    data: FlexDataConfig = field(default_factory=FlexDataConfig)
    model: FlexModelConfig = field(default_factory=FlexModelConfig)
    train: FlexTrainConfig = field(default_factory=FlexTrainConfig)
    attack: FlexAttackConfig = field(default_factory=FlexAttackConfig)
    grid: FlexGridConfig = field(default_factory=FlexGridConfig)


def load_flex_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> DictConfig:
    """:func:`survival3d.config.load_config` with the :class:`FlexConfig` schema."""
    return load_config(path, overrides, schema=FlexConfig)
