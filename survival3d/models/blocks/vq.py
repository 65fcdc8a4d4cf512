"""Vector quantisation of cubelet tokens (VQ-VAE, van den Oord et al., NeurIPS 2017).

Each token (a channel vector of a (B, C, d, h, w) grid) is replaced by its nearest codebook entry; gradients pass
to the encoder straight through (:math:`z + \\mathrm{sg}(e - z)`). The codebook is learnt either by exponential
moving averages of the tokens assigned to each code (``decay > 0``; the VQ-VAE paper's appendix, also used by
VQ-VAE-2) or by gradient on the codebook loss :math:`\\lVert \\mathrm{sg}(z) - e\\rVert^2` (``decay = 0``). Either way the
encoder is pulled towards its code by the commitment loss :math:`\\beta \\lVert z - \\mathrm{sg}(e)\\rVert^2`.

Codes that fall out of use (EMA count below ``restart_threshold``) are restarted on random tokens of the current
batch (Dhariwal et al., Jukebox, 2020), so the codebook does not collapse onto a few entries. The module counts code
assignments in training until :meth:`VectorQuantizer.reset_usage`; :meth:`VectorQuantizer.usage_stats` turns the
counts into the fraction of codes used and the perplexity :math:`\\exp(-\\sum_k p_k \\log p_k)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VectorQuantizer", "usage_stats"]


def usage_stats(counts: torch.Tensor) -> dict[str, float]:
    """``codebook_usage`` (fraction of codes assigned at least once) and ``perplexity`` of assignment counts."""
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        return {"codebook_usage": float("nan"), "perplexity": float("nan")}
    p = counts / total
    ent = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codebook_usage": float((counts > 0).double().mean()), "perplexity": float(ent.exp())}


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of (B, C, d, h, w) tokens with a ``num_codes`` x ``dim`` codebook.

    Args:
        dim: token channels.
        num_codes: codebook size.
        decay: EMA decay of the codebook (0 = learn the codebook by gradient instead).
        commitment: weight β of the commitment loss.
        restart_threshold: EMA assignment count under which a code is restarted on a batch token (0 = never).
        eps: Laplace smoothing of the EMA counts.

    Forward:
        z: (B, C, d, h, w) tokens; ``valid`` optional (B or 1, 1, d, h, w) bool: only valid tokens update the
        codebook, count as usage and enter the losses.

    Returns:
        ``(z_q, loss, codes)``: quantised tokens (straight-through), the commitment (+ codebook) loss (scalar),
        and the code index per token (B, d, h, w).
    """

    def __init__(self, dim: int, num_codes: int, *, decay: float = 0.99, commitment: float = 0.25,
                 restart_threshold: float = 1e-2, eps: float = 1e-5):
        super().__init__()
        if num_codes < 2:
            raise ValueError(f"a codebook needs at least 2 codes, got {num_codes}.")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}.")
        self.dim, self.num_codes = int(dim), int(num_codes)
        self.decay, self.commitment = float(decay), float(commitment)
        self.restart_threshold, self.eps = float(restart_threshold), float(eps)
        init = torch.randn(num_codes, dim) * dim**-0.5
        if self.decay > 0:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
            self.register_buffer("ema_count", torch.ones(num_codes))  # usage EMA, for restarts only
        self.register_buffer("counts", torch.zeros(num_codes, dtype=torch.float64), persistent=False)

    def reset_usage(self) -> None:
        self.counts.zero_()

    def usage_stats(self) -> dict[str, float]:
        return usage_stats(self.counts)

    def forward(self, z: torch.Tensor, valid: torch.Tensor | None = None):
        b, c, *grid = z.shape
        if c != self.dim:
            raise ValueError(f"expected {self.dim} token channels, got {c}.")
        flat = z.movedim(1, -1).reshape(-1, c)
        code_book = self.codebook
        fz = flat.float()
        dist = fz.square().sum(1, keepdim=True) - 2 * fz @ code_book.float().t() + code_book.float().square().sum(1)[None]
        codes = dist.argmin(1)
        quant = F.embedding(codes, code_book).to(flat.dtype)
        keep = None
        if valid is not None:
            keep = valid.expand(b, 1, *grid).reshape(-1)
        sel = (lambda t: t) if keep is None else (lambda t: t[keep])
        if self.training:
            self._update(sel(fz.detach()), sel(codes))
        diff_commit = (sel(fz) - sel(quant.detach().float())).square().mean() if sel(codes).numel() else fz.sum() * 0
        loss = self.commitment * diff_commit
        if self.decay == 0 and sel(codes).numel():
            loss = loss + (sel(fz.detach()) - sel(quant.float())).square().mean()
        out = flat + (quant - flat).detach()
        z_q = out.reshape(b, *grid, c).movedim(-1, 1)
        return z_q, loss, codes.reshape(b, *grid)

    @torch.no_grad()
    def _update(self, fz: torch.Tensor, codes: torch.Tensor) -> None:
        if codes.numel() == 0:
            return
        onehot = F.one_hot(codes, self.num_codes).to(fz.dtype)
        count = onehot.sum(0)
        self.counts += count.double()
        d = self.decay if self.decay > 0 else 0.99  # without EMA codebook updates: a usage EMA for restarts only
        self.ema_count.mul_(d).add_(count, alpha=1 - d)
        if self.decay > 0:
            self.ema_sum.mul_(self.decay).add_(onehot.t() @ fz, alpha=1 - self.decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n
            self.codebook.copy_(self.ema_sum / smoothed[:, None])
        if self.restart_threshold > 0:
            dead = self.ema_count < self.restart_threshold
            n_dead = int(dead.sum())
            if n_dead:
                pick = torch.randint(0, fz.shape[0], (n_dead,), device=fz.device)
                new = fz[pick]
                self.codebook.data[dead] = new.to(self.codebook.dtype)
                self.ema_count[dead] = 1.0
                if self.decay > 0:
                    self.ema_sum[dead] = new
