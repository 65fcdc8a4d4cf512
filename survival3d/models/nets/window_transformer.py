"""A stack of (alternately shifted) 3D window-attention blocks with per-block FiLM and a global residual link."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from survival3d.models.blocks import FiLM, WindowTransformerBlock3D
from survival3d.models.blocks.window_attention import MAX_WINDOWS_PER_CALL

__all__ = ["WindowTransformer3D"]


class WindowTransformer3D(nn.Module):
    """Windowed 3D transformer over a cubelet grid, conditioned on covariates by FiLM after every block.

    Windows stay local (a few cubelets per axis) so that each output token describes its own neighbourhood; a
    research run found a localisation head needed that (docs/model.md has our own ablation). Attention cost is
    linear in the number of cubelets.

    Args:
        dim: token channels.
        depth: number of blocks; block ``i`` uses shifted windows when ``shift`` and ``i`` is odd.
        num_heads: attention heads per block.
        window_size: window edge in cubelets.
        shift: alternate shifted windows.
        mlp_ratio, qkv_bias, rel_pos_bias, attn_drop, drop: per block, see :class:`WindowTransformerBlock3D`.
        drop_path: stochastic depth of the last block; it rises linearly from 0 over the blocks.
        num_numeric, cardinalities: the covariates; FiLM is built when ``film`` and there is at least one.
        film: condition on covariates (off, or no covariates: every block is unmodulated).
        film_hidden: width of the covariate embedding.
        global_residual: add the input tokens to the output of the last block.
        use_checkpoint: activation checkpointing of every block while training (saves memory on large volumes).
        max_windows_per_call: windows per SDPA call.
        attention: local attention inside every block (``none``, ``se``, ``cbam``, ``featureact`` or a spec
            mapping), see :class:`WindowTransformerBlock3D`.
        grid_size: token grid edge for ``featureact`` (``None``: inferred at the first forward pass).

    Forward:
        x: (B, dim, D, H, W) tokens (any memory format).
        cov_num, cov_cat: covariates, needed when FiLM is on.
        key_valid: optional (D, H, W) bool, tokens other tokens may attend to.

    Returns:
        tokens (B, dim, D, H, W) and the list of per-block outputs, each (B, dim, D, H, W) (channels-last-3d
        views of the internal channels-last tensors).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int | Sequence[int] = 4, *,
                 shift: bool = True, mlp_ratio: float = 4.0, qkv_bias: bool = True, rel_pos_bias: bool = True,
                 attn_drop: float = 0.0, drop: float = 0.0, drop_path: float = 0.0, num_numeric: int = 0,
                 cardinalities: Sequence[int] = (), film: bool = True, film_hidden: int = 64,
                 global_residual: bool = True, use_checkpoint: bool = False,
                 max_windows_per_call: int = MAX_WINDOWS_PER_CALL, attention: Any = "none",
                 grid_size: int | None = None):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}.")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}.")
        self.dim, self.depth = int(dim), int(depth)
        self.global_residual = bool(global_residual)
        self.use_checkpoint = bool(use_checkpoint)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            WindowTransformerBlock3D(dim, num_heads, window_size, shift=shift and i % 2 == 1, mlp_ratio=mlp_ratio,
                                     qkv_bias=qkv_bias, rel_pos_bias=rel_pos_bias, attn_drop=attn_drop, drop=drop,
                                     drop_path=rates[i], max_windows_per_call=max_windows_per_call,
                                     attention=attention, grid_size=grid_size)
            for i in range(depth)
        )
        has_cov = num_numeric > 0 or len(cardinalities) > 0
        self.film = (FiLM(dim, depth, num_numeric=num_numeric, cardinalities=cardinalities, hidden=film_hidden)
                     if film and has_cov else None)

    def forward(self, x: torch.Tensor, cov_num: torch.Tensor | None = None, cov_cat: torch.Tensor | None = None,
                key_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.ndim != 5 or x.shape[1] != self.dim:
            raise ValueError(f"expected (B, {self.dim}, D, H, W) tokens, got {tuple(x.shape)}.")
        gammas = betas = None
        if self.film is not None:
            gammas, betas = self.film(cov_num, cov_cat)
        h = x.movedim(1, -1)  # channels-last (B, D, H, W, C): LayerNorm and Linear act on contiguous channels
        x0 = h
        feats = []
        for i, blk in enumerate(self.blocks):
            g = None if gammas is None else gammas[:, i]
            b = None if betas is None else betas[:, i]
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                h = checkpoint(blk, h, g, b, key_valid, use_reentrant=False)
            else:
                h = blk(h, g, b, key_valid)
            feats.append(h.movedim(-1, 1))
        if self.global_residual:
            h = h + x0
        return h.movedim(-1, 1), feats
