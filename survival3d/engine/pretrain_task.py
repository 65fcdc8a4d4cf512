"""Self-supervised pretraining of the survival encoder as a task on the one engine (``run.py pretrain``).

One run folder (``runs/<name>``)::

    config.yaml           resolved config
    splits.json           the train/validation ids (random, ``data.val_frac``; no labels needed)
    metrics.csv           per epoch: lr, train_loss, train_recon, train_vq, val_loss, val_recon,
                          codebook_usage, perplexity (VQ only; counted over the epoch's training batches)
    checkpoints/last.pt   every epoch: ``model`` = the autoencoder's state dict (``embed.*``/``transformer.*``/
                          ``quantizer.*`` load into the survival model with ``train model.init=<run>``)
    checkpoints/best.pt   lowest validation reconstruction loss
    final_metrics.json    val_loss, val_recon, codebook_usage, perplexity, epochs, time, volumes_per_s
    reconstruction.png    original / masked / reconstructed middle slices of a validation volume

The cases are images only (:func:`survival3d.data.unlabelled.image_cases`): a dummy level or a manifest with
``id,image``; the survival pipeline's datasets (cached transforms, seeded per-epoch augmentation) serve them.
Validation masks are drawn from a generator seeded by ``train.seed``, so every epoch's validation loss is measured on
the same masks. Everything else — optimiser, schedule, AMP, clipping, checkpoints, exact resume, DDP, logging — is
the engine's.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from survival3d.build import build_pretrain_model
from survival3d.config import save_config
from survival3d.data.covariates import CovariateEncoder
from survival3d.data.datasets import build_dataset, collate_cases
from survival3d.data.unlabelled import image_cases, split_unlabelled
from survival3d.engine.distributed import DistInfo, all_reduce_sum, init_distributed
from survival3d.engine.loop import Engine, EngineSettings, Task
from survival3d.engine.survival_task import make_loaders
from survival3d.errors import ConfigError, InputError
from survival3d.io import atomic_path, write_json
from survival3d.models.blocks.vq import usage_stats
from survival3d.models.pretrain import random_cubelet_mask
from survival3d.runtime import autocast

__all__ = ["PretrainTask", "run_pretraining", "PRETRAIN_COLUMNS", "reconstruction_figure"]

log = logging.getLogger(__name__)

PRETRAIN_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_recon", "train_vq", "data_wait_frac", "epoch_time_s",
                    "val_loss", "val_recon", "codebook_usage", "perplexity")


class _Step(torch.nn.Module):
    """The autoencoder called under autocast (one module, so DDP wraps the whole forward)."""

    def __init__(self, model: torch.nn.Module, amp: bool):
        super().__init__()
        self.model = model
        self.amp = amp

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None):
        with autocast(image.device, self.amp):
            return self.model(image, mask)


def pretrain_settings(cfg, run_dir: Path) -> EngineSettings:
    """Engine settings of a pretraining config (the survival task's, monitoring ``val_loss``)."""
    from survival3d.engine.survival_task import engine_settings

    s = engine_settings(cfg, run_dir)
    s.monitor, s.mode, s.patience, s.metrics_columns = "val_loss", "min", int(cfg.train.patience), PRETRAIN_COLUMNS
    return s


class PretrainTask(Task):
    """The masked-cubelet autoencoder on unlabelled images (see the module docstring).

    Args:
        cfg: the experiment config (``model`` = encoder, ``pretrain`` = masking and decoder, ``data``, ``optim``...).
        cases: images (:func:`~survival3d.data.unlabelled.image_cases`).
        split: ``{"train": ids, "val": ids}``.
    """

    def __init__(self, cfg, cases, split: dict[str, list[str]]):
        self.cfg, self.cases = cfg, cases
        self.split = {k: [str(i) for i in split[k]] for k in ("train", "val")}
        if not self.split["train"] or not self.split["val"]:
            raise ConfigError(f"empty split: {len(self.split['train'])} training and {len(self.split['val'])} validation cases.")
        self.volumes = 0
        self.train_seconds = 0.0

    def setup(self, engine: Engine, state: dict[str, Any] | None) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.device = engine.device
        self.amp = bool(t.amp) and self.device.type == "cuda"
        if state is not None and state.get("split") != self.split:
            raise InputError("the checkpoint was pretrained on a different train/validation split than this run's splits.json.",
                             path=engine.ckpt_dir / "last.pt", field="split")
        if state is not None:
            self.volumes, self.train_seconds = int(state.get("volumes_seen", 0)), float(state.get("train_seconds", 0.0))
        enc = CovariateEncoder()  # no covariates: the datasets' encoder slot is empty
        self.train_ds = build_dataset(self.cases, self.split["train"], enc, cfg.data, train=True, seed=int(t.seed))
        self.val_ds = build_dataset(self.cases, self.split["val"], enc, cfg.data, train=False)
        self.model = build_pretrain_model(cfg).to(self.device)
        self.module = _Step(torch.compile(self.model) if t.compile else self.model, self.amp)
        self.train_sampler, self.train_loader, self.val_loader = make_loaders(
            self.train_ds, self.val_ds, cfg.data, seed=int(t.seed), dist=engine.dist, device=self.device)

    def param_groups(self, engine: Engine) -> list:
        from survival3d.engine.optim import decay_groups

        return decay_groups(list(self.model.parameters()), float(self.cfg.optim.weight_decay))

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "pretrain", "config": OmegaConf.to_container(self.cfg, resolve=True), "split": self.split,
                "volumes_seen": self.volumes, "train_seconds": self.train_seconds}

    def weights(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def load_weights(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])

    def on_epoch_start(self, engine: Engine, epoch: int) -> None:
        self.train_ds.set_epoch(epoch)
        if self.model.quantizer is not None:
            self.model.quantizer.reset_usage()

    def training_step(self, module: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        out = module(batch["image"])
        n = batch["image"].shape[0]
        return {"loss": out["loss"], "n": n, "recon": out["recon"].detach().double() * n,
                "vq": out["vq"].detach().double() * n}

    def on_epoch_end(self, engine: Engine, epoch: int, row: dict[str, Any]) -> None:
        self.volumes += len(self.train_ds)
        self.train_seconds += float(row.get("epoch_time_s") or 0.0)

    @torch.no_grad()
    def validate(self, engine: Engine, epoch: int | None = None) -> dict[str, float]:
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(int(self.cfg.train.seed) + 1)  # same masks every epoch
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        for batch in self.val_loader:
            image = batch["image"].to(self.device)
            valid = self.model.embed.valid_mask(tuple(image.shape[2:]), device=self.device)
            mask = random_cubelet_mask(image.shape[0], valid, self.model.mask_ratio, generator=gen)
            with autocast(self.device, self.amp):
                out = self.model(image, mask)
            n = image.shape[0]
            sums += torch.stack([out["loss"].double() * n, out["recon"].double() * n, torch.tensor(float(n), dtype=torch.float64, device=self.device)])
        all_reduce_sum(sums, engine.dist)
        s = sums.cpu().numpy()
        metrics = {"val_loss": float(s[0] / s[2]), "val_recon": float(s[1] / s[2])}
        q = self.model.quantizer
        if q is not None:
            counts = q.counts.clone()
            all_reduce_sum(counts, engine.dist)
            metrics.update(usage_stats(counts))
        self.model.train()
        return metrics

    def finish(self, engine: Engine) -> dict[str, Any]:
        used = engine.use_final_weights(self.cfg.train.final)
        metrics = self.validate(engine)
        if self.model.quantizer is not None and engine.last_metrics.get("codebook_usage") is not None:
            metrics.update({k: engine.last_metrics[k] for k in ("codebook_usage", "perplexity")})
        final = {**metrics, "epochs": engine.epoch, "best_epoch": engine.best_epoch, "checkpoint": used,
                 "time": round(engine.elapsed, 2), "n_train": len(self.split["train"]), "n_val": len(self.split["val"]),
                 "volumes_per_s": (self.volumes / self.train_seconds) if self.train_seconds > 0 else None,
                 "device": str(self.device), "world_size": engine.dist.world_size}
        if engine.dist.is_main:
            if self.cfg.pretrain.figure:
                final["figure"] = str(reconstruction_figure(self.model, self.val_ds, engine.run_dir / "reconstruction.png",
                                                            seed=int(self.cfg.train.seed), device=self.device))
            write_json(engine.run_dir / "final_metrics.json",
                       {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in final.items()})
        return final


@torch.no_grad()
def reconstruction_figure(model, dataset, path: Path, *, seed: int = 0, device="cpu", index: int = 0) -> Path:
    """PNG of the middle axial slice of validation volume ``index``: original, masked input, reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    was_training = model.training
    model.eval()
    image = collate_cases([dataset[index]])["image"].to(device)
    valid = model.embed.valid_mask(tuple(image.shape[2:]), device=image.device)
    gen = torch.Generator(device=image.device).manual_seed(seed + 1)
    mask = random_cubelet_mask(1, valid, model.mask_ratio, generator=gen)
    recon = model.reconstruct(image, mask).float().cpu().numpy()[0, 0]
    vox = model.voxel_mask(mask, image.shape[2:]).cpu().numpy()[0, 0]
    orig = image.float().cpu().numpy()[0, 0]
    model.train(was_training)
    z = orig.shape[2] // 2
    masked = np.where(vox, np.nan, orig)
    err = float(np.sqrt(np.mean((recon[vox] - orig[vox]) ** 2))) if vox.any() else float("nan")
    lo, hi = float(orig.min()), float(orig.max())
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    cmap = plt.get_cmap("gray").copy()
    cmap.set_bad("tab:blue")  # hidden cubelets
    panels = [("original", orig), (f"masked input (blue: {100 * model.mask_ratio:.0f}% of cubelets hidden)", masked),
              (f"reconstruction (RMSE on masked voxels {err:.3f})", recon)]
    for ax, (title, vol) in zip(axes, panels):
        im = ax.imshow(vol[:, :, z].T, origin="lower", cmap=cmap, vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x (voxel)")
        ax.set_ylabel("y (voxel)")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="intensity (windowed, 0-1)")
    fig.suptitle(f"masked-cubelet autoencoder: validation case {dataset.ids[index]}, slice z={z}")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def _prepare_run_dir(cfg, resume: bool, info: DistInfo) -> Path:
    run_dir = Path(cfg.out_dir) / cfg.name
    if info.is_main:
        if run_dir.exists() and any(run_dir.iterdir()) and not resume:
            if not cfg.train.overwrite:
                raise ConfigError(f"run folder {run_dir} already exists: continue it with --resume {run_dir}, "
                                  f"pick another name=..., or pass train.overwrite=true.")
            if not (run_dir / "config.yaml").is_file():
                raise ConfigError(f"train.overwrite=true but {run_dir} is not a run folder (no config.yaml); refusing to delete it.")
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run_pretraining(cfg, *, resume: bool = False, dist: DistInfo | None = None, callbacks=()) -> dict[str, Any]:
    """Pretrain the encoder of ``cfg`` into ``<out_dir>/<name>``; returns the final metrics."""
    info = dist or init_distributed(cfg.train.device)
    run_dir = _prepare_run_dir(cfg, resume, info)
    cases = image_cases(cfg.data)
    split = split_unlabelled(cases.ids, float(cfg.data.val_frac), int(cfg.cv.seed))
    path = run_dir / "splits.json"
    if resume and path.is_file() and json.loads(path.read_text())["splits"] != [split]:
        raise InputError("the data settings now give a different split than the run was started with; resume with "
                         "the original config.", path=path, field="splits")
    if info.is_main:
        save_config(cfg, run_dir / "config.yaml")
        write_json(path, {"seed": int(cfg.cv.seed), "splits": [split]})
    task = PretrainTask(cfg, cases, split)
    return Engine(task, pretrain_settings(cfg, run_dir), run_dir, dist=info, callbacks=callbacks).fit(resume)
