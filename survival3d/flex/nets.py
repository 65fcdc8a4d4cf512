"""Networks with FlexLayers: a small configurable FlexNet, and max-pool → FlexLayer swapping for torchvision models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers import Pool
from torch import nn

from survival3d.flex.layer import FlexLayer

__all__ = ["FlexNet", "InputAdapter", "swap_maxpool", "flex_layers", "flex_stats", "reset_flex_stats", "count_params"]


class InputAdapter(nn.Module):
    """Normalise ``(x − mean) / std`` per channel and optionally repeat a single channel to ``repeat_to`` channels,
    so that attacks operate in the raw ``[0, 1]`` pixel space while the network sees normalised inputs."""

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None, *,
                 repeat_to: int | None = None, spatial_dims: int = 2):
        super().__init__()
        shape = (1, -1, *([1] * spatial_dims))
        mean = torch.as_tensor([0.0] if mean is None else list(mean), dtype=torch.float32).view(shape)
        std = torch.as_tensor([1.0] if std is None else list(std), dtype=torch.float32).view(shape)
        if (std <= 0).any():
            raise ValueError(f"std must be positive, got {std.flatten().tolist()}.")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.repeat_to = repeat_to

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.repeat_to and x.shape[1] == 1:
            x = x.expand(-1, self.repeat_to, *x.shape[2:])
        return x


class FlexNet(nn.Module):
    """``len(channels)`` stages of (``convs_per_stage`` × conv-BN-ReLU → FlexLayer down-sampling), global average
    pooling and a linear classifier.

    Args:
        in_channels / num_classes: input channels and classes.
        channels: width of each stage.
        convs_per_stage: 3^d conv blocks before each FlexLayer.
        spatial_dims: 2 or 3.
        kernel_size / stride / padding: of the FlexLayers (default 2 / 2 / 0, the usual 2× max-pool).
        logits / masking / pool_channels: passed to every :class:`FlexLayer`.
        mean / std: input normalisation applied inside the network.
        dropout: before the classifier.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        *,
        channels: Sequence[int] = (16, 32),
        convs_per_stage: int = 1,
        spatial_dims: int = 2,
        kernel_size: int = 2,
        stride: int | None = None,
        padding: int = 0,
        logits: str | Mapping[str, Any] = "threshold",
        masking: str | Mapping[str, Any] = "sharp_sigmoid",
        pool_channels: str = "auto",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive widths, got {channels}.")
        if convs_per_stage < 1 or num_classes < 2 or in_channels < 1:
            raise ValueError(
                f"need convs_per_stage >= 1, num_classes >= 2, in_channels >= 1; got {convs_per_stage}, "
                f"{num_classes}, {in_channels}."
            )
        self.input = InputAdapter(mean, std, spatial_dims=spatial_dims)
        stages, c = [], in_channels
        for width in channels:
            convs = [Convolution(spatial_dims, c if i == 0 else width, width, kernel_size=3, act="relu", norm="batch")
                     for i in range(convs_per_stage)]
            flex = FlexLayer(width, width, kernel_size=kernel_size, stride=stride, padding=padding,
                             spatial_dims=spatial_dims, logits=logits, masking=masking, pool_channels=pool_channels)
            stages.append(nn.Sequential(*convs, flex))
            c = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.input(x)))


def swap_maxpool(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    logits: str | Mapping[str, Any] = "threshold",
    masking: str | Mapping[str, Any] = "sharp_sigmoid",
    pool_channels: str = "auto",
) -> list[str]:
    """Replace every ``nn.MaxPool2d`` / ``nn.MaxPool3d`` of ``model`` (e.g. torchvision ResNet, VGG) in place by a
    :class:`FlexLayer` with the same kernel, stride and padding and as many output as input channels.

    The channel count of each pooling layer is found by one forward pass of ``example_input`` (a small batch).

    Returns:
        The qualified names of the replaced modules.

    Raises:
        ValueError: for dilated or ceil-mode max-pooling (no equivalent convolution) or a model without max-pooling.
    """
    pools = {name: m for name, m in model.named_modules() if isinstance(m, (nn.MaxPool2d, nn.MaxPool3d))}
    if not pools:
        raise ValueError(f"{type(model).__name__} has no MaxPool2d/MaxPool3d layer to swap.")
    in_channels: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            in_channels.setdefault(name, args[0].shape[1])

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in pools.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    swapped = []
    for name, m in pools.items():
        if name not in in_channels:
            continue  # not on the forward path
        single = {a: (v[0] if isinstance(v, (tuple, list)) else v)
                  for a, v in (("kernel_size", m.kernel_size), ("stride", m.stride), ("padding", m.padding),
                               ("dilation", m.dilation))}
        if single["dilation"] != 1 or m.ceil_mode:
            raise ValueError(f"cannot swap '{name}': dilation={m.dilation}, ceil_mode={m.ceil_mode} unsupported.")
        flex = FlexLayer(in_channels[name], in_channels[name], kernel_size=single["kernel_size"],
                         stride=single["stride"], padding=single["padding"],
                         spatial_dims=2 if isinstance(m, nn.MaxPool2d) else 3,
                         logits=logits, masking=masking, pool_channels=pool_channels)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, flex.to(example_input.device))
        swapped.append(name)
    return swapped


def flex_layers(model: nn.Module) -> list[tuple[str, FlexLayer]]:
    """``(name, layer)`` for every FlexLayer in ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FlexLayer)]


def reset_flex_stats(model: nn.Module) -> None:
    for _, layer in flex_layers(model):
        layer.reset_stats()


def flex_stats(model: nn.Module, reset: bool = True) -> dict[str, dict[str, float]]:
    """Per-layer mean diagnostics since the last reset (see :meth:`FlexLayer.stats`)."""
    return {name: layer.stats(reset=reset) for name, layer in flex_layers(model)}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
