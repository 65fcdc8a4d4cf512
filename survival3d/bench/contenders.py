"""The models a benchmark compares, each wrapped with its own inputs, training loss and inference step.

* ``survival3d``: the project's full survival model from a config (Conv3dPatchEmbed → windowed transformer with
  FiLM on a few covariates → localisation head) plus its censored loss, built with
  :func:`survival3d.build.build_survival_model` and :func:`survival3d.build.build_survival_loss`. Inference = forward pass +
  the head's localisation heatmap upsampled to the input grid.
* ``monai_swinvit``: MONAI's ``SwinTransformer``, the SwinUNETR encoder (Hatamizadeh et al., "Swin UNETR: Swin
  Transformers for Semantic Segmentation of Brain Tumors in MRI Images", BrainLes 2021), at the SwinUNETR
  defaults (embed 48, depths 2-2-2-2, heads 3-6-12-24, window 7, patch 2), with a comparable survival-regression
  head: global average pool of the last stage → linear → one scalar, trained with a mean-squared error.

A contender owns an eager ``module``; the benchmark may replace ``net`` (what the steps call) by a compiled
version of it. Register a new contender with ``@BENCH_MODELS.register("name")``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from survival3d.registry import Registry

__all__ = ["BENCH_MODELS", "BenchContender", "SurvivalContender", "MonaiSwinContender", "checkpoint_blocks"]

log = logging.getLogger(__name__)

BENCH_MODELS: Registry = Registry("bench model")


def checkpoint_blocks(model: nn.Module) -> list[str]:
    """Wrap the forward of each transformer block of ``model`` in activation checkpointing (non-reentrant).

    Uses ``model.set_grad_checkpointing(True)`` when the model offers it (the timm convention). Otherwise the
    blocks are the elements of the ``nn.ModuleList`` whose name ends in ``blocks`` or ``layers`` and that holds the
    most parameters (or, failing a name match, of the ModuleList with the most parameters); each element's forward
    recomputes its activations in the backward pass instead of storing them.

    Returns:
        the qualified names of the wrapped modules (``["<model>.set_grad_checkpointing"]`` for the first case).

    Raises:
        ValueError: the model has no ``nn.ModuleList`` to checkpoint.
    """
    if callable(getattr(model, "set_grad_checkpointing", None)):
        model.set_grad_checkpointing(True)
        return [f"{type(model).__name__}.set_grad_checkpointing"]
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of blocks to checkpoint.")

    def n_params(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    named = [(n, m) for n, m in lists if n.split(".")[-1].endswith(("blocks", "layers"))]
    name, blocks = max(named or lists, key=lambda nm: n_params(nm[1]))
    wrapped = []
    for i, block in enumerate(blocks):
        original = block.forward

        def forward(*args, _original=original, **kwargs):
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        block.forward = functools.update_wrapper(forward, original)
        wrapped.append(f"{name}.{i}")
    return wrapped


class BenchContender:
    """One benchmarked model at one input size and batch size.

    Args:
        size: edge of the cubic input volume, in voxels.
        batch: volumes per step.
        device: where the model and inputs live.
        checkpointing: activation checkpointing in the transformer blocks (training memory ↓, time ↑).
        channels_last: store the model and image in ``torch.channels_last_3d``.
    """

    name = "?"

    def __init__(
        self,
        *,
        size: int,
        batch: int,
        device: torch.device,
        checkpointing: bool = False,
        channels_last: bool = False,
    ):
        if size < 1 or batch < 1:
            raise ValueError(f"size and batch must be >= 1, got size={size}, batch={batch}.")
        self.size, self.batch, self.device = int(size), int(batch), torch.device(device)
        self.checkpointing, self.channels_last = bool(checkpointing), bool(channels_last)
        self.module: nn.Module = nn.Identity()
        self.net: Any = None  # what the steps call: the module or a compiled version of it

    def _finish(self, module: nn.Module) -> None:
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last_3d)
        self.module = self.net = module

    def _image(self) -> torch.Tensor:
        x = torch.rand(self.batch, 1, self.size, self.size, self.size, device=self.device)
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x

    def make_inputs(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward + training loss (a scalar) through ``self.net``."""
        raise NotImplementedError

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inference through ``self.net`` (called under ``torch.no_grad``): named output tensors."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The settings that define this contender, stored with its results."""
        return {}

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


