"""torchvision ResNet / VGG backbones with a GLSA block inserted after one stage.

``create_model("resnet50", pretrained=False, num_classes=7, attn_type="cbam", fusion_strategy="learnable_gate",
residual_strategy="progressive")`` builds the torchvision network, cuts it into stages (ResNet: stem+layer1,
layer2, layer3, layer4; VGG: the five blocks ending in a max-pool), inserts a :class:`GLSABlock` after the chosen
stage (default: the last), and replaces the final linear layer by one with ``num_classes`` outputs.

ImageNet weights are never downloaded: with ``pretrained=True`` they are read from ``weights_path`` or from the
torch hub cache (``$TORCH_HOME/hub/checkpoints/<torchvision file name>``, any of torchvision's weight sets for the
network, its default first), and a missing file is an :class:`InputError` that names the URL and the place to put it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import resnet

from survival3d.errors import ConfigError, InputError
from survival3d.glsa.block import GLSABlock
from survival3d.glsa.featureact_net import BaselineFeatureAct
from survival3d.registry import Registry

__all__ = ["BACKBONES", "BaselineFeatureAct", "GLSANet", "create_model", "pretrained_weights_path"]

log = logging.getLogger(__name__)

BACKBONES: Registry = Registry("backbone")


@dataclass(frozen=True)
class _Cut:
    """A torchvision network cut into stages plus the head that follows them."""

    stages: list[nn.Module]
    pool: nn.Module
    head: nn.Module  # flattened pooled features -> logits (last layer already replaced)


def _cut_resnet(net: nn.Module, num_classes: int, dropout: float) -> _Cut:
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(net.fc.in_features, num_classes))
    return _Cut([stem, net.layer2, net.layer3, net.layer4], net.avgpool, head)


def _cut_vgg(net: torchvision.models.VGG, num_classes: int, dropout: float) -> _Cut:
    stages, current = [], []
    for layer in net.features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages.append(nn.Sequential(*current))
            current = []
    classifier = list(net.classifier)
    classifier[-1] = nn.Linear(classifier[-1].in_features, num_classes)
    return _Cut(stages, net.avgpool, nn.Sequential(*classifier))


_CUTTERS = {"resnet": _cut_resnet, "vgg": _cut_vgg}


_RESNET_LAYOUTS = {
    "resnet18": (resnet.BasicBlock, (2, 2, 2, 2)),
    "resnet34": (resnet.BasicBlock, (3, 4, 6, 3)),
    "resnet50": (resnet.Bottleneck, (3, 4, 6, 3)),
    "resnet101": (resnet.Bottleneck, (3, 4, 23, 3)),
    "resnet152": (resnet.Bottleneck, (3, 8, 36, 3)),
}


class _NarrowResNet(nn.Module):
    """A torchvision ResNet topology (same stem, blocks and strides) with stage widths ``w, 2w, 4w, 8w``.

    Built from torchvision's own ``BasicBlock``/``Bottleneck`` so that ``width=64`` would equal the standard
    network; narrower widths make CPU smoke and learning tests affordable (no ImageNet weights exist for them).
    """

    def __init__(self, block, layers: tuple[int, ...], width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        for i, n in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            out = planes * block.expansion
            down = None
            if stride != 1 or inplanes != out:
                down = nn.Sequential(resnet.conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
            blocks = [block(inplanes, planes, stride, down)] + [block(out, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _weight_files(backbone_name: str) -> list[tuple[Path, str]]:
    """Hub-cache paths and URLs of every torchvision ImageNet weight set of ``backbone_name``, DEFAULT first."""
    enum = torchvision.models.get_model_weights(backbone_name)
    # IMAGENET1K_FEATURES (vgg16) has no classifier weights: not a whole network
    members = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT and "FEATURES" not in w.name]
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return [(checkpoints / os.path.basename(w.url), w.url) for w in members]


def pretrained_weights_path(backbone_name: str) -> tuple[Path, str]:
    """Where torchvision's default ImageNet weights of ``backbone_name`` live in the torch hub cache, and their URL."""
    return _weight_files(backbone_name)[0]


