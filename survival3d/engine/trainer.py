"""Training of one train/validation split: optimisation, validation, checkpoints, logging, resumption.

One :class:`Trainer` owns one run folder (``runs/<name>`` or ``runs/<name>/fold{k}``)::

    config.yaml           resolved config (written by the experiment)
    metrics.csv           one row per epoch: lr, train loss, data-wait fraction, validation metrics
    checkpoints/last.pt   every epoch (atomic): model, loss, optimiser, scheduler, RNG states, encoder, split...
    checkpoints/best.pt   the epoch with the best ``train.early_stop_metric``
    predictions.csv       id,time,event,pred_time,risk[,expected_time] of the final model on validation
    final_metrics.json    c_index, mae_uncensored, mae_censored, val_loss[, c_index_oracle], epochs, time...
    heatmap/              softmin p of a validation case with a lesion (PNG + NIfTI on the source affine)
    wandb/                offline wandb run (``logging.wandb``)

Design points: AdamW (fused on CUDA; no weight decay on biases, norms and scalars), linear warm-up then cosine
decay per step, gradient clipping, bf16 autocast on CUDA and fp32 on CPU. The step never waits for the host: losses
are accumulated on the device and read every ``logging.log_every`` steps (progress bar + non-finite check) and once
per epoch. The time spent waiting for the next batch is measured and logged as ``data_wait_frac``. Random streams
are seeded and saved with every checkpoint, and augmentation is seeded per (epoch, case), so ``--resume`` after a
crash continues exactly as the uninterrupted run would have (on CPU; GPU kernels may be non-deterministic unless
``train.deterministic``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from survival3d.data.covariates import CovariateEncoder
from survival3d.data.datasets import Cases, build_dataset, collate_cases
from survival3d.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from survival3d.engine.components import Components
from survival3d.engine.distributed import DistInfo, ShardSampler, all_gather_objects, all_reduce_sum, select_device
from survival3d.engine.inference import autocast, forward, predict_arrays, predictions_frame, to_device
from survival3d.engine.validation import METRIC_MODES, survival_metrics
from survival3d.errors import ConfigError, InputError
from survival3d.registry import did_you_mean

__all__ = ["Trainer", "NonFiniteLossError", "seed_everything", "warmup_cosine", "METRICS_COLUMNS"]

log = logging.getLogger(__name__)

METRICS_COLUMNS = (
    "epoch", "step", "lr", "train_loss", "train_nll", "data_wait_frac", "epoch_time_s",
    "val_loss", "c_index", "c_index_oracle", "mae_uncensored", "mae_censored",
)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped and kept its last good checkpoint."""

    exit_code = 3


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0):
    """LR multiplier per step: linear warm-up over ``warmup_steps`` (from 1/warmup to 1), then half a cosine from 1
    down to ``min_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class _Task(torch.nn.Module):
    """Model + loss in one module, so DDP synchronises the loss's parameters (e.g. a learnable variance) too."""

    def __init__(self, model: torch.nn.Module, loss_fn: torch.nn.Module, amp: bool):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.amp = amp

    def forward(self, batch: dict[str, Any]):
        out = forward(self.model, batch, amp=self.amp)
        with autocast(batch["image"].device, self.amp):
            losses = self.loss_fn(out, batch["time"], batch["event"])
        return losses


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


