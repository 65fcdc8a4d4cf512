"""The FeatureAct notes' own classifier: a staged CNN with a local attention module after every pooling stage.

``BaselineFeatureAct(num_classes=7, in_channels=3, input_size=32, widths=(32, 64, 128, 256), convs_per_stage=2,
attention={"name": "featureact", "reduction": 4}, hidden=(256, 128))``:

* stage ``s``: ``convs_per_stage`` × (3×3 conv → BatchNorm → ReLU) to ``widths[s]`` channels, 2×2 max-pooling, then
  the attention module (FeatureAct by default, tied to the stage's square map of edge ``input_size / 2^(s+1)``;
  any name of :data:`survival3d.layers.attention.ATTENTION` works, ``none`` gives the plain CNN);
* classifier: flatten → (Linear → BatchNorm1d → ReLU) per ``hidden`` width → Linear → BatchNorm1d (the notes'
  BN on the logits). With ``embeddings=True`` the last linear layer is left out and the network returns the
  penultimate features: the last hidden Linear + BatchNorm1d, without its ReLU (as in the notes).

Registered as the GLSA backbone ``baseline_featureact`` (``model.backbone=baseline_featureact``), so it trains with
``run.py glsa-train`` and the GLSA experiment runner; ``model.attention`` picks the module after every stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from survival3d.errors import ConfigError
from survival3d.layers.attention import ATTENTION, FeatureAct, build_with_context

__all__ = ["BaselineFeatureAct"]


class BaselineFeatureAct(nn.Module):
    """Four-stage (by default) CNN with attention after every pooling stage and a BN-MLP classifier.

    Args:
        num_classes: outputs of the classifier (ignored with ``embeddings``).
        in_channels: image channels.
        input_size: square input edge; must be divisible by ``2 ** len(widths)`` (FeatureAct is tied to its size).
        widths: channels per stage (the number of stages is ``len(widths)``).
        convs_per_stage: conv-BN-ReLU layers per stage.
        attention: spec of the module after every pooling stage (``ATTENTION`` name or mapping; default FeatureAct
            with reduction 4, as in the notes).
        hidden: widths of the classifier's hidden layers (at least one).
        embeddings: return the penultimate features ``(B, hidden[-1])`` instead of logits.
        dropout: dropout before each hidden Linear (0 = none, as in the notes).

    Raises:
        ConfigError: a bad size, width list or attention spec.
    """

    def __init__(self, num_classes: int = 7, *, in_channels: int = 3, input_size: int = 32,
                 widths: Sequence[int] = (32, 64, 128, 256), convs_per_stage: int = 2,
                 attention: Any = None, hidden: Sequence[int] = (256, 128), embeddings: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        widths, hidden = [int(w) for w in widths], [int(h) for h in hidden]
        if not widths or min(widths) < 1:
            raise ConfigError(f"model.widths must be a non-empty list of positive ints, got {widths}.")
        if not hidden or min(hidden) < 1:
            raise ConfigError(f"model.hidden must be a non-empty list of positive ints, got {hidden}.")
        if convs_per_stage < 1:
            raise ConfigError(f"model.convs_per_stage must be >= 1, got {convs_per_stage}.")
        if num_classes < 1 or in_channels < 1:
            raise ConfigError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}.")
        factor = 2 ** len(widths)
        if input_size < factor or input_size % factor:
            raise ConfigError(f"input size {input_size} must be a multiple of 2^{len(widths)} = {factor} for "
                              f"{len(widths)} pooling stages.")
        attention = {"name": "featureact", "reduction": 4} if attention is None else attention
        self.attention_name = ATTENTION.split_spec(attention)[0].lower()
        self.embeddings = bool(embeddings)
        self.stages, self.attn = nn.ModuleList(), nn.ModuleList()
        c, size = in_channels, input_size
        for w in widths:
            layers: list[nn.Module] = []
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2, 2))
            size //= 2
            self.stages.append(nn.Sequential(*layers))
            self.attn.append(build_with_context(ATTENTION, attention, channels=w, spatial_dims=2, img_size=size))
        mlp: list[nn.Module] = [nn.Flatten()]
        f = c * size * size
        for i, h in enumerate(hidden):
            if dropout > 0:
                mlp.append(nn.Dropout(dropout))
            mlp += [nn.Linear(f, h), nn.BatchNorm1d(h)]
            if i < len(hidden) - 1 or not embeddings:
                mlp.append(nn.ReLU(inplace=True))
            f = h
        if not embeddings:
            mlp += [nn.Linear(f, num_classes), nn.BatchNorm1d(num_classes)]
        self.classifier = nn.Sequential(*mlp)
        self.out_features = f if embeddings else num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output ``(B, widths[-1], s, s)`` (after its attention)."""
        for stage, attn in zip(self.stages, self.attn):
            x = attn(stage(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))

    @torch.no_grad()
    def stage_activations(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per stage: ``features`` (the pooled map entering the attention), ``cor_feature`` (FeatureAct's
        re-weighted features ``ReLU(W_u f)``; ``None`` for other attention types) and ``output`` (after the
        attention: ``features + cor_feature`` for FeatureAct)."""
        out = []
        for stage, attn in zip(self.stages, self.attn):
            feats = stage(x)
            cor = attn.correlation_features(feats) if isinstance(attn, FeatureAct) else None
            x = feats + cor if cor is not None else attn(feats)
            out.append({"features": feats, "cor_feature": cor, "output": x})
        return out

    def gradcam_layer(self) -> nn.Module:
        """The layer Grad-CAM is computed on (the last stage's attention)."""
        return self.attn[-1]

    def count_parameters(self) -> dict[str, int]:
        """``total`` trainable parameters and ``attention`` (all attention modules together)."""
        count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
        return {"total": count(self), "attention": count(self.attn)}
