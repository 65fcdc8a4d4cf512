"""Loss modules: :class:`SurvivalOutput` + (time, event) -> a dict of scalars, registered in :data:`LOSSES`.

Each module wraps one function of :mod:`survival3d.losses.functional`, adds the head's ``reg_loss`` and offers the
predictive distribution it implies over :math:`t = 1..T_{max}` (``pmf``) for Brier scores and time-dependent AUC.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from survival3d.losses.functional import (
    REDUCTIONS,
    censored_nll,
    classical_nll,
    cox_partial_nll,
    discretised_gaussian_log_pmf,
)
from survival3d.contracts import SurvivalOutput
from survival3d.registry import Registry

__all__ = ["LOSSES", "CensoredLoss", "ClassicalLoss", "CoxLoss"]

LOSSES: Registry[nn.Module] = Registry("loss")


class _GaussianTimeLoss(nn.Module):
    """Shared parts: the variance (fixed buffer or learnable log-variance) and the discretised-Gaussian pmf."""

    def __init__(self, *, var_init: float, learn_var: bool, tmax: int, reduction: str):
        super().__init__()
        if not var_init > 0:
            raise ValueError(f"var_init must be > 0, got {var_init}.")
        if int(tmax) < 2:
            raise ValueError(f"tmax must be >= 2, got {tmax}.")
        if reduction not in REDUCTIONS[:2]:
            raise ValueError(f"reduction '{reduction}' is not one of {REDUCTIONS[:2]}.")
        self.tmax = int(tmax)
        self.reduction = reduction
        self.learn_var = bool(learn_var)
        log_var = torch.tensor(math.log(var_init))
        if learn_var:
            self.log_var = nn.Parameter(log_var)
        else:
            self.register_buffer("log_var", log_var)

    def variance_tensor(self) -> torch.Tensor:
        return self.log_var.exp()

    @property
    def variance(self) -> float:
        """The current :math:`\\sigma^2` as a float (a host sync; for reporting, not inside a training step)."""
        return float(self.log_var.detach().exp())

    def log_pmf(self, pred: torch.Tensor) -> torch.Tensor:
        return discretised_gaussian_log_pmf(pred.float(), self.variance_tensor(), self.tmax)

    def pmf(self, pred: torch.Tensor) -> torch.Tensor:
        """(B,) predicted times -> (B, tmax) probabilities of T = 1..tmax (a discretised Gaussian at pred)."""
        return self.log_pmf(pred).exp()

    @staticmethod
    def _with_reg(out: SurvivalOutput, nll: torch.Tensor, **parts: torch.Tensor) -> dict[str, torch.Tensor]:
        reg = out.reg_loss if out.reg_loss is not None else nll.new_zeros(())
        return {"loss": nll + reg, "nll": nll, "reg": reg, **parts}

    def extra_repr(self) -> str:
        return f"tmax={self.tmax}, var={self.variance:.3g}, learn_var={self.learn_var}, reduction={self.reduction}"


@LOSSES.register("censored")
class CensoredLoss(_GaussianTimeLoss):
    """Censoring-aware discretised-Gaussian NLL (:func:`~survival3d.losses.functional.censored_nll`).

    Args:
        alpha_cens: ALPHA_CENS, weight of censored cases.
        var_init: VAR, or VAR_INIT when ``learn_var``.
        learn_var: learn the variance (as a log-variance).
        tmax: TMAX.
        reduction: ``"mean"`` or ``"sum"`` over the batch.

    Returns (forward):
        ``loss`` (nll + reg), ``nll``, ``reg``, ``nll_event`` / ``nll_censored`` (mean NLL of each group, 0 when
        the group is empty) and ``variance`` (tensor).
    """

    def __init__(self, *, alpha_cens: float = 1.0, var_init: float = 100.0, learn_var: bool = False,
                 tmax: int = 100, reduction: str = "mean"):
        super().__init__(var_init=var_init, learn_var=learn_var, tmax=tmax, reduction=reduction)
        if alpha_cens < 0:
            raise ValueError(f"alpha_cens must be >= 0, got {alpha_cens}.")
        self.alpha_cens = float(alpha_cens)

    def forward(self, out: SurvivalOutput, time: torch.Tensor, event: torch.Tensor) -> dict[str, torch.Tensor]:
        var = self.variance_tensor()
        per = censored_nll(out.pred, time, event, variance=var, tmax=self.tmax, alpha_cens=self.alpha_cens,
                           reduction="none")
        ev = torch.as_tensor(event, device=per.device).reshape(-1).bool()
        nll = per.mean() if self.reduction == "mean" else per.sum()
        n_ev = ev.sum().clamp_min(1).float()
        n_cens = (~ev).sum().clamp_min(1).float()
        return self._with_reg(out, nll, nll_event=(per * ev).sum() / n_ev, nll_censored=(per * ~ev).sum() / n_cens,
                              variance=var.detach())


@LOSSES.register("classical")
class ClassicalLoss(_GaussianTimeLoss):
    """Gaussian NLL on uncensored cases only (:func:`~survival3d.losses.functional.classical_nll`).

    Args:
        var_init, learn_var, tmax, reduction: as for :class:`CensoredLoss` (``tmax`` only shapes ``pmf``).
    """

    def __init__(self, *, var_init: float = 100.0, learn_var: bool = False, tmax: int = 100,
                 reduction: str = "mean"):
        super().__init__(var_init=var_init, learn_var=learn_var, tmax=tmax, reduction=reduction)

    def forward(self, out: SurvivalOutput, time: torch.Tensor, event: torch.Tensor) -> dict[str, torch.Tensor]:
        var = self.variance_tensor()
        nll = classical_nll(out.pred, time, event, variance=var, reduction=self.reduction)
        ev = torch.as_tensor(event, device=nll.device).reshape(-1).bool()
        return self._with_reg(out, nll, n_events=ev.sum().float(), variance=var.detach())


class CoxLoss(_GaussianTimeLoss):
    """Negative Cox partial log-likelihood of ``out.risk`` (:func:`~survival3d.losses.functional.cox_partial_nll`).

    The partial likelihood only sees the ranking of ``risk = -pred``, so the level of ``pred`` is not trained;
    ``pmf`` (a discretised Gaussian of variance ``var_init`` at pred) is therefore only a rough stand-in, and the
    variance is never learned.

    Args:
        ties: ``"efron"`` or ``"breslow"``.
        var_init, tmax: the Gaussian used by ``pmf``.
        reduction: ``"mean"`` (over events) or ``"sum"``.
    """

    def __init__(self, *, ties: str = "efron", var_init: float = 100.0, tmax: int = 100, reduction: str = "mean"):
        super().__init__(var_init=var_init, learn_var=False, tmax=tmax, reduction=reduction)
        if ties not in ("efron", "breslow"):
            raise ValueError(f"ties '{ties}' is not one of ('efron', 'breslow').")
        self.ties = ties

    def forward(self, out: SurvivalOutput, time: torch.Tensor, event: torch.Tensor) -> dict[str, torch.Tensor]:
        nll = cox_partial_nll(out.risk, time, event, ties=self.ties, reduction=self.reduction)
        ev = torch.as_tensor(event, device=nll.device).reshape(-1).bool()
        return self._with_reg(out, nll, n_events=ev.sum().float())


@LOSSES.register("cox_efron")
class CoxEfronLoss(CoxLoss):
    """:class:`CoxLoss` with Efron's tie handling (lifelines' default)."""

    def __init__(self, *, var_init: float = 100.0, tmax: int = 100, reduction: str = "mean"):
        super().__init__(ties="efron", var_init=var_init, tmax=tmax, reduction=reduction)


@LOSSES.register("cox_breslow")
class CoxBreslowLoss(CoxLoss):
    """:class:`CoxLoss` with Breslow's tie handling."""

    def __init__(self, *, var_init: float = 100.0, tmax: int = 100, reduction: str = "mean"):
        super().__init__(ties="breslow", var_init=var_init, tmax=tmax, reduction=reduction)
