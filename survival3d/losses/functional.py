"""Survival losses as pure functions of predictions and (time, event) pairs.

Conventions: ``pred`` is a predicted survival time :math:`\\mu` (B,), ``risk`` a log-hazard score (B,) (higher =
shorter survival), ``time`` (B,) the event or censoring time, ``event`` (B,) 1 for an observed event, 0 for a
censored case. Every function returns the per-case negative log-likelihood reduced by ``reduction``; all work in
float32 (float64 for float64 inputs), and give finite values and gradients for any finite input, including a batch
without events.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "discretised_gaussian_log_pmf",
    "censored_nll",
    "censored_nll_log_pmf",
    "classical_nll",
    "cox_partial_nll",
    "flip_consistency",
    "REDUCTIONS",
    "TIES",
]

REDUCTIONS = ("mean", "sum", "none")
TIES = ("efron", "breslow")


def _check(reduction: str, variance=None, tmax: int | None = None) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction '{reduction}' is not one of {REDUCTIONS}.")
    if tmax is not None and int(tmax) < 2:
        raise ValueError(f"tmax must be >= 2, got {tmax}.")
    if variance is not None and not torch.is_tensor(variance) and not float(variance) > 0:
        raise ValueError(f"variance must be > 0, got {variance}.")


def _float(x: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 for float64 ones."""
    return torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32


def _var(variance, like: torch.Tensor) -> torch.Tensor:
    if torch.is_tensor(variance):
        return variance.to(device=like.device, dtype=like.dtype)
    return torch.tensor(float(variance), device=like.device, dtype=like.dtype)


def _as_inputs(pred: torch.Tensor, time: torch.Tensor, event: torch.Tensor):
    pred = pred.to(_float(pred)).reshape(-1)
    time = torch.as_tensor(time, device=pred.device).to(pred.dtype).reshape(-1)
    event = torch.as_tensor(event, device=pred.device).reshape(-1).bool()
    if not (pred.shape == time.shape == event.shape):
        raise ValueError(f"pred {tuple(pred.shape)}, time {tuple(time.shape)} and event {tuple(event.shape)} must "
                         "have the same number of cases.")
    return pred, time, event


def _reduce(x: torch.Tensor, reduction: str, denom: torch.Tensor | None = None) -> torch.Tensor:
    if reduction == "none":
        return x
    s = x.sum()
    if reduction == "sum":
        return s
    return s / (x.new_tensor(float(x.numel())) if denom is None else denom)


def discretised_gaussian_log_pmf(mu: torch.Tensor, variance: torch.Tensor | float, tmax: int) -> torch.Tensor:
    r"""Log-probabilities of a Gaussian discretised on :math:`t \in \{1, \dots, T_{max}\}`.

    .. math::
        \log P(T = t \mid \mu) = -\frac{(t - \mu)^2}{2\sigma^2}
            - \log \sum_{s=1}^{T_{max}} \exp\!\Big(-\frac{(s - \mu)^2}{2\sigma^2}\Big)

    computed as a log-softmax of :math:`(t\mu - t^2/2)/\sigma^2` (the :math:`\mu^2` term cancels), which stays
    finite for any finite :math:`\mu`.

    Args:
        mu: (B,) centres.
        variance: :math:`\sigma^2`, a positive float or scalar tensor.
        tmax: :math:`T_{max}`.

    Returns:
        (B, tmax) float32; column ``t - 1`` holds :math:`\log P(T = t)`.
    """
    dtype = _float(mu)
    t = torch.arange(1, int(tmax) + 1, device=mu.device, dtype=dtype)
    var = _var(variance, t)
    logits = (mu.to(dtype).reshape(-1, 1) * t - 0.5 * t.square()) / var
    return torch.log_softmax(logits, dim=1)


