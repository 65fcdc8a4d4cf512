"""Train one FlexLayer network and evaluate it: validation accuracy, robust-accuracy curves, attack AUC, and the
per-layer FlexLayer diagnostics (conv ratio, binariness, homogeneity) after every epoch.

:func:`run_flex` writes into its output folder (each file atomically): ``config.yaml``, ``history.csv`` (one row per
epoch × FlexLayer), ``model.pt`` (state dict) and, last, ``result.json`` — whose presence marks the run finished.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from survival3d.engine.loop import Engine, EngineSettings, Task
from survival3d.runtime import autocast, resolve_device
from survival3d.io import atomic_path, atomic_write
from survival3d.config import save_config
from survival3d.errors import ConfigError
from survival3d.flex.attacks import ATTACKS, attack_auc, eps_grid, robust_accuracy_curve, surrogate_gradients
from survival3d.flex.data import FlexData, load_flex_data
from survival3d.flex.nets import FlexNet, InputAdapter, count_params, flex_layers, flex_stats, swap_maxpool

__all__ = ["build_network", "run_flex", "resolve_device", "write_json_atomic"]

log = logging.getLogger(__name__)

OPTIMIZER_NAMES = ("adam", "adamw", "sgd")


def _spec(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_network(model_cfg: DictConfig, data: FlexData) -> nn.Module:
    """FlexNet, or a torchvision classifier (``model.arch``) whose max-pool layers are swapped for FlexLayers."""
    logits, masking = _spec(model_cfg.logits), _spec(model_cfg.masking)
    if model_cfg.arch == "flexnet":
        return FlexNet(data.in_channels, data.num_classes, channels=list(model_cfg.channels),
                       convs_per_stage=model_cfg.convs_per_stage, kernel_size=model_cfg.kernel_size,
                       stride=model_cfg.stride, padding=model_cfg.padding, logits=logits, masking=masking,
                       pool_channels=model_cfg.pool_channels, mean=data.mean, std=data.std,
                       dropout=model_cfg.dropout)
    import torchvision

    if model_cfg.arch not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"model.arch '{model_cfg.arch}' is neither 'flexnet' nor a torchvision classifier.")
    net = torchvision.models.get_model(model_cfg.arch, weights=None, num_classes=data.num_classes)
    swapped = swap_maxpool(net, torch.zeros(2, 3, *data.image_size), logits=logits, masking=masking,
                           pool_channels=model_cfg.pool_channels)
    log.info("swapped %d max-pool layers of %s for FlexLayers: %s", len(swapped), model_cfg.arch, swapped)
    return nn.Sequential(InputAdapter(data.mean, data.std, repeat_to=3), net)


def write_json_atomic(obj: Any, path: Path) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2)


def _atomic(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(str(tmp))


def _to_device(loader: DataLoader, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.to(device), y.to(device)) for x, y in loader]


class FlexTask(Task):
    """A FlexLayer network as a task on the one engine: cross-entropy step; validation accuracy and the per-layer
    FlexLayer diagnostics of the epoch's training batches and of the validation pass."""

    def __init__(self, cfg: DictConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.history: list[dict[str, Any]] = []

    def setup(self, engine: Engine, state: dict[str, Any] | None) -> None:
        cfg = self.cfg
        self.device = engine.device
        self.amp = bool(cfg.train.amp)
        self.data = data = load_flex_data(cfg.data)
        self.module = build_network(cfg.model, data).to(self.device)
        self.out.mkdir(parents=True, exist_ok=True)  # only once the config has proved buildable
        save_config(cfg, self.out / "config.yaml")
        gen = torch.Generator().manual_seed(cfg.train.seed)
        self.train_loader = DataLoader(data.train, batch_size=cfg.data.batch_size, shuffle=True, generator=gen,
                                       num_workers=cfg.data.num_workers, drop_last=len(data.train) > cfg.data.batch_size)
        self.val_loader = DataLoader(data.val, batch_size=max(cfg.data.batch_size, 256), num_workers=cfg.data.num_workers)

    def training_step(self, module: nn.Module, batch) -> dict[str, Any]:
        x, y = batch
        with autocast(x.device, self.amp):
            loss = F.cross_entropy(module(x), y)
        return {"loss": loss, "n": len(y)}

    @torch.no_grad()
    def validate(self, engine: Engine, epoch: int) -> dict[str, float]:
        model, device = self.module, self.device
        train_stats = flex_stats(model)  # mean over the epoch's training batches
        model.eval()
        correct = torch.zeros((), device=device)
        for x, y in self.val_loader:
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(dim=1) == y).sum()
        val_stats = flex_stats(model)
        self.train_stats, self.val_stats = train_stats, val_stats
        return {"val_acc": correct.item() / len(self.data.val)}

    def on_epoch_end(self, engine: Engine, epoch: int, row: dict[str, Any]) -> None:
        train_loss, val_acc = row["train_loss"], row["val_acc"]
        for layer in self.val_stats:
            self.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_acc": val_acc, "layer": layer,
                                 **{f"train_{k}": v for k, v in self.train_stats[layer].items()},
                                 **{f"val_{k}": v for k, v in self.val_stats[layer].items()}})
        if not self.val_stats:
            self.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_acc": val_acc})

    def finish(self, engine: Engine) -> dict[str, Any]:
        cfg, a_cfg, model, data, device, out = self.cfg, self.cfg.attack, self.module, self.data, self.device, self.out
        train_time = engine.elapsed
        attacks = {name: ATTACKS.get(name) for name in a_cfg.methods}
        # robustness on (a prefix of) the validation set, model in eval mode (deterministic masks)
        t1 = time.perf_counter()
        model.eval()
        for _, layer in flex_layers(model):
            layer.track_stats = False
        n_eval = len(data.val) if a_cfg.n_eval is None else min(a_cfg.n_eval, len(data.val))
        eval_set = torch.utils.data.Subset(data.val, range(n_eval))
        batches = _to_device(DataLoader(eval_set, batch_size=max(cfg.data.batch_size, 256)), device)
        eps = eps_grid(a_cfg.eps_max, a_cfg.eps_steps)
        attack_kwargs = {"fgsm": {}, "pgd": {"steps": a_cfg.pgd_steps, "step_size": a_cfg.pgd_step_size,
                                             "random_start": a_cfg.random_start}}
        curves, aucs = {}, {}
        for name, fn in attacks.items():
            curves[name] = robust_accuracy_curve(model, batches, eps, fn, **attack_kwargs.get(name, {}))
            aucs[name] = attack_auc(eps, curves[name])
        if a_cfg.bpda_k is not None:  # the same attacks through smooth surrogate gradients: exposes gradient masking
            with surrogate_gradients(model, a_cfg.bpda_k):
                for name, fn in attacks.items():
                    curves[f"{name}_bpda"] = robust_accuracy_curve(model, batches, eps, fn, **attack_kwargs.get(name, {}))
                    aucs[f"{name}_bpda"] = attack_auc(eps, curves[f"{name}_bpda"])
        eval_time = time.perf_counter() - t1

        history = self.history
        last = [h for h in history if h["epoch"] == cfg.train.epochs and "layer" in h]
        mean_last = {k: float(np.mean([h[f"val_{k}"] for h in last])) if last else float("nan")
                     for k in ("conv_ratio", "binariness", "homogeneity")}
        logits_params = sum(count_params(layer.logits) for _, layer in flex_layers(model))
        result = {
            "val_acc": history[-1]["val_acc"],
            **{f"{name}_auc": v for name, v in aucs.items()},
            "params": count_params(model),
            "logits_params": logits_params,
            "train_time_s": train_time,
            "eval_time_s": eval_time,
            **mean_last,
            "eps": eps,
            "curves": curves,
            "n_train": len(data.train),
            "n_val": len(data.val),
            "n_attacked": n_eval,
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "layers": {h["layer"]: {k: h[f"val_{k}"] for k in ("conv_ratio", "binariness", "homogeneity")}
                       for h in last},
        }
        _atomic(out / "history.csv", lambda p: pd.DataFrame(history).to_csv(p, index=False))
        _atomic(out / "model.pt", lambda p: torch.save(model.state_dict(), p))
        write_json_atomic(result, out / "result.json")
        return result


