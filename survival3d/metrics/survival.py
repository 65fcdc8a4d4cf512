r"""Survival metrics for right-censored data: concordance, absolute errors, IPCW Brier score, time-dependent AUC
and the censored log-likelihood of a discrete predicted distribution.

Conventions used everywhere in this module:

* ``time`` (n,) observed times (event or censoring), ``event`` (n,) 1 = event observed, 0 = right-censored.
* ``risk`` (n,) higher = shorter survival. A time prediction ``pred`` gives ``risk = -pred``.
* A predicted distribution is a pmf over the integer grid :math:`t = 1, \dots, t_{max}` (``pmf[:, k]`` is
  :math:`P(T = k + 1)`); its survival function is :math:`S(t) = P(T > t) = 1 - \sum_{s \le t} \mathrm{pmf}(s)`.
* The censoring distribution :math:`G(t) = P(C > t)` is the Kaplan–Meier estimate with the roles of events and
  censorings swapped; at tied times events are taken to happen before censorings (an event at :math:`t` leaves the
  censoring risk set at :math:`t`). ``G`` is right-continuous and is evaluated at the observed time.

References:
    Harrell et al. (1982) "Evaluating the yield of medical tests", JAMA 247(18).
    Uno et al. (2011) "On the C-statistics for evaluating overall adequacy of risk prediction procedures with
    censored survival data", Stat. Med. 30(10).
    Graf et al. (1999) "Assessment and comparison of prognostic classification schemes for survival data",
    Stat. Med. 18(17-18).
    Uno et al. (2007) "Evaluating prediction rules for t-year survivors with censored regression models", JASA;
    Hung & Chiang (2010) "Estimation methods for time-dependent AUC models with survival data", Can. J. Stat.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "harrell_c_index",
    "uno_c_index",
    "censoring_km",
    "mae_uncensored",
    "mae_censored_hinge",
    "mae_hinge",
    "pmf_to_survival",
    "pmf_to_log_survival",
    "survival_at",
    "log_survival_at",
    "brier_score",
    "integrated_brier_score",
    "cumulative_dynamic_auc",
    "censored_nll_metric",
    "default_horizons",
]

_TIED_TOL = 1e-8


def _check_survival(time, event, *others, names=()) -> tuple[np.ndarray, ...]:
    time = np.asarray(time, dtype=float).ravel()
    event = np.asarray(event).ravel()
    if time.size == 0:
        raise ValueError("survival metrics need at least one case, got 0.")
    if event.shape != time.shape:
        raise ValueError(f"time has {time.size} values but event has {event.size}.")
    if not np.isin(event, (0, 1, True, False)).all():
        raise ValueError(f"event must be 0/1, got values {sorted(set(np.unique(event).tolist()))}.")
    if not np.isfinite(time).all():
        raise ValueError("time contains NaN or infinite values.")
    out = [time, event.astype(bool)]
    for name, o in zip(names, others):
        a = np.asarray(o, dtype=float)
        if a.shape[0] != time.size:
            raise ValueError(f"{name} has {a.shape[0]} rows but there are {time.size} cases.")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinite values.")
        out.append(a)
    return tuple(out)


def harrell_c_index(time, risk, event) -> float:
    r"""Harrell's concordance index, computed by :func:`lifelines.utils.concordance_index`.

    .. math::
        C = \frac{\sum_{i,j} \delta_i \, 1[T_i < T_j] \left(1[\eta_i > \eta_j] + \tfrac12 1[\eta_i = \eta_j]\right)}
                 {\sum_{i,j} \delta_i \, 1[T_i < T_j]}

    (lifelines also counts an event and a censoring at the same time as comparable.)

    Args:
        time: (n,) observed times.
        risk: (n,) risk scores, higher = shorter survival.
        event: (n,) 1 = event, 0 = censored.

    Raises:
        ValueError: no comparable pair (e.g. all censored), or malformed inputs.
    """
    from lifelines.utils import concordance_index

    time, event, risk = _check_survival(time, event, risk, names=("risk",))
    try:  # lifelines expects scores that increase with survival time
        return float(concordance_index(time, -risk, event))
    except ZeroDivisionError as e:  # lifelines' way of saying "no admissible pairs"
        raise ValueError(f"no comparable pairs (every case censored?): C-index undefined ({e}).") from e


def censoring_km(time, event) -> tuple[np.ndarray, np.ndarray]:
    r"""Kaplan–Meier estimate of the censoring survival function :math:`G(t) = P(C > t)`.

    .. math::
        \hat G(t) = \prod_{s \le t} \left(1 - \frac{c_s}{r_s - d_s}\right)

    with :math:`c_s` censorings and :math:`d_s` events at time :math:`s`, :math:`r_s` cases still at risk
    (events at :math:`s` leave the censoring risk set before the censorings at :math:`s`).

    Returns:
        (unique times, :math:`\hat G` at those times), a right-continuous step function (1 before the first time).
    """
    time, event = _check_survival(time, event)
    uniq, inverse = np.unique(time, return_inverse=True)
    n_events = np.bincount(inverse, weights=event.astype(float), minlength=uniq.size)
    n_total = np.bincount(inverse, minlength=uniq.size).astype(float)
    n_cens = n_total - n_events
    at_risk = n_total[::-1].cumsum()[::-1] - n_events
    ratio = np.divide(n_cens, at_risk, out=np.zeros_like(n_cens), where=n_cens > 0)
    return uniq, np.cumprod(1.0 - ratio)


def _eval_step(x: np.ndarray, knots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Right-continuous step function equal to ``values[k]`` on ``[knots[k], knots[k+1])`` and 1 before."""
    idx = np.searchsorted(knots, np.asarray(x, dtype=float), side="right") - 1
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], 1.0)