def _load_imagenet(net: nn.Module, backbone_name: str, weights_path: str | os.PathLike | None) -> None:
    files = _weight_files(backbone_name)
    if weights_path is not None:
        path = Path(weights_path)
    else:  # any torchvision weight set already in the cache (e.g. IMAGENET1K_V1 or _V2), the default first
        path = next((p for p, _ in files if p.is_file()), files[0][0])
    if not path.is_file():
        cached, url = files[0]
        raise InputError(
            f"ImageNet weights for {backbone_name} not found (nothing is downloaded). Download {url} and save it as "
            f"{cached} (or set model.weights_path to the file), or use pretrained=false.",
            path=path,
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as e:
        raise InputError(f"not a readable PyTorch state dict ({e}).", path=path) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise InputError(f"weights do not match torchvision {backbone_name}: {first}", path=path) from None
    log.info("loaded ImageNet weights for %s from %s", backbone_name, path)


class GLSANet(nn.Module):
    """A staged CNN with a GLSA block after stage ``glsa_stage`` (1-based; the stages after it follow)."""

    def __init__(self, stages: list[nn.Module], glsa_stage: int, glsa: GLSABlock, pool: nn.Module, head: nn.Module):
        super().__init__()
        self.before = nn.Sequential(*stages[:glsa_stage])
        self.glsa = glsa
        self.after = nn.Sequential(*stages[glsa_stage:])
        self.pool = pool
        self.head = head
        self.glsa_stage = glsa_stage

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(self.glsa(self.before(x)))

    def gradcam_layer(self) -> nn.Module:
        """The layer Grad-CAM is computed on (the GLSA block)."""
        return self.glsa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.forward_features(x)), 1))

    def count_parameters(self) -> dict[str, int]:
        """``total`` trainable parameters of the network plus the GLSA block's breakdown (``glsa_*``)."""
        total = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"total": total, **{f"glsa_{k}": v for k, v in self.glsa.count_parameters().items()}}


def _build(
    family: str,
    tv_name: str,
    pretrained: bool = False,
    num_classes: int = 7,
    attn_type: Any = "cbam",
    fusion_strategy: Any = "original",
    residual_strategy: Any = "original",
    *,
    num_heads: int = 8,
    glsa_stage: int = -1,
    input_size: int = 224,
    weights_path: str | os.PathLike | None = None,
    dropout: float = 0.0,
    width: int = 64,
) -> GLSANet:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    if width != 64:
        if family != "resnet" or width < 1:
            raise ConfigError(f"model.width {width} is only available for ResNets (a positive int; 64 = standard).")
        if pretrained:
            raise ConfigError(f"no ImageNet weights exist for {tv_name} with width {width}; use width=64 or pretrained=false.")
        net = _NarrowResNet(*_RESNET_LAYOUTS[tv_name], width)
    else:
        net = getattr(torchvision.models, tv_name)(weights=None)
    if pretrained:
        _load_imagenet(net, tv_name, weights_path)
    cut = _CUTTERS[family](net, num_classes, dropout)
    n = len(cut.stages)
    stage = n if glsa_stage == -1 else glsa_stage
    if not 1 <= stage <= n:
        raise ConfigError(f"glsa_stage {glsa_stage} out of range for {tv_name}: use 1..{n} or -1 (last).")
    # one dry run (no grad) finds the channels and the edge of the feature map the GLSA block sees
    was_training = [m.training for m in cut.stages]
    with torch.no_grad():
        probe = nn.Sequential(*cut.stages[:stage]).eval()(torch.zeros(1, 3, input_size, input_size))
    for m, t in zip(cut.stages, was_training):
        m.train(t)
    channels, size = probe.shape[1], probe.shape[-1]
    if size < 1 or probe.shape[-2] != size:
        raise ConfigError(f"input_size {input_size} gives a {tuple(probe.shape[2:])} map after stage {stage} of {tv_name}.")
    glsa = GLSABlock(channels, num_heads, attn_type, fusion_strategy, residual_strategy, spatial_dims=2, img_size=size)
    return GLSANet(cut.stages, stage, glsa, cut.pool, cut.head)


