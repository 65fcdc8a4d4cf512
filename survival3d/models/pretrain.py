"""Self-supervised pretraining of the survival encoder: a masked-cubelet autoencoder (MAE-style).

The encoder is the survival model's own: :class:`~survival3d.models.blocks.Conv3dPatchEmbed` ->
:class:`~survival3d.models.nets.WindowTransformer3D` (-> optional :class:`~survival3d.models.blocks.VectorQuantizer`),
built from the same ``model.*`` keys and with the same parameter names (``embed.*``, ``transformer.*``,
``quantizer.*``) as :class:`~survival3d.models.SurvivalNet3D`, so its weights load into the survival model by name
(:func:`load_encoder_state`).

A random ``mask_ratio`` of each volume's (valid) cubelets is hidden: their voxels are zeroed before the stem and
their tokens replaced by a learned mask token plus the position embedding. MAE (He et al., CVPR 2022) drops masked
tokens from the encoder; a window transformer needs a full grid, so here they stay as mask tokens, as in SimMIM
(Xie et al., CVPR 2022). A light decoder (a linear map, ``decoder_depth`` window blocks, a linear map to the
cubelet's voxels) reconstructs every cubelet; the loss is the mean squared error over masked cubelets only, against
targets normalised per cubelet (each cubelet's voxels minus their mean, over their standard deviation; MAE's
``norm_pix_loss``) when ``norm_target``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from survival3d.errors import ConfigError
from survival3d.models.blocks import Conv3dPatchEmbed, VectorQuantizer, sincos_pos_embed_3d
from survival3d.models.blocks.window_attention import MAX_WINDOWS_PER_CALL
from survival3d.models.nets import WindowTransformer3D
from survival3d.models.survival_net import SurvivalNet3D

__all__ = [
    "MaskedCubeletAutoencoder",
    "random_cubelet_mask",
    "patchify",
    "unpatchify",
    "cubelet_targets",
    "masked_mse",
    "ENCODER_PREFIXES",
    "encoder_keys",
    "load_encoder_state",
    "encoder_layer_id",
    "layer_scale",
    "is_encoder_param",
]

#: parameter-name prefixes of the encoder shared by the autoencoder and :class:`SurvivalNet3D`
ENCODER_PREFIXES = ("embed.", "transformer.", "quantizer.")
_NOT_PRETRAINED = ("transformer.film.",)  # covariate conditioning: the survival model's own, never pretrained


def random_cubelet_mask(batch: int, valid: torch.Tensor, ratio: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, 1, d, h, w) bool: for each volume, ``round(ratio * n_valid)`` (at least 1, at most ``n_valid - 1``)
    of the valid cubelets, drawn uniformly without replacement; invalid (padding) cubelets are never masked.

    Args:
        valid: (1, 1, d, h, w) bool, the cubelets that hold real voxels.
        ratio: fraction in (0, 1).
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}.")
    grid = valid.shape[-3:]
    flat_valid = valid.reshape(-1)
    n_valid = int(flat_valid.sum())
    if n_valid < 2:
        raise ValueError(f"masking needs at least 2 valid cubelets, got {n_valid}.")
    k = min(max(int(round(ratio * n_valid)), 1), n_valid - 1)
    noise = torch.rand(batch, flat_valid.numel(), device=valid.device, generator=generator)
    noise = noise.masked_fill(~flat_valid[None], 2.0)  # invalid cubelets sort last
    idx = noise.argsort(dim=1)[:, :k]
    mask = torch.zeros(batch, flat_valid.numel(), dtype=torch.bool, device=valid.device)
    mask.scatter_(1, idx, True)
    return mask.reshape(batch, 1, *grid)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, p*d, p*h, p*w) -> (B, d, h, w, C*p^3): each cubelet's voxels as one vector."""
    b, c, dd, hh, ww = x.shape
    d, h, w = dd // p, hh // p, ww // p
    x = x.reshape(b, c, d, p, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, d, h, w, c * p**3)