def _ipcw_concordance(time, event, risk, weights, chunk: int = 2048) -> float:
    """Σ_i w_i Σ_j comparable(i,j)(1[η_i>η_j] + ½ 1[η_i=η_j]) / Σ_i w_i Σ_j comparable(i,j), vectorised in chunks.

    Comparable: i has an event, and T_j > T_i, or T_j = T_i with j censored (the lifelines / scikit-survival rule).
    """
    num = den = 0.0
    idx = np.flatnonzero(event & (weights > 0))
    for start in range(0, idx.size, chunk):
        i = idx[start : start + chunk]
        ti, ri = time[i, None], risk[i, None]
        comparable = (time[None, :] > ti) | ((time[None, :] == ti) & ~event[None, :])
        diff = ri - risk[None, :]
        score = np.where(np.abs(diff) <= _TIED_TOL, 0.5, (diff > 0).astype(float))
        num += float((weights[i] * (comparable * score).sum(1)).sum())
        den += float((weights[i] * comparable.sum(1)).sum())
    if den == 0:
        raise ValueError("no comparable pairs (every case censored, or all events after tau): C-index undefined.")
    return num / den


def uno_c_index(time, risk, event, *, tau: float | None = None, train_time=None, train_event=None) -> float:
    r"""Uno's IPCW concordance index, truncated at :math:`\tau`.

    .. math::
        C_\tau = \frac{\sum_{i,j} \delta_i \hat G(T_i)^{-2} 1[T_i < T_j] 1[T_i < \tau]
                       \left(1[\eta_i > \eta_j] + \tfrac12 1[\eta_i = \eta_j]\right)}
                      {\sum_{i,j} \delta_i \hat G(T_i)^{-2} 1[T_i < T_j] 1[T_i < \tau]}

    :math:`\hat G` is the Kaplan–Meier censoring distribution (:func:`censoring_km`) of the training data when given,
    else of the evaluated data. Pairs with equal times count when the later one is censored (as for Harrell).
    Without censoring every weight is 1 and :math:`C_\tau` equals Harrell's C restricted to :math:`T_i < \tau`.

    Args:
        time, risk, event: the evaluated cases (risk higher = shorter survival).
        tau: truncation time; choose it where :math:`\hat G(\tau) > 0`. ``None``: no truncation.
        train_time, train_event: data to estimate :math:`\hat G` from (defaults to the evaluated data).

    Raises:
        ValueError: :math:`\hat G` is 0 at an event time used, or no comparable pair.
    """
    time, event, risk = _check_survival(time, event, risk, names=("risk",))
    if (train_time is None) != (train_event is None):
        raise ValueError("give both train_time and train_event, or neither.")
    knots, g = censoring_km(time if train_time is None else train_time, event if train_event is None else train_event)
    use = event & (time < tau if tau is not None else True)
    g_at = _eval_step(time[use], knots, g)
    if (g_at <= 0).any():
        raise ValueError(
            "the censoring survival function is 0 at an event time: lower tau below the last censoring time."
        )
    weights = np.zeros_like(time)
    weights[use] = 1.0 / g_at**2
    return _ipcw_concordance(time, event, risk, weights)


