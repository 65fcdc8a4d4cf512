"""Test-only stand-ins for modules other branches own (the real model/loss/dummy generator replace them when present).

They implement the documented contracts (COMMON.md): ``generate_case``, ``build_model(cfg, spec) -> SurvivalOutput``,
``build_loss(cfg.loss)``. Nothing here is imported by the package.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from survival3d.engine.components import Components
from survival3d.contracts import SurvivalOutput


def _has(module: str, name: str) -> bool:
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


REAL_MODEL = _has("survival3d.models", "build_model")
REAL_LOSS = _has("survival3d.losses", "build_loss")
REAL_DUMMY = _has("survival3d.data.dummy", "generate_case")


def sphere_case(level, index, *, size, seed, feat_frac, censor_frac, spacing, tmax):
    """A bright sphere whose radius sets the survival time (bigger = shorter); some cases have no sphere."""
    rng = np.random.default_rng([int(seed), int(level), int(index)])
    img = rng.normal(-800.0, 30.0, (size, size, size)).astype(np.float32)
    mask = np.zeros((size, size, size), np.float32)
    if rng.random() < feat_frac:
        r = rng.uniform(2.0, size / 4)
        c = rng.uniform(r + 1, size - r - 1, 3)
        zz, yy, xx = np.meshgrid(*[np.arange(size)] * 3, indexing="ij")
        inside = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
        img[inside] = rng.normal(40.0, 10.0, inside.sum())
        mask[inside] = 1
        expected = float(tmax) * (0.8 - 0.6 * (r - 2.0) / (size / 4 - 2.0))
    else:
        expected = 0.9 * float(tmax)
    t = float(np.clip(expected + rng.normal(0, 3.0), 1, tmax))
    event = 1
    if rng.random() < censor_frac:
        t, event = float(rng.uniform(1, t)), 0
    return {"id": f"s{level}_{index:03d}", "image": img, "mask": mask, "lung_mask": None, "distractor_mask": None,
            "time": t, "event": event, "expected_time": expected, "age": float(rng.normal(65, 8)),
            "sex": str(rng.choice(["F", "M"])), "affine": np.diag([spacing] * 3 + [1.0])}


class TinySoftmin(nn.Module):
    """Conv cubelet features → softplus loc → softmin over cubelets (the SurvivalOutput contract)."""

    def __init__(self, patch_size=8, width=8, n_num=0, cards=(), beta=5.0, loc_bias=50.0):
        super().__init__()
        self.patch_size = patch_size
        self.embed = nn.Conv3d(1, width, patch_size, stride=patch_size)
        self.mix = nn.Conv3d(width, width, 1)
        self.out = nn.Conv3d(width, 1, 1)
        self.num = nn.Linear(n_num, 1, bias=False) if n_num else None
        self.cat = nn.ModuleList(nn.Embedding(c, 1) for c in cards)
        self.loc_bias = nn.Parameter(torch.tensor(float(loc_bias)))
        self.log_beta = nn.Parameter(torch.tensor(math.log(beta)))

    def forward(self, image, cov_num=None, cov_cat=None, lung_mask=None):
        e = F.gelu(self.embed(image))
        tok = F.gelu(self.mix(e))
        shift = torch.zeros(image.shape[0], device=image.device)
        if self.num is not None and cov_num is not None:
            shift = shift + self.num(cov_num).squeeze(-1)
        if cov_cat is not None:
            for j, emb in enumerate(self.cat):
                shift = shift + emb(cov_cat[:, j]).squeeze(-1)
        loc = F.softplus(self.out(tok) * 10 + self.loc_bias + shift.view(-1, 1, 1, 1, 1))
        flat = loc.flatten(1)
        med = flat.median(dim=1, keepdim=True).values
        p = torch.softmax(-self.log_beta.exp() * (flat - med), dim=1)
        pred = (p * flat).sum(1)
        return SurvivalOutput(pred=pred, risk=-pred, p=p.view_as(loc), loc=loc, valid=torch.ones_like(loc, dtype=torch.bool),
                              reg_loss=pred.new_zeros(()), features={"embed": e, "block0": tok, "tokens": tok})


def tiny_model(cfg, spec):
    spec_num = spec.num_numeric if spec is not None else 0
    cards = spec.cardinalities if spec is not None else []
    return TinySoftmin(patch_size=int(cfg.model.patch_size), n_num=spec_num, cards=cards,
                       beta=float(cfg.head.beta_init), loc_bias=float(cfg.head.loc_bias_init))


class GaussianCensoredLoss(nn.Module):
    """Continuous Gaussian stand-in: uncensored −log N(t; μ, var), censored −α log P(T > c)."""

    def __init__(self, var=100.0, alpha=1.0, tmax=100):
        super().__init__()
        self.variance, self.alpha, self.tmax = float(var), float(alpha), int(tmax)

    def forward(self, out, time, event):
        sd = math.sqrt(self.variance)
        mu = out.pred.float()
        unc = 0.5 * ((time - mu) / sd) ** 2 + 0.5 * math.log(2 * math.pi * self.variance)
        cen = -self.alpha * torch.special.log_ndtr((mu - time) / sd)
        nll = torch.where(event > 0.5, unc, cen).mean()
        reg = out.reg_loss if out.reg_loss is not None else 0.0
        return {"loss": nll + reg, "nll": nll}

    def pmf(self, pred):
        t = torch.arange(1, self.tmax + 1, device=pred.device, dtype=torch.float32)
        w = torch.exp(-0.5 * (t - pred[:, None]) ** 2 / self.variance)
        return w / w.sum(1, keepdim=True)


def tiny_loss(loss_cfg):
    return GaussianCensoredLoss(var=float(loss_cfg.var_init), alpha=float(loss_cfg.alpha_cens), tmax=int(loss_cfg.tmax))


def components(force_standins: bool = False) -> Components:
    """The real parts where their modules exist, stand-ins for the missing ones."""
    return Components(
        build_model=None if (REAL_MODEL and not force_standins) else tiny_model,
        build_loss=None if (REAL_LOSS and not force_standins) else tiny_loss,
        generate_case=None if (REAL_DUMMY and not force_standins) else sphere_case,
    )


#: small model settings valid for the real model (schema keys) and the stand-in alike
TINY = [
    "model.patch_size=8", "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.window_size=2",
    "head.hidden=[16]", "logging.wandb=false", "logging.progress=false", "data.num_workers=0",
]
