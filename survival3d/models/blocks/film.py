"""Feature-wise linear modulation (FiLM) of transformer blocks by clinical covariates.

FiLM (Perez et al., AAAI 2018) scales and shifts every channel of a feature map with a (γ, β) pair predicted from
a conditioning input: :math:`\\mathrm{FiLM}(x) = \\gamma(c) \\odot x + \\beta(c)`. Here the conditioning input is a
patient's covariates (standardised numeric columns and embedded categorical ones), one (γ, β) per transformer
block. The output layer is zero-initialised and γ is parametrised as 1 + Δγ, so the network starts as the
unconditioned model exactly (γ = 1, β = 0) and learns how much the covariates should matter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CovariateEmbedding", "CovariateLogTimeShift", "FiLM", "embedding_dim_for"]


def embedding_dim_for(cardinality: int, max_dim: int = 16) -> int:
    """Embedding width for a categorical column: ``round(1.6 * n ** 0.56)`` capped at ``max_dim`` (the fast.ai rule
    of thumb, Howard & Gugger, 2020)."""
    return int(max(1, min(max_dim, round(1.6 * cardinality ** 0.56))))


def _checked_columns(num_numeric: int, cardinalities: Sequence[int], owner: str) -> list[int]:
    """The categorical cardinalities as ints; ValueError unless there is at least one valid column."""
    cardinalities = [int(c) for c in cardinalities]
    if num_numeric < 0:
        raise ValueError(f"num_numeric must be >= 0, got {num_numeric}.")
    if any(c < 1 for c in cardinalities):
        raise ValueError(f"every categorical cardinality must be >= 1, got {cardinalities}.")
    if num_numeric == 0 and not cardinalities:
        raise ValueError(f"{owner} needs at least one numeric or categorical column.")
    return cardinalities


def _check_covariates(cov_num: torch.Tensor | None, cov_cat: torch.Tensor | None, num_numeric: int,
                      num_categorical: int) -> None:
    """ValueError unless ``cov_num`` is (B, num_numeric) and ``cov_cat`` (B, num_categorical) where those are > 0."""
    for name, x, n in (("cov_num", cov_num, num_numeric), ("cov_cat", cov_cat, num_categorical)):
        if n and (x is None or x.ndim != 2 or x.shape[1] != n):
            raise ValueError(f"expected {name} of shape (B, {n}), got {None if x is None else tuple(x.shape)}.")


class CovariateEmbedding(nn.Module):
    """Numeric covariates plus one ``nn.Embedding`` per categorical column, concatenated and passed through an MLP.

    Args:
        num_numeric: number of numeric columns (already standardised by the data path).
        cardinalities: levels per categorical column (including an 'unknown' slot).
        hidden: width of the MLP's hidden layer and of the output code.

    Forward:
        cov_num: (B, num_numeric) float or ``None`` when there are no numeric columns.
        cov_cat: (B, len(cardinalities)) long or ``None`` when there are no categorical columns.

    Returns:
        (B, hidden) covariate code.
    """

    def __init__(self, num_numeric: int = 0, cardinalities: Sequence[int] = (), *, hidden: int = 64):
        super().__init__()
        cardinalities = _checked_columns(num_numeric, cardinalities, "CovariateEmbedding")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}.")
        self.num_numeric = int(num_numeric)
        self.cardinalities = cardinalities
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim_for(c)) for c in cardinalities)
        in_dim = num_numeric + sum(e.embedding_dim for e in self.embeddings)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.out_dim = hidden

    def forward(self, cov_num: torch.Tensor | None = None, cov_cat: torch.Tensor | None = None) -> torch.Tensor:
        _check_covariates(cov_num, cov_cat, self.num_numeric, len(self.cardinalities))
        parts = []
        if self.num_numeric:
            parts.append(cov_num.float())
        if self.cardinalities:
            parts += [emb(cov_cat[:, j].long()) for j, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, 1))


class FiLM(nn.Module):
    """Covariates -> (γ, β) for each of ``num_blocks`` blocks of ``channels`` channels; identity at init.

    Args:
        channels: channels of the modulated features.
        num_blocks: how many blocks get their own (γ, β).
        num_numeric, cardinalities: the covariates (see :class:`CovariateEmbedding`).
        hidden: width of the covariate embedding (held as ``self.encoder``; the name is part of the state_dict).

    Forward:
        cov_num, cov_cat: as for :class:`CovariateEmbedding`.

    Returns:
        gamma, beta: (B, num_blocks, channels) each; apply to block i with :meth:`modulate`.
    """

    def __init__(self, channels: int, num_blocks: int, *, num_numeric: int = 0, cardinalities: Sequence[int] = (),
                 hidden: int = 64):
        super().__init__()
        if channels < 1 or num_blocks < 1:
            raise ValueError(f"channels {channels} and num_blocks {num_blocks} must be positive.")
        self.channels, self.num_blocks = int(channels), int(num_blocks)
        self.encoder = CovariateEmbedding(num_numeric, cardinalities, hidden=hidden)
        self.to_film = nn.Linear(self.encoder.out_dim, 2 * num_blocks * channels)
        nn.init.zeros_(self.to_film.weight)
        nn.init.zeros_(self.to_film.bias)

    def forward(self, cov_num: torch.Tensor | None = None,
                cov_cat: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.to_film(self.encoder(cov_num, cov_cat)).unflatten(1, (2, self.num_blocks, self.channels))
        d_gamma, beta = out.unbind(1)
        return 1.0 + d_gamma, beta

    @staticmethod
    def modulate(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """``gamma * x + beta`` for channels-last x (B, ..., C) and gamma, beta (B, C)."""
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        return x * gamma.reshape(shape).to(x.dtype) + beta.reshape(shape).to(x.dtype)


class CovariateLogTimeShift(nn.Module):
    r"""A linear predictor on log-time from the covariates: the accelerated-failure-time part of a survival model.

    .. math::
        s(x) = \sum_k w_k \, x^\mathrm{num}_k + \sum_j c_j[x^\mathrm{cat}_j]

    one coefficient :math:`w_k` per (standardised) numeric column and one :math:`c_j[l]` per level :math:`l` of each
    categorical column (a one-hot linear term, the 'unknown' slot included). All start at 0, so :math:`s = 0` and a
    model that multiplies its time by :math:`e^{s}` starts as the model without it. Unlike FiLM, which reaches the
    time only through the image features, :math:`s` shifts log-time directly, as the covariates of a log-normal AFT
    model do (``ClinicalCovariates`` of dummy6: age, sex and smoking add to log-time).

    Args:
        num_numeric, cardinalities: the covariates (see :class:`CovariateEmbedding`).

    Forward:
        cov_num, cov_cat: as for :class:`CovariateEmbedding`.

    Returns:
        (B,) float32 shift of log-time.
    """

    def __init__(self, num_numeric: int = 0, cardinalities: Sequence[int] = ()):
        super().__init__()
        cardinalities = _checked_columns(num_numeric, cardinalities, "CovariateLogTimeShift")
        self.num_numeric = int(num_numeric)
        self.cardinalities = cardinalities
        self.numeric = nn.Linear(num_numeric, 1, bias=False) if num_numeric else None
        self.levels = nn.ModuleList(nn.Embedding(c, 1) for c in cardinalities)
        for prm in self.parameters():
            nn.init.zeros_(prm)

    def forward(self, cov_num: torch.Tensor | None = None, cov_cat: torch.Tensor | None = None) -> torch.Tensor:
        _check_covariates(cov_num, cov_cat, self.num_numeric, len(self.cardinalities))
        terms = [emb(cov_cat[:, j].long())[:, 0] for j, emb in enumerate(self.levels)]
        if self.numeric is not None:
            # elementwise, not a matmul: autocast leaves it in float32 (a bf16 shift would move times by ~0.4 %)
            terms.append((cov_num.float() * self.numeric.weight[0].float()).sum(1))
        return torch.stack([t.float() for t in terms], 1).sum(1)