def run_flex(cfg: DictConfig, out_dir: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate one configuration on the engine; returns (and writes) the result record."""
    out = Path(out_dir)
    t_cfg, a_cfg = cfg.train, cfg.attack
    if t_cfg.optimizer not in OPTIMIZER_NAMES:
        raise ConfigError(f"train.optimizer '{t_cfg.optimizer}' is not one of {sorted(OPTIMIZER_NAMES)}.")
    if t_cfg.scheduler not in ("cosine", "none"):
        raise ConfigError(f"train.scheduler '{t_cfg.scheduler}' is not one of ['cosine', 'none'].")
    if t_cfg.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {t_cfg.epochs}.")
    for name in a_cfg.methods:
        ATTACKS.get(name)  # unknown attack names fail before training
    resolve_device(t_cfg.device, key="train.device")
    optimizer = {"name": t_cfg.optimizer, "lr": float(t_cfg.lr), "weight_decay": float(t_cfg.weight_decay)}
    if t_cfg.optimizer == "sgd":
        optimizer["momentum"] = float(t_cfg.momentum)
    settings = EngineSettings(epochs=int(t_cfg.epochs), seed=int(t_cfg.seed), device=t_cfg.device, optimizer=optimizer,
                              scheduler={"name": t_cfg.scheduler, "interval": "step"}, save_last=False, save_best=False,
                              progress=progress)
    task = FlexTask(cfg, out)
    return Engine(task, settings, out).fit()