def mae_uncensored(time, pred, event) -> float:
    """Mean absolute error :math:`|T_i - \\hat T_i|` over cases with an observed event (NaN when there are none)."""
    time, event, pred = _check_survival(time, event, pred, names=("pred",))
    return float(np.abs(time[event] - pred[event]).mean()) if event.any() else float("nan")


def mae_censored_hinge(time, pred, event) -> float:
    r"""Hinge error over censored cases: :math:`\max(0, C_i - \hat T_i)`, averaged (NaN when none is censored).

    A censored case only says :math:`T_i > C_i`, so predictions beyond the censoring time cost nothing.
    """
    time, event, pred = _check_survival(time, event, pred, names=("pred",))
    cens = ~event
    return float(np.maximum(time[cens] - pred[cens], 0.0).mean()) if cens.any() else float("nan")


def mae_hinge(time, pred, event) -> float:
    r"""MAE-hinge over all cases: :math:`|T_i - \hat T_i|` for events, :math:`\max(0, C_i - \hat T_i)` if censored."""
    time, event, pred = _check_survival(time, event, pred, names=("pred",))
    err = np.where(event, np.abs(time - pred), np.maximum(time - pred, 0.0))
    return float(err.mean())


def pmf_to_survival(pmf) -> np.ndarray:
    r"""(n, tmax) pmf over :math:`t = 1..t_{max}` → (n, tmax) :math:`S(t) = P(T > t)` at :math:`t = 1..t_{max}`."""
    pmf = np.asarray(pmf, dtype=float)
    if pmf.ndim != 2:
        raise ValueError(f"pmf must be (n, tmax), got shape {pmf.shape}.")
    return np.clip(1.0 - np.cumsum(pmf, axis=1), 0.0, 1.0)


def pmf_to_log_survival(pmf) -> np.ndarray:
    r"""(n, tmax) pmf → (n, tmax) :math:`\log S(t) = \log \sum_{s > t} \mathrm{pmf}(s)` at :math:`t = 1..t_{max}`.

    The tail is summed directly (a reverse cumulative sum of non-negative terms), never as :math:`1 - F(t)`: no
    cancellation, so cases with :math:`S(t)` of 1e-17 and 1e-18 keep their order (``-inf`` where the tail is 0).
    """
    pmf = np.clip(np.asarray(pmf, dtype=float), 0.0, None)
    if pmf.ndim != 2:
        raise ValueError(f"pmf must be (n, tmax), got shape {pmf.shape}.")
    tail = np.cumsum(pmf[:, ::-1], axis=1)[:, ::-1]  # tail[:, k] = sum_{j >= k} pmf[:, j] = P(T >= k + 1)
    surv = np.concatenate([tail[:, 1:], np.zeros((pmf.shape[0], 1))], axis=1)  # P(T > k + 1)
    with np.errstate(divide="ignore"):
        return np.minimum(np.log(surv), 0.0)


def log_survival_at(log_surv: np.ndarray, t) -> np.ndarray:
    """log S(t) for each case at horizons ``t`` (as :func:`survival_at`: 0 for t < 1, floor for non-integers)."""
    k = np.floor(np.asarray(t, dtype=float)).astype(int)
    col = np.clip(k - 1, 0, log_surv.shape[1] - 1)
    return np.where(k[None, :] >= 1, log_surv[:, col], 0.0)


