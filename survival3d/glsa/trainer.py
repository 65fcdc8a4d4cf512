"""Training and evaluation of a GLSA classifier from a :class:`~survival3d.glsa.config.GLSAConfig`.

A run writes, under ``{train.output_dir}/{train.run_name}_{fusion}_{residual}_{attention}/``:

- ``config.yaml`` — the resolved config;
- ``train.log`` — DEBUG-level log (the console shows INFO);
- ``metrics.csv`` — one row per epoch (losses, accuracy, balanced accuracy, macro-F1, learning rate, time);
- ``best.pt`` — the checkpoint with the best monitored validation metric (written atomically);
- ``confusion_matrix.png``, ``per_class.csv`` — of the best checkpoint on the validation set;
- ``gradcam.png`` — Grad-CAM on the GLSA block's output for a few validation images;
- ``results.json`` — final metrics, parameter counts and training time (written last: its presence marks a
  finished run, which the experiment runner skips);
- ``wandb/`` — an offline Weights & Biases run when ``logging.wandb`` (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from survival3d.engine.checkpoint import load_checkpoint
from survival3d.engine.loop import Engine, EngineSettings, Task
from survival3d.runtime import autocast
from survival3d.io import atomic_path
from survival3d.config import save_config
from survival3d.errors import ConfigError
from survival3d.glsa.backbones import GLSANet, create_model
from survival3d.glsa.data import SplitData, build_dataset, class_counts, make_loader
from survival3d.glsa.losses import build_loss

__all__ = [
    "GLSATask",
    "MONITORS",
    "spec_name",
    "make_run_name",
    "classification_metrics",
    "train",
    "evaluate",
    "load_classifier",
]

log = logging.getLogger(__name__)

MONITORS = {"balanced_accuracy": "max", "accuracy": "max", "macro_f1": "max", "loss": "min"}
METRICS_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy",
                   "val_macro_f1", "lr", "epoch_time_s")


def spec_name(spec: Any) -> str:
    """The name in a strategy spec (``"cbam"`` or ``{name: cbam, ...}``)."""
    if isinstance(spec, str):
        return spec.lower()
    if isinstance(spec, Mapping) or hasattr(spec, "items"):
        return str(dict(spec.items()).get("name", "?")).lower()
    raise ConfigError(f"a strategy must be a name or a mapping with 'name', got {spec!r}.")


def make_run_name(base: str, fusion: Any, residual: Any, attention: Any) -> str:
    """``{base}_{fusion}_{residual}_{attention}``, the GLSA design's run naming."""
    return f"{base}_{spec_name(fusion)}_{spec_name(residual)}_{spec_name(attention)}"


# ------------------------------------------------------------------------------------------------------ metrics
def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over classes present in ``y_true``), macro-F1 (over all classes,
    0 for a class never predicted nor present), per-class recall and the confusion matrix (rows = truth)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class_recall": recall.tolist(),
        "support": support.tolist(),
        "confusion_matrix": cm.tolist(),
    }


# ------------------------------------------------------------------------------------------------- file helpers
def _atomic_write(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(str(tmp))


def _write_json(path: Path, data: Any) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))


@contextlib.contextmanager
def _run_logging(run_dir: Path) -> Iterator[None]:
    """DEBUG records of ``survival3d`` go to ``run_dir/train.log``; console handlers keep their level."""
    pkg = logging.getLogger("survival3d")
    root = logging.getLogger()
    pinned = [h for h in root.handlers if h.level == logging.NOTSET]
    for h in pinned:
        h.setLevel(root.getEffectiveLevel())
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = pkg.level
    pkg.addHandler(handler)
    pkg.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        pkg.removeHandler(handler)
        handler.close()
        pkg.setLevel(old_level)
        for h in pinned:
            h.setLevel(logging.NOTSET)


