"""The schema of the 3D survival pipeline's config: every valid key, its type and its default.

Values map one-to-one onto constructor arguments; ``build_*`` functions turn sections into objects. Research
hyperparameters keep recognisable names (see docs/config.md for the one place they are explained):

====================  ==========================
research note name    config key
====================  ==========================
ALPHA_CENS            ``loss.alpha_cens``
VAR / VAR_INIT        ``loss.var_init`` (+ ``loss.learn_var``)
TMAX                  ``loss.tmax``
BETA_HEAD             ``head.beta_init``
loc_bias              ``head.loc_bias_init``
feat_frac             ``data.dummy.feat_frac``
====================  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from survival3d.data.dummy_spec import DummySpec

__all__ = [
    "CovariateConfig",
    "DataConfig",
    "ModelConfig",
    "HeadConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "CVConfig",
    "LoggingConfig",
    "PretrainConfig",
    "ExperimentConfig",
]


@dataclass
class CovariateConfig:
    """Manifest columns fed to the FiLM covariate encoder."""

    numeric: list[str] = field(default_factory=list)  # standardised with training-set mean/sd
    categorical: list[str] = field(default_factory=list)  # embedded; unseen levels map to an 'unknown' slot


@dataclass
class DataConfig:
    source: str = "dummy"  # "dummy" (generated in memory) or "manifest"
    manifest: Optional[str] = None  # CSV with id,image,time,event[,mask,lung_mask,expected_time,covariates...]
    time_unit: str = ""  # unit of the manifest's times (days | weeks | months | years | any label); "" = unstated
    # the generator's parameters (survival3d.data.dummy_spec.DummySpec); the config default censors 30% at every level
    dummy: DummySpec = field(default_factory=lambda: DummySpec(censor_frac=0.3))
    covariates: CovariateConfig = field(default_factory=CovariateConfig)
    image_size: list[int] = field(default_factory=lambda: [32, 32, 32])  # model input (pad/resize)
    spatial: str = "resize"  # resize (interpolate to image_size) | pad_crop (keep voxel size, centre pad/crop)
    intensity_window: list[float] = field(default_factory=lambda: [-1024.0, 150.0])  # HU window → [0, 1]
    outside_lung: str = "keep"  # keep | air | lung_mean: the image outside the lung mask set to the window's bottom or the lung's mean (needs lung masks)
    val_frac: float = 0.25  # when cv.folds == 1
    splits: Optional[str] = None  # CSV id,fold (data_prep/make_splits.py): use these patient-level folds
    augment: bool = True  # random flips + small affine on the training set
    flip_prob: float = 0.5  # per axis
    affine_prob: float = 0.3
    rotate_deg: float = 10.0  # max rotation about each axis
    scale_range: float = 0.05  # max relative zoom (±)
    translate: float = 0.0  # max shift in voxels (±)
    cache: str = "memory"  # memory | persistent | none
    cache_dir: Optional[str] = None  # for cache = persistent
    cache_device: str = "cpu"  # cpu | cuda[:N]: keep cached volumes on the GPU and augment there
    loader: str = "auto"  # auto | torch | thread (MONAI ThreadDataLoader; auto = thread when cache_device is a GPU)
    batch_size: int = 8
    num_workers: int = 0


@dataclass
class ModelConfig:
    """``survival3d.models.SurvivalNet3D`` arguments (one key per constructor argument; see docs/model.md).

    Windows stay local by default: a research run found the softmin head localised only with local cubelet
    features. Cubelets must also be small relative to a lesion: on 32^3 sphere volumes patch 4 localised within 50
    steps, patch 8 did not (docs/model.md).
    """

    name: str = "survival3d"  # the network (survival3d.models.MODEL_NAMES: one today)
    in_channels: int = 1
    patch_size: int = 4  # cubelet edge in voxels (4 for 32^3 dummy volumes -> 8^3 cubelets; 8-16 for CT)
    stem_convs: int = 1  # convolutions in the Conv3dPatchEmbed stem (first n-1 are 3^3 stride 2)
    dot_filter_sigmas: list[float] = field(default_factory=list)  # Hessian blob filter scales (voxels) -> extra channel
    embed_dim: int = 48
    embed_norm: bool = True  # LayerNorm on the cubelet tokens
    embed_mean_intensity: bool = True  # add each cubelet's mean intensity back after the LN (docs/model.md)
    embed_std_intensity: bool = False  # ... and its intensity sd (texture amplitude; needed for dummy4)
    pos_embed: str = "sincos"  # none | learnable | sincos
    img_size: Optional[list[int]] = None  # for pos_embed=learnable; None -> data.image_size
    depth: int = 2
    num_heads: int = 3
    window_size: int = 4  # in cubelets; keep local (see above and docs/model.md)
    shift: bool = True  # alternate shifted windows
    rel_pos_bias: bool = True
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0  # stochastic depth of the last block (linear ramp from 0)
    attn_drop: float = 0.0
    drop: float = 0.0
    film: bool = True  # FiLM conditioning on covariates (identity at init; no-op without covariates)
    film_hidden: int = 64  # covariate encoder width
    global_residual: bool = True  # residual link around the whole transformer
    use_checkpoint: bool = False  # activation checkpointing per block (large volumes)
    max_windows_per_call: int = 32768  # windows per SDPA call (bigger calls failed in cuDNN at 256^3)
    vq_codes: int = 0  # > 0: vector-quantise the encoder's output tokens with this many codes (0 = continuous)
    vq_decay: float = 0.99  # EMA decay of the codebook (0 = learn it by gradient)
    vq_commitment: float = 0.25  # commitment weight beta of the VQ loss
    covariate_aft: bool = False  # a linear covariate term on log-time: pred x exp(w . covariates) (needs covariates)
    init: Optional[str] = None  # pretrained encoder: a run folder of run.py pretrain/train or a .pt checkpoint
    attention: Any = "none"  # local attention in every block: none | se | cbam | featureact, or {name: se, reduction: 8}


@dataclass
class HeadConfig:
    """``survival3d.models.HEADS`` spec: ``name`` plus the head's constructor arguments."""

    name: str = "softmin"  # softmin | meanpool (ablation)
    hidden: list[int] = field(default_factory=lambda: [64])  # 1-2 hidden layers
    beta_init: float = 5.0  # BETA_HEAD
    learn_beta: bool = True
    loc_bias_init: Any = "auto"  # loc_bias, in grid units; auto = TMAX/2 (50 for TMAX 100)
    learn_loc_bias: bool = True
    loc_scale: Any = "auto"  # grid units per unit of head-MLP output; auto = TMAX/10 (1.0: locs barely spread in 100s of steps)
    lung_frac_min: float = 0.5  # cubelets with less lung than this are invalid (when a lung mask is given)
    entropy_weight: float = 0.0  # w * sum p log p (w > 0 spreads p, w < 0 sharpens it)
    smooth_weight: float = 0.0  # w * mean squared loc difference between neighbouring cubelets
    map_upsample: int = 1  # softmin map on a grid this many times finer than the cubelets (loc trilinear between centres)
    context: str = "none"  # softmin: none | mean | max | mean_max (each cubelet also sees the pooled valid tokens)
    aggregate: str = "weighted_mean"  # softmin: weighted_mean (sum p loc) | mean_hazard (log-mean-exp) | mean_rate (harmonic mean): the burden adds up


