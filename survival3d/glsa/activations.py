"""Activation figures of a 2D classifier with FeatureAct (the notes' study of ``features`` vs ``cor_feature``).

For each image, one PNG: a row per stage of :class:`~survival3d.glsa.featureact_net.BaselineFeatureAct` and the
columns *input*, *features* (the pooled map entering the attention), *cor_feature* (FeatureAct's re-weighted
features ``ReLU(W_u f)``) and *output* (``features + cor_feature``), each map the channel mean of the tensor with
its own colourbar. ``run.py glsa-activations --model RUN_DIR --out DIR`` draws them for validation images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from survival3d.io import atomic_path

__all__ = ["activation_maps", "save_activation_figure"]

COLUMNS = ("features", "cor_feature", "output")


def activation_maps(model: nn.Module, image: torch.Tensor) -> list[dict[str, np.ndarray | None]]:
    """Channel-mean maps ``(h, w)`` of ``features``, ``cor_feature`` (``None`` without FeatureAct) and ``output``
    per stage for one image ``(C, H, W)`` (eval mode)."""
    if not hasattr(model, "stage_activations"):
        raise ValueError(f"{type(model).__name__} has no per-stage activations (use the baseline_featureact backbone).")
    was_training = model.training
    model.eval()
    try:
        stages = model.stage_activations(image[None])
    finally:
        model.train(was_training)
    return [{k: None if s[k] is None else s[k][0].float().mean(0).cpu().numpy() for k in COLUMNS} for s in stages]


def save_activation_figure(model: nn.Module, image: torch.Tensor, path: str | Path, *, title: str = "",
                           mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)) -> Path:
    """Write the activation figure of one normalised image ``(C, H, W)`` to ``path`` (PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = activation_maps(model, image)
    shown = (image.cpu().float() * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)).clamp(0, 1)
    shown = shown.permute(1, 2, 0).numpy()
    rows = len(maps)
    fig, axes = plt.subplots(rows, 4, figsize=(11, 2.5 * rows), squeeze=False)
    for r, stage in enumerate(maps):
        ax = axes[r, 0]
        if r == 0:
            ax.imshow(shown if shown.shape[-1] == 3 else shown[..., 0], cmap=None if shown.shape[-1] == 3 else "gray")
            ax.set_title("input", fontsize=9)
        ax.axis("off")
        for c, key in enumerate(COLUMNS, start=1):
            ax = axes[r, c]
            m = stage[key]
            if m is None:
                ax.text(0.5, 0.5, "no FeatureAct", ha="center", va="center", fontsize=8)
                ax.axis("off")
                continue
            im = ax.imshow(m, cmap="viridis")
            ax.set_title(f"stage {r + 1}: {key} ({m.shape[0]}×{m.shape[1]})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title or "channel-mean activations per stage", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), dpi=110, format="png")
    plt.close(fig)
    return path