def unpatchify(v: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, d, h, w, C*p^3) -> (B, C, p*d, p*h, p*w)."""
    b, d, h, w, _ = v.shape
    x = v.reshape(b, d, h, w, channels, p, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, channels, d * p, h * p, w * p)


def cubelet_targets(padded: torch.Tensor, p: int, normalise: bool, eps: float = 1e-6):
    """Reconstruction targets (B, d, h, w, C*p^3) of a padded volume and the per-cubelet (mean, std) used.

    With ``normalise`` each cubelet's vector is standardised by its own mean and standard deviation
    (``(x - mean) / sqrt(var + eps)``); otherwise mean 0 and std 1 are returned.
    """
    t = patchify(padded.float(), p)
    if not normalise:
        return t, torch.zeros_like(t[..., :1]), torch.ones_like(t[..., :1])
    mean = t.mean(-1, keepdim=True)
    std = (t.var(-1, keepdim=True, unbiased=False) + eps).sqrt()
    return (t - mean) / std, mean, std


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over cubelets with ``weight`` of the per-cubelet mean squared error (``pred``/``target`` (B, d, h, w, V),
    ``weight`` (B, d, h, w) bool or float)."""
    per = (pred.float() - target.float()).square().mean(-1)
    w = weight.to(per.dtype)
    return (per * w).sum() / w.sum().clamp_min(1.0)