@dataclass
class LossConfig:
    """``survival3d.losses.LOSSES`` spec (see docs and each loss's docstring for the formula)."""

    name: str = "censored"  # censored | classical | cox_efron | cox_breslow
    alpha_cens: float = 1.0  # ALPHA_CENS: weight of censored cases
    var_init: Any = "auto"  # VAR (fixed) or VAR_INIT (learnable), grid units²; auto = (TMAX/10)² (100 for TMAX 100)
    learn_var: bool = False
    tmax: Any = "auto"  # TMAX: support t = 1..tmax grid units; an int = 1 bin per time unit; auto: see survival3d/time_grid.py
    auto_bins: int = 100  # loss.tmax=auto on a manifest: bins of the fitted grid
    auto_margin: float = 1.2  # ... spanning [0, auto_margin × max training time]
    reduction: str = "mean"  # mean | sum over the batch


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    min_lr: float = 0.0  # floor of the cosine decay
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    fused: bool = True  # fused AdamW on CUDA
    layer_decay: float = 1.0  # layer-wise lr decay: block i of n gets lr * layer_decay**(n - i); 1 = off


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA (always fp32 on CPU)
    compile: bool = False
    early_stop_metric: str = "val_loss"  # best.pt: validation loss (the C-index on a small validation set is noisy)
    early_stop_mode: str = "auto"  # auto (the metric's direction) | max | min
    patience: int = 0  # 0 = no early stopping (counted in validations)
    val_every: int = 1
    final: str = "last"  # model whose validation predictions go to final_metrics.json: last | best (chosen on validation: optimistic)
    heatmap: bool = True  # write the softmin p of a validation case with a lesion (PNG + NIfTI)
    ddp_find_unused: bool = False  # DistributedDataParallel(find_unused_parameters=...)
    overwrite: bool = False  # replace an existing runs/<name> (otherwise: error unless --resume)
    freeze_encoder_epochs: int = 0  # train only the head (and FiLM) for this many epochs first (with model.init)
    beta_warmup_epochs: int = 0  # softmin head: training uses r*beta, r rising linearly to 1 over these epochs (0 = off)
    beta_warmup_start: float = 0.0  # r in the first epoch (0 = a uniform map: every cubelet's time gets gradient)
    flip_consistency_weight: float = 0.0  # + w * mean (loc(x) - flip(loc(flip x)))^2 over valid cubelets (0 = off)


@dataclass
class CVConfig:
    folds: int = 1  # 1 = a single train/validation split; k > 1 = patient-level k-fold stratified by event
    seed: int = 0  # seed of the split (independent of train.seed)
    stratify: bool = True  # stratify by event
    group_column: Optional[str] = None  # manifest column with a patient id (scans of a patient stay together)
    fold: Optional[int] = None  # run only this fold (0-based) of a k-fold split


@dataclass
class LoggingConfig:
    wandb: bool = True
    wandb_mode: str = "offline"  # offline | online | disabled
    project: str = "survival3d"
    progress: bool = True  # tqdm bars
    log_every: int = 20  # steps between host syncs (progress bar loss, non-finite check)


@dataclass
class PretrainConfig:
    """``run.py pretrain``: the masked-cubelet autoencoder (``survival3d.models.pretrain``); the encoder is ``model.*``."""

    mask_ratio: float = 0.6  # fraction of each volume's cubelets hidden
    decoder_dim: int = 48
    decoder_depth: int = 1  # window-attention blocks of the decoder (0: per-cubelet MLP)
    decoder_heads: int = 3
    norm_target: bool = True  # targets normalised per cubelet (mean/std of its voxels)
    figure: bool = True  # reconstruction.png at the end


@dataclass
class ExperimentConfig:
    name: str = "default"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes saved with the run
