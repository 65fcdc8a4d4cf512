"""Survival heads: per-cubelet tokens -> one predicted survival time per volume (+ where it came from).

Every head is registered in :data:`HEADS` and built as ``HEADS.build(cfg.head, in_dim=C)``. A head's forward takes
``tokens`` (B, C, d, h, w) and ``valid`` (B, 1, d, h, w) bool (cubelets that count) and returns a dict with
``pred`` (B,), ``p``, ``loc`` (B, 1, d, h, w) or ``None``, and ``reg_loss`` (scalar). Heads compute their outputs in
float32 whatever the autocast dtype of the tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from survival3d.registry import Registry

__all__ = ["HEADS", "SoftminHead", "MeanPoolHead", "cubelet_valid_mask", "masked_softmin", "masked_soft_minimum",
           "masked_harmonic_mean"]

HEADS: Registry[nn.Module] = Registry("head")
# what each cubelet's time sees besides its own token (SoftminHead ``context``): the valid tokens pooled by these
HEAD_CONTEXTS = {"none": (), "mean": ("mean",), "max": ("max",), "mean_max": ("mean", "max")}
HEAD_AGGREGATES = ("weighted_mean", "mean_hazard", "mean_rate")  # how SoftminHead turns the cubelets' times into one (``aggregate``)


def cubelet_valid_mask(pad_valid: torch.Tensor, lung_frac: torch.Tensor | None = None,
                       lung_frac_min: float = 0.5) -> torch.Tensor:
    """Cubelets a head may use: not padding and, with a lung mask, at least ``lung_frac_min`` lung.

    A volume whose lung mask leaves no cubelet falls back to all non-padding cubelets (never an empty softmin).

    Args:
        pad_valid: (1 or B, 1, d, h, w) bool, cubelets that are not padding.
        lung_frac: optional (B, 1, d, h, w), the lung fraction of each cubelet (average-pooled lung mask).

    Returns:
        (B, 1, d, h, w) bool.
    """
    if lung_frac is None:
        return pad_valid
    valid = pad_valid & (lung_frac >= lung_frac_min)
    some = valid.flatten(1).any(1).reshape(-1, 1, 1, 1, 1)
    return torch.where(some, valid, pad_valid.expand_as(valid))


def _softmin_logits(loc: torch.Tensor, valid: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``-beta (loc - m)`` on the valid entries (``-inf`` elsewhere) and ``m``, the row's median valid loc (detached)."""
    med = torch.nanmedian(loc.detach().masked_fill(~valid, float("nan")), dim=1, keepdim=True).values
    return (-beta * (loc - med)).masked_fill(~valid, float("-inf")), med


