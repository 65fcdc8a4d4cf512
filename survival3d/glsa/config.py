"""The GLSA classifier's config schema (loaded with ``survival3d.config.load_config(path, overrides,
schema=GLSAConfig)``). Values map one-to-one onto constructor arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["GLSADataConfig", "GLSAModelConfig", "GLSALossConfig", "GLSAOptimConfig", "GLSATrainConfig", "GLSALoggingConfig", "GLSAConfig"]


@dataclass
class GLSADataConfig:
    name: str = "ham10000"  # ham10000 | isic2018 | digits (survival3d.glsa.data.DATASETS)
    root: Optional[str] = None  # dataset folder in its official layout (not used by digits)
    image_size: int = 224
    val_frac: float = 0.2
    split_seed: int = 42  # the train/validation split (kept fixed across training seeds)
    augment: bool = True
    max_samples: Optional[int] = None  # cap on training and on validation samples (smoke runs)
    official_val: bool = False  # isic2018: use the official validation set instead of a split
    batch_size: int = 32
    num_workers: int = 0
    weighted_sampler: bool = False  # WeightedRandomSampler with probability ∝ 1 / class count


@dataclass
class GLSAModelConfig:
    backbone: str = "resnet50"  # resnet18/34/50/101/152, vgg11/13/16/19[_bn]
    pretrained: bool = False  # ImageNet weights from weights_path or the torch hub cache (never downloaded)
    weights_path: Optional[str] = None
    attention: Any = "cbam"  # none | cbam | se | featureact, or {name: cbam, reduction: 8}
    fusion: Any = "original"  # original | learnable_gate | weighted_add | channel_attn | spatial_attn | cross_attn
    residual: Any = "original"  # original | learnable_gate | progressive | drop_path
    num_heads: int = 8
    glsa_stage: int = -1  # insert the GLSA block after this stage (1-based; -1 = last)
    dropout: float = 0.0
    width: int = 64  # ResNet first-stage width (64 = torchvision's network; narrower for CPU smoke runs)
    # baseline_featureact only (model.attention goes after every pooling stage):
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # channels per stage
    convs_per_stage: int = 2  # conv-BN-ReLU layers per stage
    hidden: list[int] = field(default_factory=lambda: [256, 128])  # BN-MLP classifier hidden widths


@dataclass
class GLSALossConfig:
    """``name`` picks a loss in ``survival3d.glsa.losses.LOSSES``; it receives the options it takes."""

    name: str = "focal"  # focal | class_balanced | ce
    gamma: float = 2.0  # focal, class_balanced (base focal)
    alpha: Optional[Any] = None  # focal: None, one number, or a list with one weight per class
    label_smoothing: float = 0.0  # ce
    beta: float = 0.9999  # class_balanced: effective-number hyperparameter
    base: str = "focal"  # class_balanced: focal | ce


@dataclass
class GLSAOptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    scheduler: str = "plateau"  # plateau | cosine | none
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    min_lr: float = 1e-6


@dataclass
class GLSATrainConfig:
    epochs: int = 50
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:0 ...
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    monitor: str = "balanced_accuracy"  # validation metric for checkpointing, early stopping and the scheduler
    early_stopping_patience: int = 10  # epochs without improvement; 0 disables
    grad_clip: Optional[float] = None
    gradcam_images: int = 4  # validation images explained with Grad-CAM on the GLSA output (0 = none)
    output_dir: str = "runs/glsa"
    run_name: str = "glsa"  # base name; the run folder is {run_name}_{fusion}_{residual}_{attention}


@dataclass
class GLSALoggingConfig:
    wandb: bool = True  # offline run under <run dir>/wandb (no account needed; `wandb sync` later)
    wandb_project: str = "glsa"
    log_every: int = 0  # batches between DEBUG batch logs (0 = epoch summaries only)


@dataclass
class GLSAConfig:
    data: GLSADataConfig = field(default_factory=GLSADataConfig)
    model: GLSAModelConfig = field(default_factory=GLSAModelConfig)
    loss: GLSALossConfig = field(default_factory=GLSALossConfig)
    optim: GLSAOptimConfig = field(default_factory=GLSAOptimConfig)
    train: GLSATrainConfig = field(default_factory=GLSATrainConfig)
    logging: GLSALoggingConfig = field(default_factory=GLSALoggingConfig)