# ------------------------------------------------------------------------------------------------------- loops
@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn, device: torch.device, num_classes: int, amp: bool = False) -> dict[str, Any]:
    """Validation loss and :func:`classification_metrics`, plus ``y_true`` / ``y_pred`` arrays."""
    model.eval()
    ys, preds, loss_sum, total = [], [], 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast(device, amp):
            logits = model(x).float()
        loss_sum += loss_fn(logits, y).item() * len(y)
        total += len(y)
        ys.append(y.cpu().numpy())
        preds.append(logits.argmax(1).cpu().numpy())
    y_true, y_pred = np.concatenate(ys), np.concatenate(preds)
    return {"loss": loss_sum / max(total, 1), **classification_metrics(y_true, y_pred, num_classes), "y_true": y_true, "y_pred": y_pred}


# ------------------------------------------------------------------------------------------------------ figures
def save_confusion_matrix(cm: np.ndarray, class_names: list[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * k, 0.8 + 0.8 * k))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = float(np.trace(cm) / max(cm.sum(), 1))
    ax.set_title((title + "\n" if title else "") + f"confusion matrix, accuracy {acc:.3f} (counts in cells)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="recall (row-normalised)")
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def save_gradcam(model: nn.Module, data: SplitData, device: torch.device, n: int, path: Path, seed: int) -> None:
    """Grad-CAM (Selvaraju et al., ICCV 2017) on the GLSA block's output for ``n`` validation images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        log.warning("grad-cam is not installed (pip install 'survival3d[gradcam]'): skipping %s", path.name)
        return

    n = min(n, len(data.val))
    if n <= 0:
        return
    idx = np.random.default_rng(seed).choice(len(data.val), size=n, replace=False)
    x = torch.stack([data.val[int(i)][0] for i in idx]).to(device)
    labels = [int(data.val_labels[i]) for i in idx]
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    with GradCAM(model=model, target_layers=[model.gradcam_layer()]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(p) for p in pred])
    mean = torch.tensor(data.mean).view(3, 1, 1)
    std = torch.tensor(data.std).view(3, 1, 1)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    for j in range(n):
        rgb = (x[j].detach().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        axes[0, j].imshow(rgb)
        axes[0, j].set_title(f"true {data.class_names[labels[j]]}", fontsize=8)
        axes[1, j].imshow(show_cam_on_image(rgb.astype(np.float32), maps[j], use_rgb=True))
        axes[1, j].set_title(f"pred {data.class_names[pred[j]]}", fontsize=8)
        for ax in axes[:, j]:
            ax.axis("off")
    acc = float(np.mean(np.asarray(pred) == np.asarray(labels)))
    where = "the GLSA block output" if isinstance(model, GLSANet) else "the last attention output"
    fig.suptitle(f"Grad-CAM on {where} ({n} validation images, {acc:.0%} correct)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    from matplotlib.cm import ScalarMappable

    fig.colorbar(ScalarMappable(cmap="jet", norm=matplotlib.colors.Normalize(0, 1)),
                 cax=fig.add_axes((0.92, 0.1, 0.015, 0.35)), label="Grad-CAM (relative)")
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------- train
def train(cfg: DictConfig, *, run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train one GLSA classifier; returns the content of ``results.json`` (see the module docstring)."""
    if cfg.train.monitor not in MONITORS:
        raise ConfigError(f"train.monitor must be one of {sorted(MONITORS)}, got {cfg.train.monitor!r}.")
    if cfg.train.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {cfg.train.epochs}.")
    if cfg.optim.name not in ("adamw", "sgd"):
        raise ConfigError(f"optim.name must be adamw or sgd, got {cfg.optim.name!r}.")
    m = cfg.model
    name = make_run_name(cfg.train.run_name, m.fusion, m.residual, m.attention)
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.train.output_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    with _run_logging(run_dir):
        return _train(cfg, run_dir, name)


class GLSATask(Task):
    """A GLSA classifier as a task on the one engine: cross-entropy-style step, classification validation."""

    def __init__(self, cfg: DictConfig, run_dir: Path, name: str):
        self.cfg, self.run_dir, self.name = cfg, run_dir, name
        self.t_start = time.perf_counter()

    def setup(self, engine: Engine, state: dict[str, Any] | None) -> None:
        cfg, d, m = self.cfg, self.cfg.data, self.cfg.model
        device = self.device = engine.device
        self.amp = bool(cfg.train.amp)
        self.data = data = build_dataset(
            d.name, root=d.root, image_size=d.image_size, val_frac=d.val_frac, split_seed=d.split_seed, augment=d.augment,
            max_samples=d.max_samples, official_val=d.official_val,
        )
        counts = class_counts(data.train_labels, data.num_classes)
        self.train_loader = make_loader(data.train, data.train_labels, batch_size=d.batch_size, train=True,
                                        weighted_sampler=d.weighted_sampler, num_workers=d.num_workers, seed=cfg.train.seed,
                                        pin_memory=device.type == "cuda")
        self.val_loader = make_loader(data.val, data.val_labels, batch_size=d.batch_size, train=False, num_workers=d.num_workers)
        if d.weighted_sampler:
            log.info("WeightedRandomSampler: sampling probability proportional to 1 / class count")
        self.module = create_model(
            m.backbone, m.pretrained, data.num_classes, _plain(m.attention), _plain(m.fusion), _plain(m.residual),
            num_heads=m.num_heads, glsa_stage=m.glsa_stage, input_size=d.image_size, weights_path=m.weights_path,
            dropout=m.dropout, width=m.width, **_featureact_options(m),
        ).to(device)
        self.params = self.module.count_parameters()
        where = (f"GLSA after stage {self.module.glsa_stage}" if isinstance(self.module, GLSANet)
                 else f"{_spec_label(m.attention)} after every stage")
        log.info("%s + %s: %s", m.backbone, where, ", ".join(f"{k}={v:,}" for k, v in self.params.items()))
        self.loss_fn = build_loss(**OmegaConf.to_container(cfg.loss, resolve=True), class_counts=counts).to(device)
        log.info("loss %s (%s)", cfg.loss.name, self.loss_fn)

    def state_dict(self) -> dict[str, Any]:
        return {"class_names": self.data.class_names, "config": OmegaConf.to_container(self.cfg, resolve=True)}

    def weights(self) -> dict[str, Any]:
        return {"model": self.module.state_dict()}

    def load_weights(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])

    def training_step(self, module: nn.Module, batch) -> dict[str, Any]:
        x, y = batch
        with autocast(x.device, self.amp):
            logits = module(x)
        loss = self.loss_fn(logits.float(), y)
        return {"loss": loss, "n": len(y), "accuracy": (logits.argmax(1) == y).sum()}

    def validate(self, engine: Engine, epoch: int) -> dict[str, float]:
        va = evaluate(self.module, self.val_loader, self.loss_fn, self.device, self.data.num_classes, self.amp)
        return {"val_loss": va["loss"], "val_accuracy": va["accuracy"], "val_balanced_accuracy": va["balanced_accuracy"],
                "val_macro_f1": va["macro_f1"]}

    def finish(self, engine: Engine) -> dict[str, Any]:
        cfg, d, m, data, run_dir, name = self.cfg, self.cfg.data, self.cfg.model, self.data, self.run_dir, self.name
        train_time = time.perf_counter() - self.t_start
        engine.use_final_weights("best")
        model, device = self.module, self.device
        final = evaluate(model, self.val_loader, self.loss_fn, device, data.num_classes, cfg.train.amp)
        save_confusion_matrix(np.asarray(final["confusion_matrix"]), data.class_names, run_dir / "confusion_matrix.png",
                              f"{name} (epoch {engine.best_epoch}) bal-acc {final['balanced_accuracy']:.3f}")
        _write_per_class(final, data.class_names, run_dir / "per_class.csv")
        if cfg.train.gradcam_images > 0:
            save_gradcam(model, data, device, cfg.train.gradcam_images, run_dir / "gradcam.png", cfg.train.seed)
        results = {
            "run_name": name,
            "dataset": d.name,
            "backbone": m.backbone,
            "attention": _spec_label(m.attention),
            "fusion": _spec_label(m.fusion),
            "residual": _spec_label(m.residual),
            "seed": cfg.train.seed,
            "best_epoch": engine.best_epoch,
            "epochs_run": engine.epoch,
            "monitor": cfg.train.monitor,
            "val_loss": final["loss"],
            "accuracy": final["accuracy"],
            "balanced_accuracy": final["balanced_accuracy"],
            "macro_f1": final["macro_f1"],
            "per_class_recall": dict(zip(data.class_names, final["per_class_recall"])),
            "confusion_matrix": final["confusion_matrix"],
            "class_names": data.class_names,
            "params": self.params["total"],
            "glsa_params": {k[5:]: v for k, v in self.params.items() if k.startswith("glsa_")},
            "train_time_s": train_time,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        }
        if engine.wandb_run is not None:
            engine.wandb_run.summary.update({k: results[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "params", "train_time_s")})
        _write_json(run_dir / "results.json", results)
        log.info("finished %s: bal-acc %.4f acc %.4f macro-F1 %.4f (%.1f s) -> %s", name, results["balanced_accuracy"],
                 results["accuracy"], results["macro_f1"], train_time, run_dir)
        return results