def masked_softmin(loc: torch.Tensor, valid: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    r"""Softmin weights over the valid entries of each row.

    .. math::
        p_i = \frac{\exp(-\beta (\ell_i - m))}{\sum_{j \in V} \exp(-\beta (\ell_j - m))}, \quad i \in V;
        \qquad p_i = 0, \quad i \notin V,

    with :math:`m = \operatorname{median}_{j \in V} \ell_j`. Subtracting :math:`m` leaves :math:`p` unchanged
    (softmin is invariant to a common shift of :math:`\ell`); it keeps the logits near 0.

    Args:
        loc: (B, n) float32.
        valid: (B, n) bool with at least one True per row.
        beta: positive scalar tensor.
    """
    return torch.softmax(_softmin_logits(loc, valid, beta)[0], dim=1)


def masked_soft_minimum(loc: torch.Tensor, valid: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    r"""The log-mean-exp soft minimum of the valid entries of each row, (B, n) -> (B,):

    .. math::
        \hat\mu = -\frac{1}{\beta} \log \frac{1}{|V|} \sum_{i \in V} e^{-\beta \ell_i}

    Read as hazards: cubelet i contributes :math:`h_i = e^{-\beta \ell_i}`, the volume's hazard is their mean and
    :math:`\hat\mu` the time of that hazard; :func:`masked_softmin`'s :math:`p_i = h_i / \sum_j h_j` is each cubelet's
    share of it. Unlike :math:`\sum_i p_i \ell_i`, it falls as more cubelets are low: k of N cubelets at
    :math:`\ell = L` and the rest far higher give :math:`\hat\mu \approx L + \log(N/k) / \beta`, so two equal
    lesions predict a shorter time than one. Equivalently :math:`\hat\mu = \sum_i p_i \ell_i + \mathrm{KL}(p \,\|\,
    U_V) / \beta` with :math:`U_V` uniform on V: never below the weighted mean, above it by how concentrated p is. It
    lies between :math:`\min_V \ell` and the mean of :math:`\ell` over
    V, tends to the minimum as :math:`\beta \to \infty` and to the mean as :math:`\beta \to 0` (exactly the mean
    at :math:`\beta = 0`, the first epoch of a β warm-up).
    """
    return _soft_minimum(*_softmin_logits(loc, valid, beta), loc, valid, beta)


def _soft_minimum(logits: torch.Tensor, med: torch.Tensor, loc: torch.Tensor, valid: torch.Tensor,
                  beta: torch.Tensor) -> torch.Tensor:
    """:func:`masked_soft_minimum` from the softmin's own logits and median (:func:`_softmin_logits`), so a head that
    needs both p and the soft minimum computes them once. At beta = 0 the logits are 0, ``lse - log n`` is 0 and the
    division is by 1: the branch ``where`` does not take stays finite, and so does its gradient."""
    n = valid.sum(1).to(loc.dtype)
    safe = torch.where(beta > 0, beta, torch.ones_like(beta))
    lme = med[:, 0] - (torch.logsumexp(logits, dim=1) - n.log()) / safe
    mean = loc.masked_fill(~valid, 0.0).sum(1) / n
    return torch.where(beta > 0, lme, mean)


RATE_LOC_MIN = 1e-4  # time units: the smallest loc masked_harmonic_mean takes a rate of (softplus can underflow to 0)


def masked_harmonic_mean(loc: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    r"""The harmonic mean of the valid entries of each row, (B, n) -> (B,):

    .. math::
        \hat\mu = \Big(\frac{1}{|V|} \sum_{i \in V} \ell_i^{-1}\Big)^{-1}

    Read as rates: cubelet i proposes the time :math:`\ell_i` the patient would have if the whole volume looked like
    it, i.e. a rate :math:`\ell_i^{-1}`; the volume's rate is the mean of the cubelets' rates and :math:`\hat\mu` its
    time. k of N cubelets at L and the rest at H give :math:`\hat\mu = N / (k/L + (N-k)/H)`, about :math:`L N / k`
    when the lesions' rate dominates: twice the diseased volume, half the time, as in an accelerated failure time
    model on the summed burden (``LogNormalBurdenTimes``: :math:`T \propto (1 + b)^{-1}`). It lies between the minimum
    and the arithmetic mean of the valid entries and does not depend on β. Entries below ``RATE_LOC_MIN`` count as
    ``RATE_LOC_MIN`` (a float32 softplus can return exactly 0).
    """
    rate = torch.where(valid, loc.clamp_min(RATE_LOC_MIN).reciprocal(), torch.zeros_like(loc))
    return valid.sum(1).to(loc.dtype) / rate.sum(1)


class _MLP(nn.Sequential):
    """LayerNorm -> [Linear -> GELU] x len(hidden) -> Linear(., out)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int = 1, *, bias: bool = True):
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h, bias=bias), nn.GELU()]
            d = h
        layers.append(nn.Linear(d, out_dim, bias=bias))
        super().__init__(*layers)


def _check_common(in_dim: int, hidden: Sequence[int], loc_bias_init: float, lung_frac_min: float,
                  loc_scale: float) -> list[int]:
    hidden = [int(h) for h in hidden]
    if in_dim < 1:
        raise ValueError(f"in_dim must be >= 1, got {in_dim}.")
    if not 1 <= len(hidden) <= 2 or min(hidden) < 1:
        raise ValueError(f"hidden must list 1 or 2 positive layer widths, got {hidden}.")
    if loc_bias_init <= 0:
        raise ValueError(f"loc_bias_init must be > 0 (a survival time), got {loc_bias_init}.")
    if not loc_scale > 0:
        raise ValueError(f"loc_scale must be > 0, got {loc_scale}.")
    if not 0.0 <= lung_frac_min <= 1.0:
        raise ValueError(f"lung_frac_min must be in [0, 1], got {lung_frac_min}.")
    return hidden


@HEADS.register("softmin")
class SoftminHead(nn.Module):
    r"""Softmin localisation head: each cubelet proposes a survival time, the shortest ones win.

    .. math::
        \ell_i = \operatorname{softplus}(s \cdot \mathrm{MLP}(\mathrm{LN}(x_i)) + b), \qquad
        p = \operatorname{softmin}_{V}(\beta (\ell - \operatorname{median}_V \ell)), \qquad
        \hat\mu = \sum_{i \in V} p_i \ell_i

    With ``context="mean"`` every cubelet also sees the whole volume: :math:`\ell_i = \operatorname{softplus}(s \cdot
    \mathrm{MLP}([\mathrm{LN}(x_i), \mathrm{LN}_g(\bar x)]) + b)` with :math:`\bar x = \frac{1}{|V|}\sum_{j \in V}
    x_j` the mean valid token, so the winning cubelet's time can depend on how much of the volume is diseased (several
    nodules, a pattern's extent) while p still points at the cubelets that are. ``context="max"`` uses the channel-wise
    maximum over the valid tokens instead of :math:`\bar x` (a rare finding, one small nodule among hundreds of lung
    cubelets, is not diluted by |V|: each channel's gradient reaches its arg-max token whole), and ``"mean_max"`` both,
    :math:`\mathrm{LN}_g([\bar x, \max_V x])`.

    With ``aggregate="mean_hazard"`` the volume's time is the log-mean-exp soft minimum of
    :func:`masked_soft_minimum`, :math:`\hat\mu = -\beta^{-1} \log \operatorname{mean}_V e^{-\beta \ell_i}`, instead of
    :math:`\sum_i p_i \ell_i`: each cubelet contributes a hazard :math:`e^{-\beta \ell_i}`, so the burden adds up
    (two equal lesions predict a shorter time than one), and p is unchanged (each cubelet's share of the hazard).
    With ``aggregate="mean_rate"`` it is the harmonic mean of :func:`masked_harmonic_mean`, :math:`\hat\mu =
    (\operatorname{mean}_V \ell_i^{-1})^{-1}`: each cubelet contributes a rate, so k lesion cubelets among N give about
    :math:`L N / k` (the time scales inversely with the diseased volume, whatever β); p is unchanged and β acts on the
    map (and the regularisers) only.

    The MLP has no biases and GELU activations (1-2 hidden layers); the loc bias :math:`b` and the inverse
    temperature :math:`\beta > 0` are learnable; the fixed scale :math:`s` (``loc_scale``) converts the MLP's
    O(1) outputs to time units, so per-cubelet times can spread over the time range within a few hundred
    optimiser steps. :math:`V` are the valid cubelets (not padding, enough lung). ``p`` is
    the heatmap: a lesion that shortens survival gets low :math:`\ell_i` and therefore the weight.

    Optional regularisers (``reg_loss``, averaged over the batch):

    .. math::
        L_\mathrm{ent} = w_\mathrm{ent} \sum_i p_i \log p_i = -w_\mathrm{ent} H(p), \qquad
        L_\mathrm{smooth} = w_\mathrm{smooth} \operatorname{mean}_{(i,j) \in \mathcal{N}_V} (\ell_i - \ell_j)^2

    where :math:`\mathcal{N}_V` are face-neighbouring pairs of valid cubelets. A positive ``entropy_weight`` rewards
    spread-out ``p`` (against early lock-on to a spurious cubelet); a negative one sharpens ``p``.

    β warm-up: in training mode the softmin uses :math:`r \beta` with the factor :math:`r \in [0, 1]` of
    :meth:`set_beta_scale` (1 unless a schedule sets it, see ``train.beta_warmup_epochs``). With :math:`r = 0` the map
    is uniform over the valid cubelets, :math:`\hat\mu` is their mean time and every cubelet's time gets gradient, so the
    MLP can learn what a lesion looks like before the softmin sharpens onto the lowest times. Evaluation always uses
    the full β: validation scores the model that is deployed.

    Args:
        in_dim: token channels.
        hidden: widths of the 1-2 hidden layers.
        beta_init: initial β (research name BETA_HEAD).
        learn_beta: learn β (parametrised as log β, so it stays positive).
        loc_bias_init: initial loc bias b (research name loc_bias), a typical survival time.
        learn_loc_bias: learn b.
        loc_scale: s, time units per unit of MLP output.
        lung_frac_min: lung fraction a cubelet needs to be valid when a lung mask is given (used by the model via
            :func:`cubelet_valid_mask`).
        entropy_weight, smooth_weight: regulariser weights (0 = off).
        map_upsample: f ≥ 1; with f > 1, :math:`\ell` of the valid cubelets is interpolated trilinearly
            (``align_corners=False``: cubelet centres keep their values; invalid cubelets take no part, see
            :func:`_masked_upsample`) onto a grid f times finer, each fine cell inherits its cubelet's validity,
            and p, :math:`\hat\mu` and the regularisers use the fine grid (``p``/``loc``/``valid`` are returned on
            it). The map's peak then sits at the sub-cubelet nearest the neighbouring low-loc cubelets instead of the
            centre of a rim cubelet.
        context: ``"none"`` (each cubelet's time from its own token), ``"mean"`` (its token and the mean valid
            token of the volume, above), ``"max"`` (its token and the channel-wise maximum) or ``"mean_max"``.
        aggregate: ``"weighted_mean"`` (:math:`\sum_i p_i \ell_i`), ``"mean_hazard"`` or ``"mean_rate"`` (above).
    """

    has_localisation = True

    def __init__(self, in_dim: int, *, hidden: Sequence[int] = (64,), beta_init: float = 5.0,
                 learn_beta: bool = True, loc_bias_init: float = 50.0, learn_loc_bias: bool = True,
                 loc_scale: float = 10.0, lung_frac_min: float = 0.5, entropy_weight: float = 0.0,
                 smooth_weight: float = 0.0, map_upsample: int = 1, context: str = "none",
                 aggregate: str = "weighted_mean"):
        super().__init__()
        hidden = _check_common(in_dim, hidden, loc_bias_init, lung_frac_min, loc_scale)
        if context not in HEAD_CONTEXTS:
            raise ValueError(f"context must be one of {', '.join(HEAD_CONTEXTS)}, got {context!r}.")
        if aggregate not in HEAD_AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(HEAD_AGGREGATES)}, got {aggregate!r}.")
        self.context = context
        self.aggregate = aggregate
        if int(map_upsample) != map_upsample or map_upsample < 1:
            raise ValueError(f"map_upsample must be an integer >= 1, got {map_upsample}.")
        self.map_upsample = int(map_upsample)
        if beta_init <= 0:
            raise ValueError(f"beta_init must be > 0, got {beta_init}.")
        if smooth_weight < 0:
            raise ValueError(f"smooth_weight must be >= 0, got {smooth_weight}.")
        self.lung_frac_min = float(lung_frac_min)
        self.loc_scale = float(loc_scale)
        self.entropy_weight = float(entropy_weight)
        self.smooth_weight = float(smooth_weight)
        self._pools = HEAD_CONTEXTS[context]
        k = len(self._pools)
        self.context_norm = nn.LayerNorm(k * in_dim) if k else None
        self.mlp = _MLP(in_dim * (1 + k), hidden, 1, bias=False)
        self.log_beta = nn.Parameter(torch.tensor(math.log(beta_init)), requires_grad=learn_beta)
        self.loc_bias = nn.Parameter(torch.tensor(float(loc_bias_init)), requires_grad=learn_loc_bias)
        # a buffer, not a float attribute: changing it must not recompile a compiled model; not saved with the weights
        self.register_buffer("beta_scale", torch.ones(()), persistent=False)

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()

    def set_beta_scale(self, r: float) -> None:
        """The training-mode factor r ∈ [0, 1] on β (the β warm-up; evaluation always uses the full β)."""
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"the β warm-up factor must be in [0, 1], got {r}.")
        self.beta_scale.fill_(float(r))

    def locs(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, d, h, w) tokens -> (B, 1, d, h, w) float32 per-cubelet times (> 0). ``valid`` ((1 or B, 1, d, h, w)
        bool) is needed with a ``context`` other than ``"none"``, which pools the valid tokens."""
        x = tokens.movedim(1, -1)
        if self.context_norm is not None:
            if valid is None:
                raise ValueError(f"a head with context={self.context!r} needs the valid cubelets.")
            g = torch.cat([_CONTEXT_POOLS[name](tokens, valid) for name in self._pools], 1)
            g = self.context_norm(g.to(x.dtype))[:, None, None, None, :].expand(*x.shape[:-1], -1)
            x = torch.cat([x, g], -1)
        raw = self.mlp(x).float().movedim(-1, 1)
        return F.softplus(self.loc_scale * raw + self.loc_bias)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        loc = self.locs(tokens, valid)
        if self.map_upsample > 1:  # a finer map: loc between cubelet centres, p and pred over the fine grid
            f = self.map_upsample
            loc = _masked_upsample(loc, valid, f)
            valid = valid.repeat_interleave(f, 2).repeat_interleave(f, 3).repeat_interleave(f, 4)
        valid = valid.expand_as(loc)
        b = loc.shape[0]
        beta = self.beta * self.beta_scale if self.training else self.beta
        flat_loc, flat_valid = loc.reshape(b, -1), valid.reshape(b, -1)
        logits, med = _softmin_logits(flat_loc, flat_valid, beta)  # the softmin of masked_softmin, computed once
        p = torch.softmax(logits, dim=1).reshape(loc.shape)
        if self.aggregate == "mean_hazard":
            pred = _soft_minimum(logits, med, flat_loc, flat_valid, beta)
        elif self.aggregate == "mean_rate":
            pred = masked_harmonic_mean(flat_loc, flat_valid)
        else:
            pred = (p * loc).flatten(1).sum(1)
        reg = loc.new_zeros(())
        if self.entropy_weight:
            reg = reg + self.entropy_weight * _neg_entropy(p)
        if self.smooth_weight:
            reg = reg + self.smooth_weight * _smoothness(loc, valid)
        return {"pred": pred, "p": p, "loc": loc, "valid": valid, "reg_loss": reg}


def _masked_mean(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, C, d, h, w) tokens, (1 or B, 1, d, h, w) bool -> (B, C) float32 mean of the valid tokens."""
    w = valid.to(torch.float32).expand(tokens.shape[0], 1, *tokens.shape[2:])
    return (tokens.float() * w).flatten(2).sum(2) / w.flatten(2).sum(2).clamp_min(1.0)


def _masked_max(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, C, d, h, w) tokens, (1 or B, 1, d, h, w) bool -> (B, C) float32 channel-wise maximum over the valid tokens
    (0 for a volume without one). The gradient of each channel goes to its arg-max token alone, undiluted by the number
    of cubelets (the mean gives each token 1/|V| of it): a rare feature, one nodule among ~700 lung cubelets, reaches
    every cubelet's time at full strength."""
    v = valid.expand(tokens.shape[0], 1, *tokens.shape[2:]).flatten(2)
    x = tokens.float().flatten(2).masked_fill(~v, float("-inf")).amax(2)
    return torch.where(v.any(2), x, torch.zeros_like(x))


_CONTEXT_POOLS = {"mean": _masked_mean, "max": _masked_max}


def _masked_upsample(loc: torch.Tensor, valid: torch.Tensor, f: int) -> torch.Tensor:
    r"""Trilinear upsampling by f of the valid cubelets' loc alone (normalised interpolation).

    .. math:: \ell^\mathrm{fine} = \frac{\mathcal{I}(v \, \ell)}{\mathcal{I}(v)}

    with :math:`\mathcal{I}` trilinear interpolation (``align_corners=False``, edge-clamped) and :math:`v` the
    validity: an invalid cubelet (outside the lungs, padding) never pulls its neighbours' fine cells towards its loc.
    Every fine cell of a valid cubelet has :math:`\mathcal{I}(v) > 0` (its own centre carries weight ≥ (1/2)^3); where
    every cubelet is valid, :math:`\mathcal{I}(v) = 1` and this is plain trilinear interpolation (bit for bit at f = 2).
    Fine cells with :math:`\mathcal{I}(v) = 0` (inside invalid cubelets, which the softmin ignores) get the plain
    interpolation."""
    v = valid.expand_as(loc).to(loc.dtype)
    up = dict(scale_factor=f, mode="trilinear", align_corners=False)
    num = F.interpolate(loc * v, **up)
    den = F.interpolate(v, **up)
    plain = F.interpolate(loc, **up)
    return torch.where(den > 0, num / den.clamp_min(1e-12), plain)


def _neg_entropy(p: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of Σ p log p, with a gradient that stays finite when some p underflow to exactly 0 (a sharp
    softmin map): ``xlogy``'s derivative log p + 1 is −inf there, and the softmax backward turns 0 · inf into NaN.
    The value equals ``xlogy(p, p)`` wherever p ≥ 1e-30."""
    return (p * p.clamp_min(1e-30).log()).flatten(1).sum(1).mean()


def _smoothness(loc: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of loc between face-neighbouring valid cubelets (0 when there are none)."""
    total = loc.new_zeros(())
    count = loc.new_zeros(())
    for dim in (2, 3, 4):
        if loc.shape[dim] < 2:
            continue
        n = loc.shape[dim]
        diff = loc.narrow(dim, 1, n - 1) - loc.narrow(dim, 0, n - 1)
        both = valid.narrow(dim, 1, n - 1) & valid.narrow(dim, 0, n - 1)
        total = total + (diff.square() * both).sum()
        count = count + both.sum()
    return total / count.clamp_min(1)


@HEADS.register("meanpool")
class MeanPoolHead(nn.Module):
    r"""Ablation head without localisation: mean of the valid tokens, then an MLP to one time.

    .. math::
        \hat\mu = \operatorname{softplus}\!\big(s \cdot \mathrm{MLP}(\mathrm{LN}(\tfrac{1}{|V|}\textstyle\sum_{i\in V} x_i))
        + b\big)

    Args:
        in_dim, hidden, loc_bias_init, learn_loc_bias, loc_scale, lung_frac_min: as for :class:`SoftminHead`.
        beta_init, learn_beta, map_upsample, context, aggregate: accepted and ignored, so that a config can switch
            heads by name alone.
        entropy_weight, smooth_weight: must be 0 (there is no heatmap to regularise).
    """

    has_localisation = False

    def __init__(self, in_dim: int, *, hidden: Sequence[int] = (64,), loc_bias_init: float = 50.0,
                 learn_loc_bias: bool = True, loc_scale: float = 10.0, lung_frac_min: float = 0.5,
                 beta_init: float = 5.0, learn_beta: bool = True, entropy_weight: float = 0.0,
                 smooth_weight: float = 0.0, map_upsample: int = 1, context: str = "none",
                 aggregate: str = "weighted_mean"):
        super().__init__()
        hidden = _check_common(in_dim, hidden, loc_bias_init, lung_frac_min, loc_scale)
        if entropy_weight or smooth_weight:
            raise ValueError(f"meanpool head has no heatmap to regularise; got entropy_weight {entropy_weight}, "
                             f"smooth_weight {smooth_weight} (set them to 0).")
        self.lung_frac_min = float(lung_frac_min)
        self.loc_scale = float(loc_scale)
        self.mlp = _MLP(in_dim, hidden, 1, bias=True)
        self.loc_bias = nn.Parameter(torch.tensor(float(loc_bias_init)), requires_grad=learn_loc_bias)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = _masked_mean(tokens, valid)
        pred = F.softplus(self.loc_scale * self.mlp(pooled).float()[:, 0] + self.loc_bias)
        w = valid.expand(tokens.shape[0], 1, *tokens.shape[2:])
        return {"pred": pred, "p": None, "loc": None, "valid": w, "reg_loss": pred.new_zeros(())}