@BENCH_MODELS.register("survival3d")
class SurvivalContender(BenchContender):
    """The project's survival model + censored loss from an :class:`~survival3d.config.ExperimentConfig`.

    Args:
        config: optional YAML config (as for ``run.py train``); the schema defaults otherwise.
        overrides: dotted ``key=value`` overrides (``model.depth=4``), applied last.
        num_numeric: numeric covariates fed to FiLM (e.g. age, pack-years).
        cardinalities: levels (incl. 'unknown') of each categorical covariate (e.g. sex, smoking status).
        lung_mask: pass a lung mask (all lung) so the head's lung-fraction validity path runs as in real use.

    Activation checkpointing uses the config's ``model.use_checkpoint`` when the schema has it, and
    :func:`checkpoint_blocks` otherwise.
    """

    name = "survival3d"
    _NUMERIC_NAMES = ("age", "pack_years", "fev1", "dlco")
    _CATEGORICAL_NAMES = ("sex", "smoking_status", "site", "scanner")

    def __init__(
        self,
        *,
        config: str | None = None,
        overrides: Sequence[str] = (),
        num_numeric: int = 2,
        cardinalities: Sequence[int] = (3, 4),
        lung_mask: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        from survival3d.build import build_survival_loss, build_survival_model
        from survival3d.config import ExperimentConfig, load_config
        from survival3d.contracts import CovariateSpec

        if num_numeric > len(self._NUMERIC_NAMES) or len(cardinalities) > len(self._CATEGORICAL_NAMES):
            raise ValueError(
                f"at most {len(self._NUMERIC_NAMES)} numeric and {len(self._CATEGORICAL_NAMES)} categorical "
                f"covariates, got {num_numeric} and {len(cardinalities)}."
            )
        defaults = {
            "data": {
                "image_size": [self.size] * 3,
                "batch_size": self.batch,
                "covariates": {
                    "numeric": list(self._NUMERIC_NAMES[:num_numeric]),
                    "categorical": list(self._CATEGORICAL_NAMES[: len(cardinalities)]),
                },
            }
        }
        self.cfg = load_config(config, overrides, schema=ExperimentConfig, defaults=defaults)
        self.spec = CovariateSpec(num_numeric=int(num_numeric), cardinalities=[int(c) for c in cardinalities])
        self.use_lung_mask = bool(lung_mask)
        native = self.checkpointing and "use_checkpoint" in self.cfg.model  # the model's own switch, if it has one
        if native:
            self.cfg.model.use_checkpoint = True
        model = build_survival_model(self.cfg, self.spec)
        if native:
            self.checkpointed = ["model.use_checkpoint"]
        else:
            self.checkpointed = checkpoint_blocks(model) if self.checkpointing else []
        self._finish(model)
        self.loss_fn = build_survival_loss(self.cfg).to(self.device)
        self.patch_size = int(getattr(model, "patch_size", self.cfg.model.patch_size))

    def make_inputs(self) -> dict[str, torch.Tensor]:
        b, dev = self.batch, self.device
        inputs = {"image": self._image()}
        if self.spec.num_numeric:
            inputs["cov_num"] = torch.randn(b, self.spec.num_numeric, device=dev)
        if self.spec.cardinalities:
            inputs["cov_cat"] = torch.stack(
                [torch.randint(0, c, (b,), device=dev) for c in self.spec.cardinalities], dim=1
            )
        if self.use_lung_mask:
            inputs["lung_mask"] = torch.ones_like(inputs["image"])
        tmax = int(self.loss_fn.tmax)  # the resolved grid (loss.tmax may be "auto")
        inputs["time"] = torch.randint(1, tmax + 1, (b,), device=dev).float()
        inputs["event"] = (torch.rand(b, device=dev) < 0.7).float()
        return inputs

    def _forward(self, inputs: dict[str, torch.Tensor]):
        return self.net(
            inputs["image"],
            cov_num=inputs.get("cov_num"),
            cov_cat=inputs.get("cov_cat"),
            lung_mask=inputs.get("lung_mask"),
        )

    def loss(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self._forward(inputs)
        return self.loss_fn(out, inputs["time"], inputs["event"])["loss"]

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self._forward(inputs)
        result = {"pred": out.pred, "risk": out.risk}
        if out.p is not None:
            d, h, w = inputs["image"].shape[2:]
            heat = F.interpolate(out.p.float(), scale_factor=self.patch_size, mode="trilinear", align_corners=False)
            result["heatmap"] = heat[..., :d, :h, :w]
            result["p"] = out.p
        if out.loc is not None:
            result["loc"] = out.loc
        return result

    def describe(self) -> dict[str, Any]:
        from omegaconf import OmegaConf

        return {
            "model": OmegaConf.to_container(self.cfg.model, resolve=True),
            "head": OmegaConf.to_container(self.cfg.head, resolve=True),
            "loss": OmegaConf.to_container(self.cfg.loss, resolve=True),
            "covariates": {"num_numeric": self.spec.num_numeric, "cardinalities": list(self.spec.cardinalities)},
            "lung_mask": self.use_lung_mask,
            "checkpointed": self.checkpointed,
        }


class SwinRegressor(nn.Module):
    """A 3D Swin encoder + global average pool of its last stage + linear → one scalar per volume."""

    def __init__(self, encoder: nn.Module, out_channels: int):
        super().__init__()
        self.encoder = encoder
        self.norm = nn.LayerNorm(out_channels)
        self.fc = nn.Linear(out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)[-1]  # (B, C, d, h, w), layer-normalised by the encoder (normalize=True)
        return self.fc(self.norm(feats.mean(dim=(2, 3, 4)))).squeeze(-1)


@BENCH_MODELS.register("monai_swinvit")
class MonaiSwinContender(BenchContender):
    """MONAI's SwinUNETR encoder (``monai.networks.nets.swin_unetr.SwinTransformer``) + pool/linear head + MSE.

    Args:
        embed_dim, depths, num_heads, window_size, patch_size: the SwinUNETR defaults unless changed.
        use_flash_attention: MONAI's SDPA path (it only applies without gradients, i.e. to inference); on by
            default so MONAI's inference is timed at its best.
    """

    name = "monai_swinvit"

    def __init__(
        self,
        *,
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        patch_size: int = 2,
        use_flash_attention: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        from monai.networks.nets.swin_unetr import SwinTransformer

        self.settings = {
            "in_chans": 1,
            "embed_dim": int(embed_dim),
            "depths": [int(d) for d in depths],
            "num_heads": [int(h) for h in num_heads],
            "window_size": [int(window_size)] * 3,
            "patch_size": [int(patch_size)] * 3,
            "spatial_dims": 3,
            "use_checkpoint": self.checkpointing,
            "use_flash_attention": bool(use_flash_attention),
        }
        encoder = SwinTransformer(**self.settings)
        self._finish(SwinRegressor(encoder, out_channels=int(embed_dim) * 2 ** len(depths)))

    def make_inputs(self) -> dict[str, torch.Tensor]:
        return {"image": self._image(), "target": torch.randn(self.batch, device=self.device)}

    def loss(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.mse_loss(self.net(inputs["image"]).float(), inputs["target"])

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"pred": self.net(inputs["image"])}

    def describe(self) -> dict[str, Any]:
        return {"class": "monai.networks.nets.swin_unetr.SwinTransformer", **self.settings, "head": "pool+linear, MSE"}