class MaskedCubeletAutoencoder(nn.Module):
    """The survival encoder with a mask token and a light decoder of cubelet voxels.

    Args:
        in_channels ... max_windows_per_call, vq_codes, vq_decay, vq_commitment: the ``model.*`` keys, as for
            :class:`~survival3d.models.SurvivalNet3D` (``film``/``film_hidden``/``covariate_aft``/``name`` are accepted and unused:
            pretraining has no covariates).
        mask_ratio: fraction of valid cubelets hidden per volume.
        decoder_dim, decoder_depth, decoder_heads: the decoder's token width, window blocks (0: per-cubelet MLP
            only) and heads.
        norm_target: normalise every target cubelet by its own mean and standard deviation.

    Forward:
        image (B, in_channels, D, H, W); ``mask`` optional (B, 1, d, h, w) bool (default: drawn with
        :func:`random_cubelet_mask` from the global torch generator).

    Returns:
        dict with ``loss`` (reconstruction + VQ), ``recon``, ``vq`` (scalars), ``pred`` and ``target``
        (B, d, h, w, C*p^3), ``mean``/``std`` of the targets, ``mask`` (B, 1, d, h, w), ``valid`` (1, 1, d, h, w),
        ``codes`` (B, d, h, w) or ``None``.
    """

    def __init__(self, *, in_channels: int = 1, patch_size: int = 4, stem_convs: int = 1,
                 dot_filter_sigmas: Sequence[float] = (), embed_dim: int = 48,
                 embed_norm: bool = True, embed_mean_intensity: bool = True, embed_std_intensity: bool = False,
                 pos_embed: str = "sincos", img_size: Sequence[int] | None = None, depth: int = 2, num_heads: int = 3,
                 window_size: int = 4, shift: bool = True, rel_pos_bias: bool = True, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path: float = 0.0, attn_drop: float = 0.0, drop: float = 0.0,
                 film: bool = True, film_hidden: int = 64, global_residual: bool = True, use_checkpoint: bool = False,
                 max_windows_per_call: int = MAX_WINDOWS_PER_CALL, attention: str | Mapping[str, Any] = "none",
                 vq_codes: int = 0, vq_decay: float = 0.99, vq_commitment: float = 0.25, mask_ratio: float = 0.6, decoder_dim: int = 48, decoder_depth: int = 1,
                 decoder_heads: int = 3, norm_target: bool = True, covariate_aft: bool = False,
                 name: str | None = None):
        super().__init__()
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"pretrain.mask_ratio must be in (0, 1), got {mask_ratio}.")
        self.in_channels, self.patch_size = int(in_channels), int(patch_size)
        self.mask_ratio, self.norm_target = float(mask_ratio), bool(norm_target)
        self.embed = Conv3dPatchEmbed(in_channels, embed_dim, patch_size, stem_convs=stem_convs, pos_embed=pos_embed,
                                      dot_filter_sigmas=dot_filter_sigmas,
                                      norm=embed_norm, mean_intensity=embed_mean_intensity,
                                      std_intensity=embed_std_intensity, img_size=img_size)
        # the survival model's encoder, block attention included, so that its weights load by name when fine-tuning
        self.transformer = WindowTransformer3D(
            embed_dim, depth, num_heads, window_size, shift=shift, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            rel_pos_bias=rel_pos_bias, attn_drop=attn_drop, drop=drop, drop_path=drop_path, film=False,
            global_residual=global_residual, use_checkpoint=use_checkpoint, max_windows_per_call=max_windows_per_call,
            attention=attention, grid_size=SurvivalNet3D._featureact_grid(attention, img_size, self.patch_size))
        self.quantizer = (VectorQuantizer(embed_dim, int(vq_codes), decay=vq_decay, commitment=vq_commitment)
                          if int(vq_codes) > 0 else None)
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.decoder = (WindowTransformer3D(decoder_dim, decoder_depth, decoder_heads, window_size, shift=shift,
                                            mlp_ratio=mlp_ratio, film=False, global_residual=False,
                                            max_windows_per_call=max_windows_per_call)
                        if int(decoder_depth) > 0 else None)
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, in_channels * self.patch_size**3)

    def pos_embed(self, grid: tuple[int, int, int], device, dtype) -> torch.Tensor:
        """(1, C, d, h, w): the position embedding the patch embedding adds (zeros for ``pos_embed=none``)."""
        e = self.embed
        if e.pos_embed is not None:
            pe = e.pos_embed
            if tuple(pe.shape[-3:]) != tuple(grid):
                pe = F.interpolate(pe, size=grid, mode="trilinear", align_corners=False)
            return pe.to(dtype)
        if e.pos_embed_kind == "sincos":
            return sincos_pos_embed_3d(tuple(grid), e.embed_dim, device=device, dtype=dtype)[None]
        return torch.zeros(1, e.embed_dim, *grid, device=device, dtype=dtype)

    def voxel_mask(self, mask: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        """(B, 1, D, H, W) bool: the voxels of the masked cubelets (cropped to the unpadded size)."""
        p = self.patch_size
        m = mask.repeat_interleave(p, 2).repeat_interleave(p, 3).repeat_interleave(p, 4)
        return m[..., : spatial[0], : spatial[1], : spatial[2]]

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, Any]:
        if image.ndim != 5:
            raise ValueError(f"expected image of shape (B, C, D, H, W), got {tuple(image.shape)}.")
        spatial = tuple(image.shape[2:])
        grid = self.embed.grid_size(spatial)
        valid = self.embed.valid_mask(spatial, device=image.device)
        if mask is None:
            mask = random_cubelet_mask(image.shape[0], valid, self.mask_ratio)
        visible = image.masked_fill(self.voxel_mask(mask, spatial), 0.0)  # no masked voxel reaches a visible token
        tokens, _ = self.embed(visible)
        fill = self.mask_token.view(1, -1, 1, 1, 1).to(tokens.dtype) + self.pos_embed(grid, tokens.device, tokens.dtype)
        tokens = torch.where(mask, fill, tokens)
        padded = any(s % self.patch_size for s in spatial)
        key_valid = valid[0, 0] if padded else None
        out, _ = self.transformer(tokens, key_valid=key_valid)
        vq = out.new_zeros((), dtype=torch.float32)
        codes = None
        if self.quantizer is not None:
            out, vq, codes = self.quantizer(out, valid)
        h = self.decoder_embed(out.movedim(1, -1)).movedim(-1, 1)
        if self.decoder is not None:
            h, _ = self.decoder(h, key_valid=key_valid)
        pred = self.decoder_pred(self.decoder_norm(h.movedim(1, -1)))
        target, mean, std = cubelet_targets(self.embed.pad(image), self.patch_size, self.norm_target)
        weight = (mask & valid)[:, 0]
        recon = masked_mse(pred, target, weight)
        return {"loss": recon + vq.float(), "recon": recon, "vq": vq, "pred": pred, "target": target, "mean": mean,
                "std": std, "mask": mask, "valid": valid, "codes": codes}

    @torch.no_grad()
    def reconstruct(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W): visible cubelets as given, masked ones as predicted (targets de-normalised with the
        true cubelet mean and standard deviation, as MAE shows them)."""
        out = self.forward(image, mask)
        vox = out["pred"].float() * out["std"] + out["mean"]
        full = unpatchify(vox, self.patch_size, self.in_channels)[..., : image.shape[2], : image.shape[3], : image.shape[4]]
        return torch.where(self.voxel_mask(mask, image.shape[2:]), full.to(image.dtype), image)


# ---------------------------------------------------------------------------------------------- encoder transfer
def encoder_keys(state: Mapping[str, torch.Tensor], *, with_quantizer: bool = True) -> dict[str, torch.Tensor]:
    """The pretrainable encoder entries of a state dict (``embed.*``, ``transformer.*`` but FiLM, ``quantizer.*``)."""
    prefixes = ENCODER_PREFIXES if with_quantizer else ENCODER_PREFIXES[:2]
    return {k: v for k, v in state.items() if k.startswith(prefixes) and not k.startswith(_NOT_PRETRAINED)}


def load_encoder_state(model: nn.Module, source: Mapping[str, torch.Tensor], *, where: str) -> list[str]:
    """Copy the encoder entries of ``source`` into ``model`` (a survival model or an autoencoder), strictly.

    Every encoder entry of ``model`` must be in ``source`` with the same shape, and every encoder entry of ``source``
    must be in ``model`` (``quantizer.*`` entries are skipped when ``model`` has no quantiser: continuous tokens from
    a VQ-pretrained encoder). FiLM is never loaded. Returns the loaded keys.

    Raises:
        ConfigError: one line naming ``where`` (the checkpoint) and the first mismatched key.
    """
    target = model.state_dict()
    has_q = any(k.startswith("quantizer.") for k in target)
    want = encoder_keys(target, with_quantizer=has_q)
    have = encoder_keys(source, with_quantizer=has_q)
    if not have:
        raise ConfigError(f"model.init: {where} holds no encoder weights (no embed.*/transformer.* entries).")
    for k, v in have.items():
        if k not in want:
            raise ConfigError(f"model.init: {where}: encoder key '{k}' is not in this model (different model.* "
                              f"settings, e.g. depth or pos_embed?).")
        if tuple(v.shape) != tuple(want[k].shape):
            raise ConfigError(f"model.init: {where}: encoder key '{k}' has shape {tuple(v.shape)} in the checkpoint "
                              f"but {tuple(want[k].shape)} in this model (model.* or data.image_size differ).")
    for k in want:
        if k not in have:
            raise ConfigError(f"model.init: {where}: this model's encoder key '{k}' is missing from the checkpoint "
                              f"(e.g. model.vq_codes > 0 but the encoder was pretrained without VQ).")
    with torch.no_grad():
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        for k, v in have.items():
            dst = params.get(k, buffers.get(k))
            dst.copy_(v.to(dst.device, dst.dtype))
    return list(have)


_BLOCK = re.compile(r"^transformer\.blocks\.(\d+)\.")


def encoder_layer_id(name: str, depth: int) -> int:
    """Depth of a survival-model parameter for layer-wise learning-rate decay: 0 for the patch embedding,
    ``i + 1`` for transformer block ``i``, ``depth + 1`` for everything above (head, FiLM, quantiser, loss)."""
    if name.startswith("embed."):
        return 0
    m = _BLOCK.match(name)
    if m:
        return int(m.group(1)) + 1
    return depth + 1


def layer_scale(name: str, depth: int, decay: float) -> float:
    """``decay ** (depth + 1 - layer_id)``: 1 for the head, ``decay`` for the last block, ... the patch embedding
    lowest (BEiT/MAE fine-tuning)."""
    return float(decay) ** (depth + 1 - encoder_layer_id(name, depth))


def is_encoder_param(name: str) -> bool:
    """Whether a survival-model parameter belongs to the pretrained encoder (frozen during the warm-up)."""
    return name.startswith(ENCODER_PREFIXES) and not name.startswith(_NOT_PRETRAINED)