def survival_at(surv: np.ndarray, t) -> np.ndarray:
    """S(t) for each case at horizons ``t`` (on the integer grid; S(t) = 1 for t < 1, floor for non-integers)."""
    k = np.floor(np.asarray(t, dtype=float)).astype(int)
    col = np.clip(k - 1, 0, surv.shape[1] - 1)
    return np.where(k[None, :] >= 1, surv[:, col], 1.0)


def brier_score(time, event, surv, horizons, *, train_time=None, train_event=None) -> np.ndarray:
    r"""IPCW Brier score (Graf et al. 1999) at each horizon :math:`t`.

    .. math::
        BS(t) = \frac1n \sum_i \left[ \frac{\hat S(t|x_i)^2 \, 1[T_i \le t, \delta_i = 1]}{\hat G(T_i)}
                + \frac{(1 - \hat S(t|x_i))^2 \, 1[T_i > t]}{\hat G(t)} \right]

    Args:
        surv: (n, tmax) predicted :math:`S(t)` on ``t = 1..tmax`` (:func:`pmf_to_survival`).
        horizons: evaluation times.

    Returns:
        (len(horizons),) Brier scores.
    """
    time, event, surv = _check_survival(time, event, surv, names=("surv",))
    horizons = np.atleast_1d(np.asarray(horizons, dtype=float))
    knots, g = censoring_km(time if train_time is None else train_time, event if train_event is None else train_event)
    g_t = _eval_step(horizons, knots, g)
    g_i = _eval_step(time, knots, g)
    if (g_t <= 0).any():
        raise ValueError(f"the censoring survival function is 0 at horizons {horizons[g_t <= 0].tolist()}.")
    s = survival_at(surv, horizons)  # (n, h)
    case = (time[:, None] <= horizons[None, :]) & event[:, None]
    control = time[:, None] > horizons[None, :]
    w_case = np.divide(1.0, g_i, out=np.zeros_like(g_i), where=g_i > 0)[:, None]
    bs = s**2 * case * w_case + (1.0 - s) ** 2 * control / g_t[None, :]
    return bs.mean(axis=0)


def integrated_brier_score(time, event, surv, horizons, **kw) -> float:
    r"""Trapezoidal integral of :func:`brier_score` over ``horizons`` divided by their range:
    :math:`\frac{1}{t_{max} - t_{min}} \int_{t_{min}}^{t_{max}} BS(t)\,dt` (needs ≥ 2 horizons), as
    ``sksurv.metrics.integrated_brier_score``. ``run.py evaluate`` integrates over the integer grid from the
    earliest observed time to before the last one (``ibs_range`` in metrics.json)."""
    horizons = np.unique(np.asarray(horizons, dtype=float))
    if horizons.size < 2:
        raise ValueError(f"integrated Brier score needs at least 2 distinct horizons, got {horizons.tolist()}.")
    bs = brier_score(time, event, surv, horizons, **kw)
    return float(np.trapezoid(bs, horizons) / (horizons[-1] - horizons[0]))