def engine_settings(cfg: DictConfig, run_dir: Path, name: str) -> EngineSettings:
    """The engine's settings for a GLSA config (best.pt in the run folder, no last.pt)."""
    o, t = cfg.optim, cfg.train
    optimizer = {"name": o.name, "lr": float(o.lr), "weight_decay": float(o.weight_decay)}
    if o.name == "sgd":
        optimizer.update(momentum=float(o.momentum), nesterov=float(o.momentum) > 0)
    scheduler = {"name": o.scheduler, "min_lr": float(o.min_lr), "interval": "epoch"}
    if o.scheduler == "plateau":
        scheduler.update(factor=float(o.plateau_factor), patience=int(o.plateau_patience))
    wandb = ({"mode": "offline", "project": cfg.logging.wandb_project, "name": name,
              "config": OmegaConf.to_container(cfg, resolve=True)} if cfg.logging.wandb else None)
    return EngineSettings(
        epochs=int(t.epochs), seed=int(t.seed), device=t.device, optimizer=optimizer, scheduler=scheduler,
        grad_clip=float(t.grad_clip or 0.0), monitor=f"val_{t.monitor}", mode=MONITORS[t.monitor],
        patience=int(t.early_stopping_patience or 0), checkpoint_dir=run_dir, save_last=False, save_best=True,
        metrics_columns=METRICS_COLUMNS, log_every=max(1, int(cfg.logging.log_every or 0) or 20), wandb=wandb)