def censored_nll(pred: torch.Tensor, time: torch.Tensor, event: torch.Tensor, *, variance: torch.Tensor | float,
                 tmax: int, alpha_cens: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    r"""Censoring-aware negative log-likelihood of a discretised Gaussian centred at the prediction.

    With :math:`P` from :func:`discretised_gaussian_log_pmf` (centre :math:`\mu_i`, variance :math:`\sigma^2`):

    .. math::
        \ell_i = \begin{cases}
            -\log P(T = t_i \mid \mu_i) & \delta_i = 1 \text{ (event at } t_i) \\
            -\alpha \log P(T > c_i \mid \mu_i) = -\alpha \log \sum_{s > c_i} P(T = s \mid \mu_i) &
                \delta_i = 0 \text{ (censored at } c_i)
        \end{cases}

    (as in CenTime, Shahin et al., 2023, with a Gaussian in place of their distribution). Times are clipped to
    :math:`[1, T_{max}]`; event times are rounded to the nearest integer; censoring times are further capped at
    :math:`T_{max} - 1`, so a case censored at the horizon contributes :math:`-\alpha \log P(T = T_{max})` rather
    than :math:`\log 0`. The sum over :math:`s > c` is a masked log-sum-exp.

    Args:
        pred: (B,) predicted times :math:`\mu`.
        time: (B,) event / censoring times.
        event: (B,) 1 = event, 0 = censored.
        variance: :math:`\sigma^2` (VAR), float or scalar tensor (learnable).
        tmax: :math:`T_{max}` (TMAX).
        alpha_cens: :math:`\alpha` (ALPHA_CENS), the weight of censored cases.
        reduction: ``"mean"`` over the B cases, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> round(censored_nll(torch.tensor([3.0]), torch.tensor([3.0]), torch.tensor([1]), variance=1.0,
        ...                    tmax=5).item(), 4)
        0.9098
    """
    _check(reduction, variance, tmax)
    pred, time, event = _as_inputs(pred, time, event)
    logp = discretised_gaussian_log_pmf(pred, variance, tmax)
    return censored_nll_log_pmf(logp, time, event, alpha_cens=alpha_cens, reduction=reduction)


def censored_nll_log_pmf(log_pmf: torch.Tensor, time: torch.Tensor, event: torch.Tensor, *,
                         alpha_cens: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    r"""Censoring-aware negative log-likelihood of a discrete distribution on :math:`t = 1..T_{max}`.

    The likelihood of :func:`censored_nll` for any predicted distribution (there, a discretised Gaussian), and of
    the ``nll`` that ``run.py evaluate`` reports:

    .. math::
        \ell_i = -\log P_i(T = [t_i]) \text{ if } \delta_i = 1, \qquad
        \ell_i = -\alpha \log \sum_{s > c_i} P_i(T = s) \text{ if } \delta_i = 0

    with :math:`t_i` clipped to :math:`[1, T_{max}]` and rounded to the nearest integer :math:`[t_i]`, and
    :math:`c_i` clipped to :math:`[1, T_{max} - 1]` but *not* rounded (censored at 2.6: :math:`P(T \ge 3)`).
    No floor: a zero probability gives an infinite loss.

    Args:
        log_pmf: (B, tmax) log-probabilities; column ``t - 1`` holds :math:`\log P(T = t)`.
        time, event: as for :func:`censored_nll`.
        alpha_cens: :math:`\alpha`, the weight of censored cases.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import math, torch
        >>> uniform = torch.full((1, 5), math.log(0.2))
        >>> round(censored_nll_log_pmf(uniform, torch.tensor([2.6]), torch.tensor([0])).item(), 4)  # -log(3/5)
        0.5108
    """
    _check(reduction)
    if log_pmf.ndim != 2 or log_pmf.shape[1] < 2:
        raise ValueError(f"log_pmf must be (B, tmax) with tmax >= 2, got {tuple(log_pmf.shape)}.")
    tmax = int(log_pmf.shape[1])
    logp = log_pmf.to(_float(log_pmf))
    time = torch.as_tensor(time, device=logp.device).to(logp.dtype).reshape(-1)
    event = torch.as_tensor(event, device=logp.device).reshape(-1).bool()
    if not (logp.shape[0] == time.shape[0] == event.shape[0]):
        raise ValueError(f"log_pmf {tuple(logp.shape)}, time {tuple(time.shape)} and event {tuple(event.shape)} "
                         "must have the same number of cases.")
    time = time.clamp(1.0, float(tmax))
    idx = time.round().long() - 1
    ll_event = logp.gather(1, idx[:, None])[:, 0]
    c = time.clamp(max=float(tmax - 1))
    s = torch.arange(1, tmax + 1, device=logp.device, dtype=logp.dtype)
    ll_cens = torch.logsumexp(logp.masked_fill(s[None, :] <= c[:, None], float("-inf")), dim=1)
    nll = torch.where(event, -ll_event, -float(alpha_cens) * ll_cens)
    return _reduce(nll, reduction)


def classical_nll(pred: torch.Tensor, time: torch.Tensor, event: torch.Tensor, *,
                  variance: torch.Tensor | float, reduction: str = "mean") -> torch.Tensor:
    r"""Gaussian negative log-likelihood on the uncensored cases only (censored cases are dropped).

    .. math::
        \ell_i = \delta_i \Big[\frac{(t_i - \mu_i)^2}{2\sigma^2} + \frac{1}{2}\log(2\pi\sigma^2)\Big], \qquad
        L_\mathrm{mean} = \frac{\sum_i \ell_i}{\max(1, \sum_i \delta_i)}

    With a fixed :math:`\sigma^2` this is the MSE on events up to scale and constant. A batch without events gives
    0 (with a zero gradient).

    Args:
        pred, time, event: as for :func:`censored_nll`.
        variance: :math:`\sigma^2`, float or scalar tensor.
        reduction: ``"mean"`` (over the uncensored cases), ``"sum"`` or ``"none"`` (0 for censored cases).

    Example:
        >>> import torch
        >>> round(classical_nll(torch.tensor([2.0, 9.0]), torch.tensor([4.0, 1.0]), torch.tensor([1, 0]),
        ...                     variance=2.0).item(), 4)
        2.2655
    """
    _check(reduction, variance)
    pred, time, event = _as_inputs(pred, time, event)
    var = _var(variance, pred)
    ll = (time - pred).square() / (2 * var) + 0.5 * torch.log(2 * math.pi * var)
    nll = torch.where(event, ll, torch.zeros_like(ll))
    return _reduce(nll, reduction, event.sum().clamp_min(1).to(pred.dtype))


def cox_partial_nll(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor, *, ties: str = "efron",
                    reduction: str = "mean") -> torch.Tensor:
    r"""Negative Cox partial log-likelihood with Efron's or Breslow's handling of tied event times.

    With log-hazards :math:`\eta_i`, distinct event times :math:`t_j`, the events :math:`D_j` at :math:`t_j`
    (:math:`d_j = |D_j|`) and the risk set :math:`R_j = \{k : t_k \ge t_j\}`:

    .. math::
        \log L_\mathrm{Breslow} = \sum_j \Big[\sum_{i \in D_j} \eta_i
            - d_j \log \sum_{k \in R_j} e^{\eta_k}\Big]

    .. math::
        \log L_\mathrm{Efron} = \sum_j \Big[\sum_{i \in D_j} \eta_i - \sum_{l=0}^{d_j - 1}
            \log\Big(\sum_{k \in R_j} e^{\eta_k} - \frac{l}{d_j} \sum_{i \in D_j} e^{\eta_i}\Big)\Big]

    (Cox, 1972; Breslow, 1974; Efron, 1977). Efron equals Breslow without ties. The loss is
    :math:`-\log L` (``"sum"``, the quantity lifelines reports as ``log_likelihood_`` up to sign) or
    :math:`-\log L / \max(1, \#\text{events})` (``"mean"``); ``"none"`` gives each event's term (0 for censored
    cases). Computed with (B, B) comparison matrices and log-sum-exps: no sorting, no host synchronisation, O(B²)
    memory (fine for batches up to a few thousand).

    Args:
        risk: (B,) log-hazards :math:`\eta` (e.g. ``SurvivalOutput.risk``).
        time, event: as for :func:`censored_nll`.
        ties: ``"efron"`` or ``"breslow"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> round(cox_partial_nll(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0]), torch.tensor([1, 1]),
        ...                       reduction="sum").item(), 4)
        0.6931
    """
    _check(reduction)
    if ties not in TIES:
        raise ValueError(f"ties '{ties}' is not one of {TIES}.")
    risk, time, event = _as_inputs(risk, time, event)
    n = risk.shape[0]
    at_risk = time[None, :] >= time[:, None]  # [i, k]: k is at risk at t_i
    neg_inf = torch.tensor(float("-inf"), device=risk.device, dtype=risk.dtype)
    log_s = torch.logsumexp(torch.where(at_risk, risk[None, :], neg_inf), dim=1)
    if ties == "breslow":
        log_den = log_s
    else:
        eye = torch.eye(n, dtype=torch.bool, device=risk.device)
        tied_events = (time[None, :] == time[:, None]) & event[None, :]  # [i, k]: k is an event tied with i
        d = tied_events.sum(1).clamp_min(1).to(risk.dtype)
        rank = (tied_events & torch.ones_like(eye).tril(-1)).sum(1).to(risk.dtype)  # events of the tie before i
        # censored rows have no Efron term: with rank 0 their correction is log1p(0) = 0 instead of a log1p(-1) = -inf
        # that torch.where would hide in the value but not in the gradient (NaN)
        rank = torch.where(event, rank, torch.zeros_like(rank))
        log_e = torch.logsumexp(torch.where(tied_events | eye, risk[None, :], neg_inf), dim=1)
        log_den = log_s + torch.log1p(-(rank / d) * torch.exp(log_e - log_s))
    term = torch.where(event, log_den - risk, torch.zeros_like(risk))
    return _reduce(term, reduction, event.sum().clamp_min(1).to(risk.dtype))


def flip_consistency(loc: torch.Tensor, loc_flipped: torch.Tensor, valid: torch.Tensor | None, dims) -> torch.Tensor:
    r"""How far a per-cubelet map is from flip equivariance: the mean over cases of

    .. math:: \frac{1}{|V|} \sum_{i \in V} \big(\ell_i(x) - \ell_{F(i)}(F x)\big)^2,

    where ``loc_flipped`` is the map of the flipped input :math:`Fx` (flipped along ``dims`` of the (B, 1, d, h, w)
    grid), so :math:`F` undoes the flip, and :math:`V` the cubelets valid in both maps (``valid``: the unflipped
    input's, the flipped one's is its mirror). 0 for a map that commutes with the flip; a detector that marks the
    cubelet *beside* a lesion in a fixed direction scores > 0 under a flip of that axis. Units: the map's², e.g.
    time units² for the softmin head's ``loc``. Requires each image dimension to be a multiple of the cubelet edge
    (else the cubelet grid does not flip with the image).
    """
    back = loc_flipped.flip(dims)
    dtype = torch.promote_types(torch.promote_types(loc.dtype, back.dtype), torch.float32)  # float64 stays float64
    diff = (loc.to(dtype) - back.to(dtype)).square()
    if valid is None:
        return diff.flatten(1).mean(1).mean()
    v = (valid & valid.flip(dims)).to(diff.dtype)
    return ((diff * v).flatten(1).sum(1) / v.flatten(1).sum(1).clamp_min(1.0)).mean()
