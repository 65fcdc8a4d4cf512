"""The time grid: how times in the user's unit (days, weeks, months, ...) map onto the loss's support t = 1..TMAX.

The censored loss models survival as a Gaussian discretised on the integers :math:`1..T_{max}` (grid units). Real
tables come in days, weeks or months, so the grid is a property of the data:

* ``loss.tmax`` an integer (the research setting): the identity grid, 1 grid unit = 1 time unit, support
  1..tmax, exactly the pre-grid behaviour.
* ``loss.tmax: auto`` (the default): for in-memory dummy data the generator's own integer grid (``data.dummy.tmax``,
  bin width 1); for a manifest, ``loss.auto_bins`` bins spanning ``[0, loss.auto_margin × max training time]``,
  fitted on the training split: ``bin_width = auto_margin × max(train time) / auto_bins``.

Times are divided by the bin width before they reach the loss and predictions are multiplied by it on the way out,
so every output (``pred_time``, MAE, the pmf's time axis) is in the data's unit (``data.time_unit``, a label). The
other time-valued settings default to ``auto`` and follow the grid: ``loss.var_init`` = (TMAX/10)² (sd 10 % of the
grid), ``head.loc_bias_init`` = TMAX/2, ``head.loc_scale`` = TMAX/10 — for TMAX = 100, exactly the values tuned on the
dummy data (100, 50, 10). A number set explicitly is taken as is, in grid units.

:meth:`TimeGrid.check` warns about times the grid cannot represent: events above TMAX and censoring times above
TMAX − 1 (clipped by the loss), and times below the first bin (they collapse onto bin 1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from survival3d.errors import ConfigError

__all__ = ["TimeGrid", "fit_time_grid", "grid_from_config", "resolved_config", "resolve_time_settings", "AUTO"]

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class TimeGrid:
    """Grid unit g = time / ``bin_width``; the loss's support is g = 1..``tmax``.

    Attributes:
        tmax: number of bins (TMAX).
        bin_width: time units per grid unit (1.0: the identity grid).
        unit: the data's time unit, a label (``data.time_unit``; "" = unstated).
        fitted: derived from training times (``loss.tmax: auto`` on a manifest).
    """

    tmax: int
    bin_width: float = 1.0
    unit: str = ""
    fitted: bool = False

    @property
    def identity(self) -> bool:
        return self.bin_width == 1.0

    @property
    def horizon(self) -> float:
        """The last time on the grid, ``tmax × bin_width``, in the data's unit."""
        return self.tmax * self.bin_width

    def to_grid(self, t):
        """Times in the data's unit → grid units (unchanged on the identity grid)."""
        return t if self.identity else t / self.bin_width

    def from_grid(self, g):
        """Grid units → the data's unit (unchanged on the identity grid)."""
        return g if self.identity else g * self.bin_width

    def times(self) -> np.ndarray:
        """The time of each pmf column (t = 1..tmax grid units) in the data's unit."""
        return np.arange(1, self.tmax + 1, dtype=np.float64) * self.bin_width

    def state_dict(self) -> dict[str, Any]:
        return {"tmax": int(self.tmax), "bin_width": float(self.bin_width), "unit": str(self.unit), "fitted": bool(self.fitted)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "TimeGrid":
        return cls(tmax=int(state["tmax"]), bin_width=float(state["bin_width"]), unit=str(state.get("unit", "")),
                   fitted=bool(state.get("fitted", False)))

    def describe(self) -> str:
        u = f" {self.unit}" if self.unit else ""
        if self.identity:
            return f"time grid: t = 1..{self.tmax}{u} (1 bin = 1{u or ' time unit'})"
        return (f"time grid: {self.tmax} bins of {self.bin_width:.4g}{u or ' time units'} "
                f"(support {self.bin_width:.4g}..{self.horizon:.4g}{u})")

    def check(self, times: Sequence[float], events: Sequence[int], *, what: str = "training", source: Any = None) -> dict[str, Any]:
        """Warn about times the grid cannot represent; returns the counts.

        * events above the horizon (grid value > TMAX) are treated as events at the horizon;
        * censoring times above TMAX − 1 bins are treated as censored at TMAX − 1 (the loss needs mass beyond them);
        * times below the first bin (grid value < 1, e.g. sub-unit times on the identity grid) collapse onto bin 1.
        """
        t = np.asarray(times, dtype=np.float64)
        e = np.asarray(events).astype(bool)
        g = self.to_grid(t)
        u = f" {self.unit}" if self.unit else ""
        where = f" ({source})" if source else ""
        over_ev = e & (g > self.tmax)
        over_c = ~e & (g > self.tmax - 1)
        under = g < 1.0
        out = {"n": int(t.size), "events_clipped": int(over_ev.sum()), "censored_clipped": int(over_c.sum()),
               "below_first_bin": int(under.sum())}
        if over_ev.any() or over_c.any():
            over = over_ev | over_c
            log.warning("%d of %d %s times%s exceed the time grid (%d event(s) beyond %.4g%s, %d censored beyond "
                        "%.4g%s; max %.4g%s) and are clipped to it: raise loss.tmax or use loss.tmax=auto.",
                        int(over.sum()), t.size, what, where, int(over_ev.sum()), self.horizon, u, int(over_c.sum()),
                        self.from_grid(self.tmax - 1.0), u, float(t[over].max()), u)
        if under.any():
            log.warning("%d of %d %s times%s are below the first grid bin (%.4g%s; min %.4g%s) and count as %.4g%s"
                        "%s.", int(under.sum()), t.size, what, where, self.bin_width, u, float(t.min()), u,
                        self.bin_width, u, " (with an integer loss.tmax, 1 grid unit = 1 time unit: use "
                        "loss.tmax=auto or finer time units)" if not self.fitted else "")
        return out


def _is_auto(v: Any) -> bool:
    return isinstance(v, str) and v.strip().lower() == AUTO


def _get(section: Any, key: str, default: Any = None) -> Any:
    if section is None:
        return default
    if hasattr(section, "get"):
        v = section.get(key, default)
    else:
        v = getattr(section, key, default)
    return default if v is None else v


def _positive_int(v: Any, key: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer() or int(v) < lo:
        raise ConfigError(f"{key} must be an integer >= {lo}, got {v!r}.")
    return int(v)


def _tmax_setting(loss: Any):
    v = _get(loss, "tmax", AUTO)
    if _is_auto(v):
        return AUTO
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ConfigError(f"loss.tmax must be an integer >= 2 or 'auto', got {v!r}.") from None
    return _positive_int(v, "loss.tmax (an integer >= 2 or 'auto')", 2)


def grid_from_config(cfg: Any) -> TimeGrid:
    """The grid a config implies without looking at any times: an integer ``loss.tmax`` → identity grid; ``auto`` →
    the dummy generator's grid for ``data.source=dummy``, otherwise ``loss.auto_bins`` bins of width 1 (the unfitted
    stand-in used when building a model with no data at hand)."""
    loss, data = _get(cfg, "loss"), _get(cfg, "data")
    unit = str(_get(data, "time_unit", "") or "")
    tmax = _tmax_setting(loss)
    if tmax != AUTO:
        return TimeGrid(tmax=tmax, unit=unit)
    if _get(data, "source", "dummy") == "dummy":
        return TimeGrid(tmax=_positive_int(_get(_get(data, "dummy"), "tmax", 100), "data.dummy.tmax", 2), unit=unit)
    return TimeGrid(tmax=_positive_int(_get(loss, "auto_bins", 100), "loss.auto_bins", 2), unit=unit)


def fit_time_grid(cfg: Any, times: Sequence[float] | None = None) -> TimeGrid:
    """The experiment's grid: :func:`grid_from_config`, except that ``loss.tmax: auto`` on a manifest is fitted to the
    training ``times``: ``loss.auto_bins`` bins over ``[0, loss.auto_margin × max(times)]``."""
    grid = grid_from_config(cfg)
    loss, data = _get(cfg, "loss"), _get(cfg, "data")
    if _tmax_setting(loss) != AUTO or _get(data, "source", "dummy") == "dummy" or times is None:
        return grid
    bins = _positive_int(_get(loss, "auto_bins", 100), "loss.auto_bins", 2)
    margin = _get(loss, "auto_margin", 1.2)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not float(margin) >= 1.0:
        raise ConfigError(f"loss.auto_margin must be a number >= 1, got {margin!r}.")
    t = np.asarray(times, dtype=np.float64)
    t = t[np.isfinite(t)]
    if t.size == 0 or not t.max() > 0:
        raise ConfigError("loss.tmax=auto needs positive training times to fit the time grid; set loss.tmax to an integer.")
    width = float(margin) * float(t.max()) / bins
    return TimeGrid(tmax=bins, bin_width=width, unit=grid.unit, fitted=True)


def _number(v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or not float(v) > 0:
        raise ConfigError(f"{key} must be a positive number or 'auto', got {v!r}.")
    return float(v)


def resolve_time_settings(cfg: Any, grid: TimeGrid) -> dict[str, dict[str, float]]:
    """The grid-unit values of the time-valued settings: ``{"loss": {tmax, var_init}, "head": {loc_bias_init,
    loc_scale}}``; ``auto`` follows the grid (variance (TMAX/10)², loc bias TMAX/2, loc scale TMAX/10)."""
    loss, head = _get(cfg, "loss"), _get(cfg, "head")
    t = float(grid.tmax)
    var = _get(loss, "var_init", AUTO)
    bias = _get(head, "loc_bias_init", AUTO)
    scale = _get(head, "loc_scale", AUTO)
    return {
        "loss": {"tmax": int(grid.tmax),
                 "var_init": (t / 10.0) ** 2 if _is_auto(var) else _number(var, "loss.var_init")},
        "head": {"loc_bias_init": t / 2.0 if _is_auto(bias) else _number(bias, "head.loc_bias_init"),
                 "loc_scale": t / 10.0 if _is_auto(scale) else _number(scale, "head.loc_scale")},
    }


def resolved_config(cfg: Any, grid: TimeGrid | None = None):
    """A copy of ``cfg`` (OmegaConf, not struct) whose ``loss``/``head`` sections hold the grid-unit numbers of
    :func:`resolve_time_settings` and no grid keys (``auto_bins``, ``auto_margin``), ready for the model and loss
    builders. ``grid``: default :func:`grid_from_config`."""
    from omegaconf import OmegaConf

    grid = grid_from_config(cfg) if grid is None else grid
    base = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else _plain(cfg)
    vals = resolve_time_settings(cfg, grid)
    loss = dict(base.get("loss") or {})
    for k in ("auto_bins", "auto_margin"):
        loss.pop(k, None)
    loss.update(vals["loss"])
    base["loss"] = loss
    head = base.get("head") or {}
    if isinstance(head, str):
        head = {"name": head}
    head = dict(head)
    head.update(vals["head"])
    base["head"] = head
    return OmegaConf.create(base)


def _plain(cfg: Any) -> dict:
    import dataclasses

    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    return {k: (_plain(v) if dataclasses.is_dataclass(v) else v) for k, v in dict(cfg).items()}