def _train(cfg: DictConfig, run_dir: Path, name: str) -> dict[str, Any]:
    log.info("run %s -> %s", name, run_dir)
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    return Engine(GLSATask(cfg, run_dir, name), engine_settings(cfg, run_dir, name), run_dir).fit()


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, list[str], DictConfig]:
    """Rebuild the GLSA classifier of a run from its ``best.pt`` (or the run folder) in eval mode.

    Returns ``(model, class_names, cfg)``. The checkpoint is read by
    :func:`survival3d.engine.checkpoint.load_checkpoint` (``weights_only=True``); pretrained weights are not needed:
    it holds every weight. (A survival model is reloaded by :func:`survival3d.engine.checkpoint.load_trained`.)
    """
    from survival3d.errors import InputError

    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise InputError("no checkpoint here (expected a run folder with best.pt, or the file).", path=path)
    ckpt = load_checkpoint(path)
    cfg = OmegaConf.create(ckpt["config"])
    m, d = cfg.model, cfg.data
    model = create_model(
        m.backbone, False, len(ckpt["class_names"]), _plain(m.attention), _plain(m.fusion), _plain(m.residual),
        num_heads=m.num_heads, glsa_stage=m.glsa_stage, input_size=d.image_size, dropout=m.dropout, width=m.width,
        **_featureact_options(m),
    )
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), list(ckpt["class_names"]), cfg


def _featureact_options(m: DictConfig) -> dict[str, Any]:
    """The ``baseline_featureact`` arguments of a model section (empty for the GLSA backbones)."""
    if m.backbone != "baseline_featureact":
        return {}
    return {"widths": list(m.widths), "convs_per_stage": int(m.convs_per_stage), "hidden": list(m.hidden)}


def _plain(spec: Any) -> Any:
    return OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec


def _spec_label(spec: Any) -> str:
    return spec_name(_plain(spec))


def _write_per_class(final: dict[str, Any], class_names: list[str], path: Path) -> None:
    import pandas as pd

    df = pd.DataFrame({"class": class_names, "support": final["support"], "recall": final["per_class_recall"]})
    _atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.4f"))