class Trainer:
    """Train and validate one split.

    Args:
        cfg: the experiment config (``survival3d.config.schema.ExperimentConfig``).
        run_dir: the folder of this split's outputs.
        cases: all cases of the experiment.
        split: ``{"train": ids, "val": ids}``.
        components: model/loss factories (default: the project's).
        dist: the process group position (single process by default).
        callbacks: objects with optional ``on_step_end(trainer, epoch, step)`` / ``on_epoch_end(trainer, epoch,
            row)`` hooks (e.g. to stop a run from a test).
    """

    def __init__(self, cfg, run_dir: str | Path, cases: Cases, split: dict[str, list[str]], *,
                 components: Components | None = None, dist: DistInfo | None = None, callbacks: Sequence[Any] = ()):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.cases = cases
        self.split = {"train": [str(i) for i in split["train"]], "val": [str(i) for i in split["val"]]}
        self.components = components or Components()
        self.dist = dist or DistInfo()
        self.callbacks = list(callbacks)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._check_config()

    # ------------------------------------------------------------------ set-up
    def _check_config(self) -> None:
        t = self.cfg.train
        if t.early_stop_metric not in METRIC_MODES:
            raise ConfigError(f"train.early_stop_metric '{t.early_stop_metric}' is not a validation metric."
                              f"{did_you_mean(t.early_stop_metric, METRIC_MODES)} Valid: {', '.join(METRIC_MODES)}.")
        if t.early_stop_mode not in ("max", "min"):
            raise ConfigError(f"train.early_stop_mode must be 'max' or 'min', got '{t.early_stop_mode}'.")
        if t.final not in ("best", "last"):
            raise ConfigError(f"train.final must be 'best' or 'last', got '{t.final}'.")
        for key, val, lo in (("train.epochs", t.epochs, 1), ("train.val_every", t.val_every, 1),
                             ("data.batch_size", self.cfg.data.batch_size, 1), ("logging.log_every", self.cfg.logging.log_every, 1)):
            if int(val) < lo:
                raise ConfigError(f"{key} must be >= {lo}, got {val}.")
        if not self.split["train"] or not self.split["val"]:
            raise ConfigError(f"empty split: {len(self.split['train'])} training and {len(self.split['val'])} validation cases.")

    def _setup(self, resume_state: dict | None) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.device = select_device(t.device, self.dist)
        self.amp = bool(t.amp) and self.device.type == "cuda"
        seed_everything(int(t.seed), bool(t.deterministic))

        train_records = self.cases.subset(self.split["train"])
        if resume_state is not None:
            self.encoder = CovariateEncoder.from_state(resume_state["covariate_encoder"])
        else:
            self.encoder = CovariateEncoder(list(cfg.data.covariates.numeric), list(cfg.data.covariates.categorical))
            self.encoder.fit(train_records, source=self.cases.source)
        self.train_ds = build_dataset(self.cases, self.split["train"], self.encoder, cfg.data, train=True, seed=int(t.seed))
        self.val_ds = build_dataset(self.cases, self.split["val"], self.encoder, cfg.data, train=False)

        self.model = self.components.model(cfg, self.encoder.spec).to(self.device)
        self.loss_fn = self.components.loss(cfg.loss).to(self.device)
        if t.compile:
            self.step_model = torch.compile(self.model)
        else:
            self.step_model = self.model
        self.task = _Task(self.step_model, self.loss_fn, self.amp)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.task = DDP(self.task, device_ids=ids, find_unused_parameters=bool(t.ddp_find_unused))

        self._make_loaders()
        steps = len(self.train_loader)
        self.total_steps = steps * int(t.epochs)
        o = cfg.optim
        params = [p for p in list(self.model.parameters()) + list(self.loss_fn.parameters()) if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": float(o.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
        fused = bool(o.fused) and self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=float(o.lr), betas=tuple(o.betas),
                                           eps=float(o.eps), fused=fused or None)
        min_ratio = float(o.min_lr) / float(o.lr) if float(o.lr) > 0 else 0.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(self.total_steps, int(round(float(o.warmup_epochs) * steps)), min_ratio))
        self.params = params

        self.epoch = 0  # next epoch to run
        self.step = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_validations = 0
        self.stopped_early = False
        self.elapsed = 0.0
        if resume_state is not None:
            self._restore(resume_state)

    def _make_loaders(self) -> None:
        cfg = self.cfg
        loader_kind = cfg.data.loader
        if loader_kind == "auto":
            loader_kind = "thread" if cfg.data.cache_device != "cpu" else "torch"
        if loader_kind not in ("torch", "thread"):
            raise ConfigError(f"data.loader must be auto, torch or thread, got '{cfg.data.loader}'.")
        from torch.utils.data import DataLoader, DistributedSampler

        self.train_sampler = DistributedSampler(self.train_ds, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                                shuffle=True, seed=int(cfg.train.seed), drop_last=False)
        val_sampler = ShardSampler(len(self.val_ds), self.dist)
        workers = int(cfg.data.num_workers)
        common = dict(batch_size=int(cfg.data.batch_size), collate_fn=collate_cases)
        if loader_kind == "thread":
            from monai.data import ThreadDataLoader

            self.train_loader = ThreadDataLoader(self.train_ds, sampler=self.train_sampler, num_workers=workers, **common)
            self.val_loader = ThreadDataLoader(self.val_ds, sampler=val_sampler, num_workers=workers, **common)
        else:
            pin = self.device.type == "cuda" and cfg.data.cache_device == "cpu"
            extra = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
            self.train_loader = DataLoader(self.train_ds, sampler=self.train_sampler, **common, **extra)
            self.val_loader = DataLoader(self.val_ds, sampler=val_sampler, **common, **extra)

    # ------------------------------------------------------------------ state
    def state(self, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            "covariate_encoder": self.encoder.state_dict(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "split": self.split,
            "early_stop": {"best": self.best, "best_epoch": self.best_epoch, "bad_validations": self.bad_validations,
                           "stopped": self.stopped_early},
            "elapsed": self.elapsed,
            "metrics": metrics or {},
            "world_size": self.dist.world_size,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("split") != self.split:
            raise InputError("the checkpoint was trained on a different train/validation split than this run's splits.json.",
                             path=self.ckpt_dir / "last.pt", field="split")
        self.model.load_state_dict(state["model"])
        if state.get("loss"):
            self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        es = state["early_stop"]
        self.best, self.best_epoch = es["best"], es["best_epoch"]
        self.bad_validations, self.stopped_early = int(es["bad_validations"]), bool(es["stopped"])
        self.elapsed = float(state.get("elapsed", 0.0))
        set_rng_state(state["rng"])
        log.info("resumed %s at epoch %d (step %d)", self.run_dir, self.epoch, self.step)

    # ------------------------------------------------------------------ logging
    def _init_logging(self) -> None:
        self.wandb_run = None
        if not self.dist.is_main:
            return
        lg = self.cfg.logging
        if lg.wandb and lg.wandb_mode != "disabled":
            os.environ["WANDB_DIR"] = str(self.run_dir)
            os.environ["WANDB_MODE"] = str(lg.wandb_mode)  # also for wandb's service process
            os.environ.setdefault("WANDB_SILENT", "true")
            try:
                import wandb

                id_file = self.run_dir / "wandb_id.txt"
                run_id = id_file.read_text().strip() if id_file.is_file() else None
                self.wandb_run = wandb.init(
                    project=lg.project, name=f"{self.cfg.name}{'' if self.run_dir.name == self.cfg.name else '/' + self.run_dir.name}",
                    dir=str(self.run_dir), mode=lg.wandb_mode, id=run_id, resume="allow" if run_id else None,
                    config=OmegaConf.to_container(self.cfg, resolve=True), reinit="finish_previous",
                )
                id_file.write_text(self.wandb_run.id)
            except Exception as e:  # wandb problems must never stop training
                log.warning("wandb disabled (%s: %s)", type(e).__name__, e)
                self.wandb_run = None

    def _csv_prepare(self) -> None:
        """Keep only rows up to the resumed epoch (a crash may have logged an epoch it never checkpointed)."""
        path = self.run_dir / "metrics.csv"
        if not path.is_file():
            return
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= self.epoch]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
            w.writeheader()
            w.writerows(rows)

    def _log_row(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        path = self.run_dir / "metrics.csv"
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
            if new:
                w.writeheader()
            w.writerow({k: ("" if row.get(k) is None or (isinstance(row.get(k), float) and math.isnan(row[k])) else row[k])
                        for k in METRICS_COLUMNS})
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if v is not None and k != "step"}, step=row["step"])

    def _progress(self, iterable, **kw):
        if not (self.cfg.logging.progress and self.dist.is_main):
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, dynamic_ncols=True, leave=False, **kw)

    # ------------------------------------------------------------------ loops
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.train_ds.set_epoch(epoch)
        self.train_sampler.set_epoch(epoch)
        self.task.train()
        dev = self.device
        acc = torch.zeros(2, device=dev, dtype=torch.float64)  # sum of loss*n, nll*n
        seen = 0
        nonfinite = torch.zeros((), device=dev, dtype=torch.bool)
        n_steps = len(self.train_loader)
        bar = self._progress(range(n_steps), desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}", unit="step")
        every = int(self.cfg.logging.log_every)
        clip = float(self.cfg.optim.grad_clip)
        wait = 0.0
        t_start = time.perf_counter()
        it = iter(self.train_loader)
        for i in bar:
            t0 = time.perf_counter()
            batch = next(it)
            batch = to_device(batch, dev)
            wait += time.perf_counter() - t0
            losses = self.task(batch)
            loss = losses["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            n = batch["image"].shape[0]
            seen += n  # host-side count: no host-to-device copy per step
            acc += torch.stack([loss.detach().double() * n, losses.get("nll", loss).detach().double() * n])
            nonfinite |= ~torch.isfinite(loss.detach())
            for cb in self.callbacks:
                if hasattr(cb, "on_step_end"):
                    cb.on_step_end(self, epoch, i)
            if (i + 1) % every == 0 or i + 1 == n_steps:
                flag = all_reduce_sum(nonfinite.to(torch.float32).clone(), self.dist)  # the only host syncs of the loop
                if bool(flag > 0):
                    self._fail_nonfinite(epoch, i)
                if bar is not None and hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{float(acc[0]) / max(seen, 1):.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
        totals = torch.cat([acc, torch.tensor([float(seen)], device=dev, dtype=torch.float64)])
        all_reduce_sum(totals, self.dist)
        a = totals.cpu().numpy()
        epoch_time = time.perf_counter() - t_start
        return {"train_loss": float(a[0] / a[2]), "train_nll": float(a[1] / a[2]),
                "data_wait_frac": wait / epoch_time if epoch_time > 0 else 0.0, "epoch_time_s": epoch_time}

    def _fail_nonfinite(self, epoch: int, i: int):
        last = self.ckpt_dir / "last.pt"
        kept = f"the last good checkpoint is {last} (end of epoch {self.epoch})" if last.is_file() else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"training loss became NaN/inf in epoch {epoch + 1} (by step {i + 1} of the epoch, global step {self.step}); "
            f"run stopped, {kept}. Try a lower optim.lr, optim.grad_clip, or check the data.")

    def validate(self) -> tuple[dict[str, float], dict[str, Any]]:
        """Metrics over the whole validation set (predictions gathered from every rank) and the prediction arrays."""
        local = predict_arrays(self.model, self.val_loader, self.device, amp=self.amp, loss_fn=self.loss_fn)
        parts = all_gather_objects(local, self.dist)
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
        return survival_metrics(arrays), arrays

    def _improved(self, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.cfg.train.early_stop_mode == "max" else value < self.best

    # ------------------------------------------------------------------ main
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train (or continue from ``checkpoints/last.pt`` when ``resume``), then write the final outputs."""
        resume_state = None
        last = self.ckpt_dir / "last.pt"
        if resume and last.is_file():
            resume_state = load_checkpoint(last)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._init_logging()  # before seeding: wandb must not shift the random streams
        self._setup(resume_state)
        if self.dist.is_main:
            self._csv_prepare()
        t = self.cfg.train
        epochs = int(t.epochs)
        log.info("%s: %d training / %d validation cases, %d steps per epoch, device %s%s", self.run_dir,
                 len(self.train_ds), len(self.val_ds), len(self.train_loader), self.device,
                 f", {self.dist.world_size} processes" if self.dist.enabled else "")
        try:
            while self.epoch < epochs and not self.stopped_early:
                t0 = time.perf_counter()
                epoch = self.epoch
                row: dict[str, Any] = {"epoch": epoch + 1, **self._train_epoch(epoch)}
                metrics: dict[str, float] = {}
                if (epoch + 1) % int(t.val_every) == 0 or epoch + 1 == epochs:
                    metrics, _ = self.validate()
                    row.update(metrics)
                row.update(step=self.step, lr=self.scheduler.get_last_lr()[0])
                self.epoch = epoch + 1
                improved = bool(metrics) and self._improved(metrics.get(t.early_stop_metric))
                if improved:
                    self.best, self.best_epoch, self.bad_validations = float(metrics[t.early_stop_metric]), self.epoch, 0
                    self._best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
                elif metrics:
                    self.bad_validations += 1
                    if int(t.patience) > 0 and self.bad_validations >= int(t.patience):
                        self.stopped_early = True
                        log.info("early stopping after epoch %d: %s did not improve for %d validations (best %.4f at epoch %s)",
                                 self.epoch, t.early_stop_metric, self.bad_validations, self.best or float("nan"), self.best_epoch)
                self.elapsed += time.perf_counter() - t0
                if self.dist.is_main:
                    self._log_row(row)
                    state = self.state(metrics)
                    save_checkpoint(last, **state)
                    if improved:
                        save_checkpoint(self.ckpt_dir / "best.pt", **state)
                log.info("epoch %d/%d  loss %.4f  %s  data-wait %.1f%%", self.epoch, epochs, row["train_loss"],
                         "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None and math.isfinite(v)),
                         100 * row["data_wait_frac"])
                for cb in self.callbacks:
                    if hasattr(cb, "on_epoch_end"):
                        cb.on_epoch_end(self, epoch, row)
            return self._finish()
        finally:
            if getattr(self, "wandb_run", None) is not None:
                self.wandb_run.finish()
                self.wandb_run = None

    def _finish(self) -> dict[str, Any]:
        """Validate the final model (``train.final``), write predictions, metrics and the heatmap."""
        t = self.cfg.train
        used = "last"
        best = self.ckpt_dir / "best.pt"
        if t.final == "best" and self.best_epoch is not None and self.best_epoch != self.epoch:
            weights = getattr(self, "_best_weights", None)
            if weights is None:  # resumed after the best epoch: read it back
                weights = load_checkpoint(best, map_location=self.device)["model"]
            self.model.load_state_dict(weights)
            used = "best"
        elif t.final == "best" and self.best_epoch == self.epoch:
            used = "best"
        metrics, arrays = self.validate()
        final = {**metrics, "epochs": self.epoch, "best_epoch": self.best_epoch, "checkpoint": used,
                 "early_stop_metric": t.early_stop_metric, "stopped_early": self.stopped_early,
                 "time": round(self.elapsed, 2), "n_train": len(self.split["train"]), "n_val": len(self.split["val"]),
                 "device": str(self.device), "world_size": self.dist.world_size}
        if self.dist.is_main:
            frame = predictions_frame(arrays)
            tmp = self.run_dir / ".predictions.csv.tmp"
            frame.to_csv(tmp, index=False)  # full precision: the C-index recomputed from the file is the same
            os.replace(tmp, self.run_dir / "predictions.csv")
            if t.heatmap:
                try:
                    info = self._heatmap()
                except Exception as e:  # a picture must not lose the run's results
                    log.warning("heatmap failed (%s: %s)", type(e).__name__, e)
                    info = None
                if info is not None:
                    final["heatmap"] = info["png"]
                    final["heatmap_nifti"] = info["nifti"]
                    final["p_on_lesion"] = info["p_on_lesion"]
            tmp = self.run_dir / ".final_metrics.json.tmp"
            tmp.write_text(json.dumps(_json_safe(final), indent=2))
            os.replace(tmp, self.run_dir / "final_metrics.json")
        return final

    def _heatmap(self):
        from survival3d.engine.heatmap import write_heatmap

        return write_heatmap(self.model, self.val_ds, self.run_dir / "heatmap", self.device, amp=self.amp)