def cumulative_dynamic_auc(time, event, risk_t, horizons, *, train_time=None, train_event=None) -> np.ndarray:
    r"""Cumulative/dynamic time-dependent AUC with IPCW (Uno 2007; Hung & Chiang 2010).

    .. math::
        \mathrm{AUC}(t) = \frac{\sum_i \sum_j 1[T_j > t] \, 1[T_i \le t] \, \omega_i
                         \left(1[\eta_i(t) > \eta_j(t)] + \tfrac12 1[\eta_i(t) = \eta_j(t)]\right)}
                        {\left(\sum_i 1[T_i \le t] \omega_i\right) \left(\sum_j 1[T_j > t]\right)},
        \quad \omega_i = \delta_i / \hat G(T_i)

    Args:
        risk_t: (n,) risk or (n, len(horizons)) time-dependent risk, e.g. :math:`-\log \hat S(t|x)` from
            :func:`pmf_to_log_survival` (the same order as :math:`1 - \hat S(t|x)`, without its rounding to 1
            where :math:`\hat S(t|x) \approx 0`). Values equal (or within 1e-8) are ties; ``inf`` is allowed.
        horizons: evaluation times, each with at least one case before and one control after.

    Returns:
        (len(horizons),) AUC values (NaN where there is no case or no control).
    """
    horizons = np.atleast_1d(np.asarray(horizons, dtype=float))
    time, event, risk_t = _check_survival(time, event, risk_t, names=("risk",))
    if risk_t.ndim == 1:
        risk_t = np.repeat(risk_t[:, None], horizons.size, axis=1)
    if risk_t.shape[1] != horizons.size:
        raise ValueError(f"risk has {risk_t.shape[1]} columns for {horizons.size} horizons.")
    knots, g = censoring_km(time if train_time is None else train_time, event if train_event is None else train_event)
    g_i = _eval_step(time, knots, g)
    omega = np.divide(event.astype(float), g_i, out=np.zeros_like(g_i), where=event & (g_i > 0))
    out = np.full(horizons.size, np.nan)
    for k, t in enumerate(horizons):
        case = (time <= t) & event
        control = time > t
        if not case.any() or not control.any():
            continue
        a, b = risk_t[case, k][:, None], risk_t[control, k][None, :]
        with np.errstate(invalid="ignore"):
            tied = (a == b) | (np.abs(a - b) <= _TIED_TOL)  # a == b also for equal infinities (their difference is NaN)
        score = np.where(tied, 0.5, (a > b).astype(float))
        w = omega[case]
        out[k] = float((w[:, None] * score).sum() / (w.sum() * control.sum()))
    return out


def censored_nll_metric(pmf, time, event, alpha_cens: float = 1.0) -> float:
    r"""Mean censored negative log-likelihood of a discrete predicted distribution: the training loss's likelihood.

    .. math::
        \mathrm{NLL} = -\frac1n \sum_i \left[ \delta_i \log \hat p_i([T_i])
                      + \alpha_{cens} (1 - \delta_i) \log \sum_{t > C_i} \hat p_i(t) \right]

    computed by :func:`survival3d.losses.functional.censored_nll_log_pmf` (the formula of the ``censored`` loss):
    ``pmf`` is over :math:`t = 1..t_{max}`; event times are clipped into the grid and rounded, censoring times are
    clipped to :math:`[1, t_{max} - 1]` and not rounded. A zero probability where the likelihood needs mass gives
    ``inf`` (no floor).

    Args:
        pmf: (n, tmax) predicted probabilities (rows sum to 1).
        time: (n,) observed times; event: (n,) 0/1.
        alpha_cens: ALPHA_CENS, the weight of censored cases (as in training).
    """
    import torch

    from survival3d.losses.functional import censored_nll_log_pmf

    pmf = np.asarray(pmf, dtype=float)
    time, event, pmf = _check_survival(time, event, pmf, names=("pmf",))
    if pmf.ndim != 2 or pmf.shape[1] < 2:
        raise ValueError(f"pmf must be (n, tmax) with tmax >= 2, got shape {pmf.shape}.")
    if alpha_cens < 0:
        raise ValueError(f"alpha_cens must be >= 0, got {alpha_cens}.")
    with np.errstate(divide="ignore"):
        log_pmf = torch.from_numpy(np.log(pmf))
    nll = censored_nll_log_pmf(log_pmf, torch.from_numpy(time), torch.from_numpy(event), alpha_cens=alpha_cens)
    return float(nll)


def default_horizons(time, event, quantiles=(0.25, 0.5, 0.75)) -> np.ndarray:
    """Horizons at quantiles of the event times, kept strictly inside the follow-up (where G > 0 and a control
    exists). Returns integers on the time grid; may return fewer than asked (duplicates dropped)."""
    time, event = _check_survival(time, event)
    if not event.any():
        return np.array([])
    h = np.unique(np.floor(np.quantile(time[event], quantiles)))
    knots, g = censoring_km(time, event)
    ok = (h >= max(1.0, time.min())) & (h < time.max()) & (_eval_step(h, knots, g) > 0)
    return h[ok]
