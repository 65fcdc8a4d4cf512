"""The 3D survival model as a task on the one engine (:mod:`survival3d.engine.loop`): one train/validation split.

One split owns one run folder (``runs/<name>`` or ``runs/<name>/fold{k}``)::

    config.yaml           resolved config (written by the experiment)
    .lock                 held (flock) by the train process while it runs (docs/reliability.md)
    metrics.csv           one row per epoch: lr, train loss, data-wait fraction, validation metrics
    checkpoints/last.pt   every epoch (atomic): model, loss, optimiser, scheduler, RNG states, encoder, split, time_grid...
    checkpoints/best.pt   the epoch with the best ``train.early_stop_metric``
    predictions.csv       id,time,event,pred_time,risk[,expected_time] of the final model on validation (times in
                          the data's unit)
    covariate_effects.csv the learned covariate term on log-time (``model.covariate_aft``; :func:`covariate_effects`)
    final_metrics.json    c_index, mae_uncensored, mae_censored, val_loss[, c_index_oracle], epochs, time, time_unit,
                          time_grid...
    heatmap/              softmin p of a validation case with a lesion (``explain.callbacks.HeatmapCallback``,
                          added by ``run.py train``; ``train.heatmap``)
    wandb/                offline wandb run (``logging.wandb``)

The task fits the covariate encoder and the time grid (:mod:`survival3d.time_grid`: the model and loss work in grid
units, times are mapped in and predictions out) on the training split, builds the datasets, loaders, model and loss (through
:class:`~survival3d.engine.components.Components`), and defines the step (the censoring-aware loss of the model's
output) and the validation (predictions gathered from every rank →
:func:`~survival3d.metrics.validation.validation_metrics`). Everything else —
AdamW with warm-up + cosine, clipping, bf16 on CUDA, checkpoints, exact resume, early stopping, DDP, logging — is the
engine's. Augmentation is seeded per (epoch, case), so ``--resume`` after a crash continues exactly as the
uninterrupted run would have (on CPU; GPU kernels may be non-deterministic unless ``train.deterministic``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from survival3d.data.covariates import CovariateEncoder
from survival3d.data.datasets import Cases, build_dataset, collate_cases
from survival3d.time_grid import TimeGrid, fit_time_grid, resolved_config
from survival3d.engine.components import Components
from survival3d.engine.finetune import check_finetune_config, init_encoder, layer_decay_groups, set_encoder_trainable
from survival3d.engine.distributed import DistInfo, ShardSampler, all_gather_objects
from survival3d.engine.inference import DIAGNOSTIC_SUMS, forward, predict_arrays, predictions_frame
from survival3d.engine.loop import Engine, EngineSettings, Task
from survival3d.errors import ConfigError, InputError
from survival3d.io import write_csv, write_json
from survival3d.losses.functional import flip_consistency
from survival3d.metrics.validation import METRIC_MODES, validation_metrics
from survival3d.registry import did_you_mean
from survival3d.runtime import autocast

__all__ = ["SurvivalTask", "train_split", "METRICS_COLUMNS", "covariate_effects"]

log = logging.getLogger(__name__)

METRICS_COLUMNS = (
    "epoch", "step", "lr", "train_loss", "train_nll", "data_wait_frac", "epoch_time_s",
    "val_loss", "c_index", "c_index_oracle", "mae_uncensored", "mae_censored",
    # diagnostics (docs/training.md): the head's parameters, then the validation maps (survival_task.diagnostics)
    "beta", "loc_bias", "var", "p_entropy", "p_max", "loc_sd", "p_lesion", "p_distractor",
    "p_lesion_chance", "p_distractor_chance", "pointing",
)


def diagnostics(model: torch.nn.Module, loss_fn: torch.nn.Module, sums: dict[str, float]) -> dict[str, float]:
    """The per-epoch diagnostics columns: the head's ``beta`` and ``loc_bias``, the loss's ``var`` (only when it is
    learned), and the means over validation cases of
    :func:`~survival3d.engine.inference.output_diagnostics` (``sums``; NaN where no case counted)."""
    out: dict[str, float] = {}
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "beta"):
        out["beta"] = float(head.beta.detach())
    if head is not None and hasattr(head, "loc_bias"):
        out["loc_bias"] = float(head.loc_bias.detach())
    if getattr(loss_fn, "learn_var", False):
        out["var"] = float(loss_fn.variance)
    for name in DIAGNOSTIC_SUMS:
        if name in sums:
            n = sums.get(f"n_{name}", 0.0)
            out[name] = sums[name] / n if n > 0 else float("nan")
    return out


def covariate_effects(shift: torch.nn.Module, encoder: CovariateEncoder):
    """The learned covariate term on log-time (``model.covariate_aft``) as a table a person can read.

    One row per numeric column per unit and per training-split standard deviation (the coefficient divided by, and
    as learned on, the standardised column), and one row per known level of each categorical column against its first
    level (sorted; the 'unknown' slot is left out). ``time_ratio = exp(log_time_coef)``: the factor on the predicted
    time, > 1 longer survival.

    Returns:
        a DataFrame with columns ``covariate``, ``term``, ``log_time_coef``, ``time_ratio``.
    """
    import pandas as pd

    rows = []
    if shift.numeric is not None:
        w = shift.numeric.weight.detach().double().cpu().numpy()[0]
        for j, col in enumerate(encoder.numeric):
            sd = float(encoder.std[j])
            rows += [(col, "per unit", w[j] / sd), (col, f"per sd ({sd:.4g})", w[j])]
    for j, col in enumerate(encoder.categorical):
        c = shift.levels[j].weight.detach().double().cpu().numpy()[:, 0]
        levels = encoder.levels[j]
        rows += [(col, f"{lv} vs {levels[0]}", c[i + 1] - c[1]) for i, lv in enumerate(levels) if i > 0]
    frame = pd.DataFrame(rows, columns=["covariate", "term", "log_time_coef"])
    frame["time_ratio"] = np.exp(frame["log_time_coef"].to_numpy(dtype=np.float64))
    return frame


class _ModelAndLoss(torch.nn.Module):
    """Model + loss in one module, so DDP synchronises the loss's parameters (e.g. a learnable variance) too."""

    def __init__(self, model: torch.nn.Module, loss_fn: torch.nn.Module, amp: bool, time_grid: TimeGrid | None = None,
                 flip_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.amp = amp
        self.time_grid = time_grid
        self.flip_weight = float(flip_weight)

    def forward(self, batch: dict[str, Any]):
        out = forward(self.model, batch, amp=self.amp)
        time = batch["time"] if self.time_grid is None else self.time_grid.to_grid(batch["time"])
        with autocast(batch["image"].device, self.amp):
            losses = self.loss_fn(out, time, batch["event"])
        if self.flip_weight > 0 and out.loc is not None:
            losses = {**losses, "loss": losses["loss"] + self.flip_weight * self._flip_term(batch, out)}
        return losses

    def _flip_term(self, batch: dict[str, Any], out) -> torch.Tensor:
        """``train.flip_consistency_weight``: a second pass on the batch flipped along a random non-empty set of
        spatial axes (drawn from torch's global generator, so runs and resumes repeat), compared cubelet by cubelet
        with the first (:func:`~survival3d.losses.functional.flip_consistency`)."""
        code = int(torch.randint(1, 8, ()))
        dims = [2 + a for a in range(3) if code >> a & 1]
        flipped = {**batch, "image": batch["image"].flip(dims)}
        if torch.is_tensor(batch.get("lung_mask")):
            flipped["lung_mask"] = batch["lung_mask"].flip(dims)
        out_f = forward(self.model, flipped, amp=self.amp)
        return flip_consistency(out.loc, out_f.loc, out.valid, dims)


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def check_train_config(cfg) -> None:
    """One-line errors for ``train.*`` values the survival task cannot use."""
    t = cfg.train
    if t.early_stop_metric not in METRIC_MODES:
        raise ConfigError(f"train.early_stop_metric '{t.early_stop_metric}' is not a validation metric."
                          f"{did_you_mean(t.early_stop_metric, METRIC_MODES)} Valid: {', '.join(METRIC_MODES)}.")
    if t.early_stop_mode not in ("auto", "max", "min"):
        raise ConfigError(f"train.early_stop_mode must be 'auto', 'max' or 'min', got '{t.early_stop_mode}'.")
    if t.final not in ("best", "last"):
        raise ConfigError(f"train.final must be 'best' or 'last', got '{t.final}'.")
    for key, val, lo in (("train.epochs", t.epochs, 1), ("train.val_every", t.val_every, 1),
                         ("data.batch_size", cfg.data.batch_size, 1), ("logging.log_every", cfg.logging.log_every, 1)):
        if int(val) < lo:
            raise ConfigError(f"{key} must be >= {lo}, got {val}.")
    if int(t.beta_warmup_epochs) < 0:
        raise ConfigError(f"train.beta_warmup_epochs must be >= 0, got {t.beta_warmup_epochs}.")
    if not 0.0 <= float(t.beta_warmup_start) <= 1.0:
        raise ConfigError(f"train.beta_warmup_start must be in [0, 1], got {t.beta_warmup_start}.")
    w = float(t.flip_consistency_weight)
    if not (math.isfinite(w) and w >= 0):
        raise ConfigError(f"train.flip_consistency_weight must be a finite number >= 0, got {t.flip_consistency_weight}.")
    ps = int(cfg.model.patch_size)
    if w > 0 and any(int(s) % ps for s in (cfg.data.image_size or [])):
        raise ConfigError(f"train.flip_consistency_weight needs data.image_size {list(cfg.data.image_size)} to be a "
                          f"multiple of model.patch_size {ps} in every dimension (else cubelets do not flip with the image).")


def beta_warmup_factor(epoch: int, warmup_epochs: int, start: float) -> float:
    """The β warm-up factor r of 0-based ``epoch``: ``start`` in epoch 0, rising linearly to 1 at epoch
    ``warmup_epochs`` (1 throughout when ``warmup_epochs`` is 0). A function of the epoch alone, so resume is exact."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return 1.0
    return start + (1.0 - start) * epoch / warmup_epochs


def make_loaders(train_ds, val_ds, data_cfg, *, seed: int, dist: DistInfo, device: torch.device):
    """``(train_sampler, train_loader, val_loader)`` of a 3D task: the training cases shuffled and sharded over the
    ranks (``DistributedSampler``, seeded; the engine sets its epoch), the validation cases sharded in order; MONAI's
    ``ThreadDataLoader`` when ``data.loader`` is ``thread`` (``auto``: when the cache lives on the GPU), else torch's
    ``DataLoader`` (pinned memory when feeding a GPU from a CPU cache)."""
    loader_kind = data_cfg.loader
    if loader_kind == "auto":
        loader_kind = "thread" if data_cfg.cache_device != "cpu" else "torch"
    if loader_kind not in ("torch", "thread"):
        raise ConfigError(f"data.loader must be auto, torch or thread, got '{data_cfg.loader}'.")
    from torch.utils.data import DataLoader, DistributedSampler

    train_sampler = DistributedSampler(train_ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                       seed=int(seed), drop_last=False)
    val_sampler = ShardSampler(len(val_ds), dist)
    workers = int(data_cfg.num_workers)
    common = dict(batch_size=int(data_cfg.batch_size), collate_fn=collate_cases)
    if loader_kind == "thread":
        from monai.data import ThreadDataLoader

        return (train_sampler, ThreadDataLoader(train_ds, sampler=train_sampler, num_workers=workers, **common),
                ThreadDataLoader(val_ds, sampler=val_sampler, num_workers=workers, **common))
    pin = device.type == "cuda" and data_cfg.cache_device == "cpu"
    extra = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    return (train_sampler, DataLoader(train_ds, sampler=train_sampler, **common, **extra),
            DataLoader(val_ds, sampler=val_sampler, **common, **extra))


def engine_settings(cfg, run_dir: Path) -> EngineSettings:
    """The engine's settings for a survival experiment config."""
    t, o, lg = cfg.train, cfg.optim, cfg.logging
    wandb = None
    if lg.wandb and lg.wandb_mode != "disabled":
        wandb = {"mode": lg.wandb_mode, "project": lg.project,
                 "name": f"{cfg.name}{'' if run_dir.name == cfg.name else '/' + run_dir.name}",
                 "config": OmegaConf.to_container(cfg, resolve=True)}
    return EngineSettings(
        epochs=int(t.epochs), seed=int(t.seed), deterministic=bool(t.deterministic), device=t.device,
        optimizer={"name": "adamw", "lr": float(o.lr), "betas": tuple(o.betas), "eps": float(o.eps), "fused": bool(o.fused)},
        scheduler={"name": "warmup_cosine", "min_lr": float(o.min_lr)}, warmup_epochs=float(o.warmup_epochs),
        grad_clip=float(o.grad_clip), val_every=int(t.val_every), monitor=t.early_stop_metric,
        mode=METRIC_MODES[t.early_stop_metric] if t.early_stop_mode == "auto" else t.early_stop_mode,
        patience=int(t.patience), metrics_columns=METRICS_COLUMNS, log_every=int(lg.log_every),
        progress=bool(lg.progress), wandb=wandb)


class SurvivalTask(Task):
    """Train and validate a survival model on one split.

    Args:
        cfg: the experiment config (``survival3d.config.schema.ExperimentConfig``).
        cases: all cases of the experiment.
        split: ``{"train": ids, "val": ids}``.
        components: model/loss factories (default: the project's).
    """

    def __init__(self, cfg, cases: Cases, split: dict[str, list[str]], *, components: Components | None = None):
        self.cfg = cfg
        self.cases = cases
        self.split = {"train": [str(i) for i in split["train"]], "val": [str(i) for i in split["val"]]}
        self.components = components or Components()
        check_train_config(cfg)
        check_finetune_config(cfg)
        # a frozen-encoder warm-up leaves the encoder without gradients: DDP must know
        self.ddp_find_unused = bool(cfg.train.ddp_find_unused) or int(cfg.train.freeze_encoder_epochs) > 0
        from survival3d.data.plan import cases_plan

        self.plan = cases_plan(cases.records, source=cases.source)  # the preprocessing predict must apply
        if not self.split["train"] or not self.split["val"]:
            raise ConfigError(f"empty split: {len(self.split['train'])} training and {len(self.split['val'])} validation cases.")

    # ------------------------------------------------------------------ set-up
    def setup(self, engine: Engine, state: dict[str, Any] | None) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.device = engine.device
        self.amp = bool(t.amp) and self.device.type == "cuda"
        if state is not None and state.get("split") != self.split:
            raise InputError("the checkpoint was trained on a different train/validation split than this run's splits.json.",
                             path=engine.ckpt_dir / "last.pt", field="split")
        train_records = self.cases.subset(self.split["train"])
        if state is not None:
            self.encoder = CovariateEncoder.from_state(state["covariate_encoder"])
        else:
            self.encoder = CovariateEncoder(list(cfg.data.covariates.numeric), list(cfg.data.covariates.categorical))
            self.encoder.fit(train_records, source=self.cases.source)
        if state is not None and state.get("time_grid"):
            self.time_grid = TimeGrid.from_state(state["time_grid"])
        else:  # the time grid is a property of the training data (loss.tmax=auto), like the covariate encoder
            self.time_grid = fit_time_grid(cfg, [r["time"] for r in train_records])
        if engine.dist.is_main:
            log.info("%s", self.time_grid.describe())
            self.time_grid.check([r["time"] for r in train_records], [r["event"] for r in train_records],
                                 what="training", source=self.cases.source)
            val_records = self.cases.subset(self.split["val"])
            self.time_grid.check([r["time"] for r in val_records], [r["event"] for r in val_records],
                                 what="validation", source=self.cases.source)
        self.train_ds = build_dataset(self.cases, self.split["train"], self.encoder, cfg.data, train=True, seed=int(t.seed))
        self.val_ds = build_dataset(self.cases, self.split["val"], self.encoder, cfg.data, train=False)

        grid_cfg = resolved_config(cfg, self.time_grid)  # auto time settings → grid-unit numbers
        self.model = self.components.model(grid_cfg, self.encoder.spec).to(self.device)
        if int(t.beta_warmup_epochs) > 0 and not hasattr(getattr(self.model, "head", None), "set_beta_scale"):
            raise ConfigError(f"train.beta_warmup_epochs={t.beta_warmup_epochs} needs a head with a softmin β; "
                              f"head.name={cfg.head.name!r} has none.")
        if state is None and cfg.model.init:  # on resume the checkpoint holds the (fine-tuned) weights
            init_encoder(self.model, cfg.model.init)
        self.loss_fn = self.components.loss(grid_cfg.loss).to(self.device)
        step_model = torch.compile(self.model) if t.compile else self.model
        self.module = _ModelAndLoss(step_model, self.loss_fn, self.amp, self.time_grid,
                                    flip_weight=float(t.flip_consistency_weight))
        self.train_sampler, self.train_loader, self.val_loader = make_loaders(
            self.train_ds, self.val_ds, cfg.data, seed=int(t.seed), dist=engine.dist, device=self.device)

    def param_groups(self, engine: Engine) -> list:
        from survival3d.engine.optim import decay_groups

        o = self.cfg.optim
        if float(o.layer_decay) < 1.0:
            named = list(self.model.named_parameters()) + [(f"loss.{n}", p) for n, p in self.loss_fn.named_parameters()]
            return layer_decay_groups(named, depth=int(self.cfg.model.depth), lr=float(o.lr), decay=float(o.layer_decay),
                                      weight_decay=float(o.weight_decay))
        return decay_groups(list(self.model.parameters()) + list(self.loss_fn.parameters()), float(self.cfg.optim.weight_decay))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"covariate_encoder": self.encoder.state_dict(), "config": OmegaConf.to_container(self.cfg, resolve=True),
                "split": self.split, "time_grid": self.time_grid.state_dict(), "preprocessing": self.plan,
                "model_inputs": {"lung_mask": "lung_mask" in self.cases.mask_keys}}

    def weights(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "loss": self.loss_fn.state_dict()}

    def load_weights(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if state.get("loss"):
            self.loss_fn.load_state_dict(state["loss"])

    # ------------------------------------------------------------------ step and validation
    def on_epoch_start(self, engine: Engine, epoch: int) -> None:
        self.train_ds.set_epoch(epoch)
        frozen = int(self.cfg.train.freeze_encoder_epochs)
        if frozen > 0:
            set_encoder_trainable(self.model, epoch >= frozen)
        if int(self.cfg.train.beta_warmup_epochs) > 0:
            self.model.head.set_beta_scale(beta_warmup_factor(epoch, int(self.cfg.train.beta_warmup_epochs),
                                                              float(self.cfg.train.beta_warmup_start)))

    def training_step(self, module: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        losses = module(batch)
        loss = losses["loss"]
        n = batch["image"].shape[0]
        return {"loss": loss, "n": n, "nll": losses.get("nll", loss).detach().double() * n}

    def validate(self, engine: Engine, epoch: int | None = None) -> dict[str, float]:
        return self.validation_arrays(engine)[0]

    def validation_arrays(self, engine: Engine) -> tuple[dict[str, float], dict[str, Any]]:
        """Metrics over the whole validation set (predictions gathered from every rank) and the prediction arrays."""
        local = predict_arrays(self.model, self.val_loader, self.device, amp=self.amp, loss_fn=self.loss_fn,
                               time_grid=self.time_grid, diagnostics=True)
        parts = all_gather_objects(local, engine.dist)
        sums: dict[str, float] = {}
        for part in parts:
            for k, v in part.get("diag", {}).items():
                sums[k] = sums.get(k, 0.0) + v
        arrays: dict[str, Any] = {"id": [i for p in parts for i in p["id"]]}
        for key in ("time", "event", "pred_time", "risk", "expected_time"):
            if all(key in p for p in parts):
                arrays[key] = np.concatenate([p[key] for p in parts])
        arrays["loss_sum"] = sum(p["loss_sum"] for p in parts)
        arrays["n"] = sum(p["n"] for p in parts)
        order = {cid: k for k, cid in enumerate(self.split["val"])}
        perm = np.argsort([order[c] for c in arrays["id"]], kind="stable")
        arrays["id"] = [arrays["id"][k] for k in perm]
        for key in ("time", "event", "pred_time", "risk", "expected_time"):
            if key in arrays:
                arrays[key] = arrays[key][perm]
        return {**validation_metrics(arrays), **diagnostics(self.model, self.loss_fn, sums)}, arrays

    # ------------------------------------------------------------------ outputs
    def finish(self, engine: Engine) -> dict[str, Any]:
        """Validate the final model (``train.final``), write predictions and metrics (and the heatmap)."""
        t = self.cfg.train
        used = engine.use_final_weights(t.final)
        metrics, arrays = self.validation_arrays(engine)
        final = {**metrics, "epochs": engine.epoch, "best_epoch": engine.best_epoch, "checkpoint": used,
                 "early_stop_metric": t.early_stop_metric, "stopped_early": engine.stopped_early,
                 "time": round(engine.elapsed, 2), "n_train": len(self.split["train"]), "n_val": len(self.split["val"]),
                 "device": str(self.device), "world_size": engine.dist.world_size,
                 "time_unit": self.time_grid.unit, "time_grid": self.time_grid.state_dict()}
        if engine.dist.is_main:
            run_dir = engine.run_dir
            write_csv(run_dir / "predictions.csv", predictions_frame(arrays))  # full precision: the C-index recomputes
            if getattr(self.model, "covariate_shift", None) is not None:
                write_csv(run_dir / "covariate_effects.csv", covariate_effects(self.model.covariate_shift, self.encoder))
            final.update(engine.collect("on_final_model"))  # e.g. the closing heatmap (explain.HeatmapCallback)
            write_json(run_dir / "final_metrics.json", _json_safe(final))
        return final


def train_split(cfg, run_dir: str | Path, cases: Cases, split: dict[str, list[str]], *, components: Components | None = None,
                dist: DistInfo | None = None, callbacks: Sequence[Any] = (), resume: bool = False) -> dict[str, Any]:
    """Train one split of an experiment into ``run_dir`` on the engine; returns the final metrics."""
    run_dir = Path(run_dir)
    task = SurvivalTask(cfg, cases, split, components=components)
    return Engine(task, engine_settings(cfg, run_dir), run_dir, dist=dist, callbacks=callbacks).fit(resume)