for _depth in (18, 34, 50, 101, 152):
    BACKBONES.register(f"resnet{_depth}", partial(_build, "resnet", f"resnet{_depth}"))
for _depth in (11, 13, 16, 19):
    for _suffix in ("", "_bn"):
        BACKBONES.register(f"vgg{_depth}{_suffix}", partial(_build, "vgg", f"vgg{_depth}{_suffix}"))


def _build_featureact(
    pretrained: bool = False,
    num_classes: int = 7,
    attn_type: Any = "featureact",
    fusion_strategy: Any = "original",
    residual_strategy: Any = "original",
    *,
    input_size: int = 224,
    widths: Any = (32, 64, 128, 256),
    convs_per_stage: int = 2,
    hidden: Any = (256, 128),
    embeddings: bool = False,
    dropout: float = 0.0,
    in_channels: int = 3,
    **_glsa_only: Any,
) -> BaselineFeatureAct:
    """``baseline_featureact``: :class:`BaselineFeatureAct` with ``attn_type`` after every pooling stage (a FeatureAct
    spec gets ``reduction`` 4 unless it sets one). It has no GLSA block: ``num_heads``, ``glsa_stage``, ``width`` and
    ``weights_path`` do not apply."""
    if pretrained:
        raise ConfigError("baseline_featureact has no pretrained weights; use model.pretrained=false.")
    for key, spec in (("fusion", fusion_strategy), ("residual", residual_strategy)):
        if (spec if isinstance(spec, str) else dict(spec).get("name")) != "original":
            raise ConfigError(f"model.{key}: baseline_featureact has no GLSA block; leave it 'original'.")
    if isinstance(attn_type, str) and attn_type.lower() == "featureact":
        attn_type = {"name": "featureact", "reduction": 4}
    return BaselineFeatureAct(num_classes, in_channels=in_channels, input_size=input_size, widths=widths,
                              convs_per_stage=convs_per_stage, attention=attn_type, hidden=hidden,
                              embeddings=embeddings, dropout=dropout)


BACKBONES.register("baseline_featureact", _build_featureact)


def create_model(
    backbone_name: str,
    pretrained: bool = False,
    num_classes: int = 7,
    attn_type: Any = "cbam",
    fusion_strategy: Any = "original",
    residual_strategy: Any = "original",
    **kwargs: Any,
) -> GLSANet:
    """Build a backbone from :data:`BACKBONES` with a GLSA block.

    Args:
        backbone_name: ``resnet18/34/50/101/152``, ``vgg11/13/16/19`` or their ``_bn`` variants, or
            ``baseline_featureact`` (the FeatureAct notes' CNN, :class:`BaselineFeatureAct`: ``attn_type`` after
            every pooling stage, no GLSA block; kwargs ``widths``, ``convs_per_stage``, ``hidden``, ``embeddings``).
        pretrained: load ImageNet weights (from ``weights_path`` or the torch hub cache; never downloaded).
        num_classes: outputs of the new last linear layer.
        attn_type, fusion_strategy, residual_strategy: names (or spec mappings) in ``ATTENTION``, ``FUSION``,
            ``RESIDUAL``.
        kwargs: ``num_heads`` (8), ``glsa_stage`` (1-based, -1 = last), ``input_size`` (224; fixes FeatureAct's
            feature size), ``weights_path``, ``dropout`` (before a ResNet's last layer), ``width`` (ResNet
            first-stage width, 64 = torchvision's network; smaller for CPU smoke runs, no pretrained weights).

    Raises:
        ConfigError: unknown backbone or strategy, bad ``glsa_stage``.
        InputError: ``pretrained=True`` and the weights file is missing or does not fit.
    """
    return BACKBONES.get(backbone_name)(pretrained, num_classes, attn_type, fusion_strategy, residual_strategy, **kwargs)
