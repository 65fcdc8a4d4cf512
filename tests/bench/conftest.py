"""Fixtures for the benchmark tests.

``survival_builders`` makes sure ``survival3d.models.build_model`` and ``survival3d.losses.build_loss`` exist: the
real ones when the model package provides them, otherwise a small stand-in that honours the SurvivalOutput
contract (patch-embed conv → SDPA transformer blocks with FiLM → softmin head; discretised-Gaussian censored
loss). The stand-in lives only here, for testing the benchmark machinery before the model is merged; the tests
assert nothing that depends on it.
"""

from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

import survival3d.losses
import survival3d.models
from survival3d.contracts import CovariateSpec, SurvivalOutput


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(self.norm1(x)), "b n (three h c) -> three b h n c", three=3, h=self.heads)
        x = x + self.proj(rearrange(F.scaled_dot_product_attention(q, k, v), "b h n c -> b n (h c)"))
        x = x + self.mlp(self.norm2(x))
        return x * gamma[:, None] + beta[:, None]


class _StandInSurvivalModel(nn.Module):
    def __init__(self, cfg, spec: CovariateSpec | None):
        super().__init__()
        m = cfg.model
        self.patch_size, dim, self.depth = int(m.patch_size), int(m.embed_dim), int(m.depth)
        spec = spec or CovariateSpec()
        self.embed = nn.Conv3d(int(m.in_channels), dim, self.patch_size, stride=self.patch_size)
        self.blocks = nn.ModuleList(_Block(dim, int(m.num_heads)) for _ in range(self.depth))
        self.cat_embed = nn.ModuleList(nn.Embedding(c, 4) for c in spec.cardinalities)
        cov_dim = spec.num_numeric + 4 * len(spec.cardinalities)
        self.film = nn.Linear(max(cov_dim, 1), 2 * dim * self.depth)
        nn.init.zeros_(self.film.weight), nn.init.zeros_(self.film.bias)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 16, bias=False), nn.GELU(), nn.Linear(16, 1, bias=False))
        self.loc_bias = nn.Parameter(torch.tensor(float(cfg.head.loc_bias_init)))
        self.log_beta = nn.Parameter(torch.tensor(math.log(float(cfg.head.beta_init))))

    def forward(self, image, cov_num=None, cov_cat=None, lung_mask=None) -> SurvivalOutput:
        b, _, *spatial = image.shape
        pad = [x for s in reversed(spatial) for x in (0, -s % self.patch_size)]
        x = self.embed(F.pad(image, pad))
        d, h, w = x.shape[2:]
        valid = F.pad(torch.ones_like(image[:, :1]), pad)
        if lung_mask is not None:
            valid = valid * F.pad(lung_mask.to(image.dtype), pad)
        valid = F.avg_pool3d(valid, self.patch_size) >= 0.5
        covs = [t for t in (cov_num,) if t is not None]
        covs += [emb(cov_cat[:, i]) for i, emb in enumerate(self.cat_embed)] if cov_cat is not None else []
        cov = torch.cat(covs, 1) if covs else image.new_zeros(b, 1)
        gammas, betas = rearrange(self.film(cov), "b (two k c) -> two k b c", two=2, k=self.depth)
        tokens = rearrange(x, "b c d h w -> b (d h w) c")
        features = {"embed": x}
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, 1 + gammas[i], betas[i])
            features[f"block{i}"] = rearrange(tokens, "b (d h w) c -> b c d h w", d=d, h=h, w=w)
        features["tokens"] = features[f"block{self.depth - 1}"] if self.depth else x
        loc = F.softplus(self.head(tokens).float() + self.loc_bias)
        loc = rearrange(loc, "b (d h w) 1 -> b 1 d h w", d=d, h=h, w=w)
        flat_loc, flat_valid = loc.flatten(1), valid.flatten(1)
        logits = -self.log_beta.exp() * (flat_loc - flat_loc.median(dim=1, keepdim=True).values)
        p = torch.softmax(logits.masked_fill(~flat_valid, float("-inf")), dim=1)
        pred = (p * flat_loc).sum(1)
        return SurvivalOutput(
            pred=pred, risk=-pred, p=p.view_as(loc), loc=loc, valid=valid, reg_loss=pred.new_zeros(()), features=features
        )


class _StandInCensoredLoss(nn.Module):
    def __init__(self, tmax: int = 100, var_init: float = 100.0, alpha_cens: float = 1.0, **_):
        super().__init__()
        self.tmax, self.variance, self.alpha = int(tmax), float(var_init), float(alpha_cens)

    def pmf(self, pred):
        t = torch.arange(1, self.tmax + 1, device=pred.device, dtype=torch.float32)
        return torch.softmax(-((t - pred.float()[:, None]) ** 2) / (2 * self.variance), dim=1)

    def forward(self, out, time, event):
        pmf = self.pmf(out.pred)
        idx = time.long().clamp(1, self.tmax) - 1
        p_t = pmf.gather(1, idx[:, None]).squeeze(1)
        surv = (pmf.cumsum(1).gather(1, idx[:, None]).squeeze(1) * -1 + 1).clamp_min(1e-12)
        nll = torch.where(event > 0, -p_t.clamp_min(1e-12).log(), -self.alpha * surv.log()).mean()
        return {"loss": nll + out.reg_loss, "nll": nll}


def _standin_build_model(cfg, covariate_spec=None):
    return _StandInSurvivalModel(cfg, covariate_spec)


def _standin_build_loss(cfg_loss):
    return _StandInCensoredLoss(tmax=cfg_loss.tmax, var_init=cfg_loss.var_init, alpha_cens=cfg_loss.alpha_cens)


@pytest.fixture
def survival_builders(monkeypatch):
    """``(build_model, build_loss)``: the real builders when present, otherwise the stand-in (patched in)."""
    build_model = getattr(survival3d.models, "build_model", None)
    build_loss = getattr(survival3d.losses, "build_loss", None)
    if build_model is None or build_loss is None:
        monkeypatch.setattr(survival3d.models, "build_model", _standin_build_model, raising=False)
        monkeypatch.setattr(survival3d.losses, "build_loss", _standin_build_loss, raising=False)
        return _standin_build_model, _standin_build_loss
    return build_model, build_loss
