"""A learnability check for survival models: a bright-sphere toy task trained for a few hundred steps.

Each case is a noisy volume; a fraction of cases hold a bright sphere whose radius sets a short survival time
(bigger = shorter), the others survive long; some cases are censored. :func:`run_sphere_sanity` trains a model
built from a config with its configured loss and reports, on held-out cases, the C-index of the predictions beside
the oracle C-index (of the noise-free expected times), the mean prediction with and without a sphere, and how much
softmin weight ``p`` lands on cubelets touching the sphere against the share of such cubelets (chance).

This is a self-contained smoke test of the model and loss (no data path); the engine's dummy datasets are the
real end-to-end check. Command line: ``python scripts/sphere_sanity.py``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

__all__ = ["make_sphere_cases", "sphere_mass", "run_sphere_sanity"]

log = logging.getLogger(__name__)



def make_sphere_cases(n: int, size: int, rng: np.random.Generator, *, feat_frac: float = 0.5,
                      censor_frac: float = 0.3, tmax: int = 100):
    """(image (n,1,S,S,S) in [0,1], sphere mask, time, event, has_sphere, expected_time)."""
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1).astype(np.float32)
    images = np.empty((n, 1, size, size, size), np.float32)
    masks = np.zeros((n, 1, size, size, size), bool)
    times = np.empty(n, np.float32)
    expected = np.empty(n, np.float32)
    has = rng.random(n) < feat_frac
    for i in range(n):
        img = rng.normal(0.3, 0.08, (size, size, size)).astype(np.float32)
        if has[i]:
            r = rng.uniform(size * 0.1, size * 0.22)
            c = rng.uniform(r + 1, size - r - 1, 3)
            m = ((grid - c) ** 2).sum(-1) <= r * r
            img[m] += 0.4
            masks[i, 0] = m
            # bigger sphere -> shorter survival, from about 60 (small) down to 15 (large)
            frac = (r - size * 0.1) / (size * 0.12)
            expected[i] = 60.0 - 45.0 * frac
            times[i] = expected[i] + rng.normal(0, 3)
        else:
            expected[i] = 85.0
            times[i] = expected[i] + rng.normal(0, 5)
        images[i, 0] = np.clip(img, 0, 1)
    times = np.clip(np.round(times), 1, tmax)
    event = np.ones(n, np.int64)
    cens = rng.random(n) < censor_frac
    times[cens] = np.maximum(1, np.floor(times[cens] * rng.uniform(0.5, 1.0, cens.sum())))
    event[cens] = 0
    return images, masks, times, event, has, expected


def sphere_mass(p: torch.Tensor, masks: np.ndarray, patch: int) -> tuple[float, float]:
    """Mean p-mass on cubelets touching the sphere, and the mean share of such cubelets (chance)."""
    m = torch.nn.functional.max_pool3d(torch.from_numpy(masks).float(), patch)
    m = m[..., : p.shape[2], : p.shape[3], : p.shape[4]]
    mass = (p * m).flatten(1).sum(1)
    share = m.flatten(1).mean(1)
    return float(mass.mean()), float(share.mean())



def run_sphere_sanity(cfg: Any, *, steps: int = 300, size: int = 32, n_train: int = 96, n_val: int = 48,
                      batch: int = 8, lr: float = 1e-3, warmup: int = 20, seed: int = 0, eval_every: int = 50,
                      progress: bool = False) -> dict:
    """Train ``build_model(cfg)`` with ``build_loss(cfg.loss)`` on sphere cases; return the evaluation history.

    AdamW (``cfg.optim.weight_decay``) with linear warm-up and cosine decay, gradient clipping at
    ``cfg.optim.grad_clip``; CPU, fp32.

    Returns:
        ``{"final": {...}, "history": [{...}, ...]}`` with ``c_index``, ``c_index_oracle``, ``pred_sphere``,
        ``pred_none``, ``beta``, ``p_mass_sphere``, ``p_mass_chance``, ``step``, ``train_loss``, ``seconds``.
    """
    from lifelines.utils import concordance_index

    from survival3d.losses import build_loss
    from survival3d.models import build_model

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tmax = int(cfg.loss.tmax)
    tr = make_sphere_cases(n_train, size, rng, tmax=tmax)
    va = make_sphere_cases(n_val, size, rng, tmax=tmax)
    model = build_model(cfg)
    loss_fn = build_loss(cfg.loss)
    params = list(model.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=float(cfg.optim.weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps)))
    x_tr, t_tr, e_tr = torch.from_numpy(tr[0]), torch.from_numpy(tr[2]), torch.from_numpy(tr[3])
    x_va = torch.from_numpy(va[0])

    def evaluate() -> dict:
        model.eval()
        with torch.no_grad():
            out = model(x_va)
        model.train()
        pred = out.pred.numpy()
        has = va[4]
        res = {"c_index": float(concordance_index(va[2], pred, va[3])),
               "c_index_oracle": float(concordance_index(va[2], va[5], va[3])),
               "pred_sphere": float(pred[has].mean()), "pred_none": float(pred[~has].mean()),
               "beta": float(model.head.beta.detach()) if hasattr(model.head, "beta") else None}
        if out.p is not None:
            mass, chance = sphere_mass(out.p[torch.from_numpy(has)], va[1][has], model.patch_size)
            res.update(p_mass_sphere=mass, p_mass_chance=chance)
        return res

    history = []
    t0 = time.time()
    model.train()
    for step in tqdm(range(steps), desc="sphere sanity", disable=not progress):
        idx = torch.from_numpy(rng.choice(n_train, batch, replace=False))
        res = loss_fn(model(x_tr[idx]), t_tr[idx], e_tr[idx])
        opt.zero_grad(set_to_none=True)
        res["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, float(cfg.optim.grad_clip))
        opt.step()
        sched.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            ev = evaluate() | {"step": step + 1, "train_loss": float(res["loss"].detach()),
                               "seconds": time.time() - t0}
            history.append(ev)
            log.info(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in ev.items()}))
    return {"final": history[-1], "history": history}
