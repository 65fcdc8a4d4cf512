"""Evaluation figures (matplotlib, Agg backend): predicted vs observed time, Kaplan–Meier curves by predicted-risk
tertile with the log-rank p-value, calibration of the predicted survival at a few horizons, and the training curves
of a run's ``metrics.csv``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from survival3d.io import atomic_path
from survival3d.metrics.survival import harrell_c_index, pmf_to_survival, survival_at

__all__ = ["plot_pred_vs_observed", "plot_km_by_risk_tertile", "plot_calibration", "save_figure", "plot_training_curves"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Save atomically (temp file + rename) and close the figure."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:  # the temporary name keeps the suffix: matplotlib picks the format by it
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return path


def plot_pred_vs_observed(predictions: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Scatter of predicted vs observed time with the y = x line; censored cases hollow (their true time is later,
    so a point above the line is not an error). A second panel against ``expected_time`` when present."""
    plt = _plt()
    has_exp = "expected_time" in predictions.columns and predictions["expected_time"].notna().all()
    fig, axes = plt.subplots(1, 2 if has_exp else 1, figsize=(10 if has_exp else 5, 4.6), squeeze=False)
    ev = predictions["event"].to_numpy().astype(bool)
    pred = predictions["pred_time"].to_numpy(float)
    panels = [("time", "observed time")] + ([("expected_time", "expected (noise-free) time")] if has_exp else [])
    risk = predictions["risk"].to_numpy(float) if "risk" in predictions.columns else -pred
    for ax, (col, label) in zip(axes[0], panels):
        x = predictions[col].to_numpy(float)
        # Harrell's C of the prediction against this panel's times (expected times: every case counts as an event)
        try:
            c = harrell_c_index(x, risk, ev if col == "time" else np.ones_like(ev))
        except (ZeroDivisionError, ValueError):  # no comparable pair
            c = float("nan")
        ax.set_title(f"predicted vs {label}\nHarrell C-index {c:.3f} (n = {len(x)})", fontsize=10)
        ax.scatter(x[ev], pred[ev], s=18, c="tab:blue", label=f"event (n={ev.sum()})")
        ax.scatter(
            x[~ev], pred[~ev], s=18, facecolors="none", edgecolors="tab:orange", label=f"censored (n={(~ev).sum()})"
        )
        lo = float(min(x.min(), pred.min()))
        hi = float(max(x.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
        ax.set_xlabel(label)
        ax.set_ylabel("predicted time")
        ax.legend(loc="upper left", fontsize=8)
        ax.set_aspect("equal", adjustable="datalim")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_km_by_risk_tertile(predictions: pd.DataFrame, path: str | Path, title: str = "") -> tuple[Path, float]:
    """Kaplan–Meier curves of the observed times in the low / mid / high predicted-risk tertiles.

    Returns:
        (path, p-value of lifelines' multivariate log-rank test across the tertiles; NaN with < 2 groups).
    """
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test

    plt = _plt()
    risk = predictions["risk"].to_numpy(float)
    time = predictions["time"].to_numpy(float)
    event = predictions["event"].to_numpy().astype(int)
    groups = pd.qcut(pd.Series(risk).rank(method="first"), 3, labels=["low risk", "mid risk", "high risk"])
    groups = groups.astype(str).to_numpy()
    p = float("nan")
    if len(set(groups)) > 1 and event.sum() > 0:
        p = float(multivariate_logrank_test(time, groups, event).p_value)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, colour in zip(["low risk", "mid risk", "high risk"], ["tab:green", "tab:orange", "tab:red"]):
        sel = groups == name
        if sel.any():
            KaplanMeierFitter(label=f"{name} (n={sel.sum()})").fit(time[sel], event[sel]).plot_survival_function(
                ax=ax, color=colour, ci_show=True
            )
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(-0.02, 1.02)
    # below the axes: the curves start at the top left and a legend inside would cover them
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False,
              title="predicted-risk tertile (shaded: 95% CI)", title_fontsize=8)
    ax.set_title((title + "\n" if title else "") + f"KM by predicted-risk tertile, log-rank p = {p:.2g}")
    return save_figure(fig, path), p


def plot_calibration(
    predictions: pd.DataFrame, pmf: np.ndarray, horizons, path: str | Path, n_bins: int = 4, title: str = "",
    time_scale: float = 1.0,
) -> Path:
    """Calibration at each horizon t: cases binned by predicted S(t) (quantile bins); mean predicted S(t) per bin
    against the Kaplan–Meier estimate of S(t) in that bin (with its 95% CI), and the y = x line.

    ``time_scale``: time units per pmf column (the model's grid bin width; times and horizons are in time units)."""
    from lifelines import KaplanMeierFitter

    plt = _plt()
    horizons = np.atleast_1d(np.asarray(horizons, dtype=float))
    surv = survival_at(pmf_to_survival(pmf), horizons if time_scale == 1.0 else horizons / float(time_scale))
    time = predictions["time"].to_numpy(float)
    event = predictions["event"].to_numpy().astype(int)
    fig, axes = plt.subplots(1, max(1, horizons.size), figsize=(4 * max(1, horizons.size), 4), squeeze=False)
    for ax, k in zip(axes[0], range(horizons.size)):
        t = horizons[k]
        s = surv[:, k]
        bins = pd.qcut(pd.Series(s).rank(method="first"), min(n_bins, len(s)), labels=False).to_numpy()
        xs, ys, lo, hi = [], [], [], []
        for b in np.unique(bins):
            sel = bins == b
            km = KaplanMeierFitter().fit(time[sel], event[sel])
            xs.append(s[sel].mean())
            ys.append(float(km.survival_function_at_times(t).iloc[0]))
            ci = km.confidence_interval_survival_function_
            row = ci[ci.index <= t]
            lo.append(float(row.iloc[-1, 0]) if len(row) else 1.0)
            hi.append(float(row.iloc[-1, 1]) if len(row) else 1.0)
        ys, lo, hi = np.array(ys), np.array(lo), np.array(hi)
        ax.errorbar(xs, ys, yerr=[np.clip(ys - lo, 0, None), np.clip(hi - ys, 0, None)], fmt="o-", capsize=3,
                    label=f"{len(xs)} bins: KM ± 95% CI")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.legend(loc="best", fontsize=8)  # where it covers the fewest points
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"predicted S({t:g})")
        ax.set_ylabel(f"observed KM S({t:g})")
        gap = float(np.mean(np.abs(np.asarray(xs) - ys)))
        ax.set_title(f"t = {t:g}: mean |predicted − observed| {gap:.3f}", fontsize=10)
    fig.suptitle((title + ": " if title else "") + "calibration of the predicted survival S(t)")
    fig.tight_layout()
    return save_figure(fig, path)


#: The panels of :func:`plot_training_curves`: (title, y label, [(column, legend label, style)], y limits or None).
_CURVE_PANELS = (
    ("loss", "loss (nats per case)", [("train_loss", "train", "-"), ("val_loss", "validation", "--")], None),
    ("C-index", "Harrell's C-index", [("c_index", "model", "-"), ("c_index_oracle", "oracle (expected times)", "--")], None),
    ("softmin temperature", "β (1 / time unit)", [("beta", "β", "-")], None),
    ("loc bias and variance", "time units (VAR: time units²)", [("loc_bias", "loc bias b", "-"), ("var", "VAR (learned)", "--")],
     None),
    ("where p sits (validation)", "mass of p / share of cases",
     [("p_lesion", "on lesion cubelets", "-"), ("p_distractor", "on distractor cubelets", "--"), ("p_max", "max p", ":"),
      ("pointing", "pointing game (share of cases)", "-.")],
     (0.0, 1.02)),
    ("spread (validation)", "entropy (nats) / sd (time units)", [("p_entropy", "entropy H(p), nats", "-"),
                                                                  ("loc_sd", "sd of loc, time units", "--")], None),
)


def plot_training_curves(metrics: pd.DataFrame | str | Path, path: str | Path, title: str = "") -> Path:
    """The training curves of one run (one ``metrics.csv``): loss, C-index against the oracle, β, loc bias (and a
    learned VAR), the validation p mass on lesion/distractor cubelets, and the spread of p and loc, each against the
    epoch. Columns that are missing or empty are left out of their panel (a panel with none says so)."""
    plt = _plt()
    df = pd.read_csv(metrics) if isinstance(metrics, (str, Path)) else metrics
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False)
    x = pd.to_numeric(df["epoch"], errors="coerce") if "epoch" in df else pd.Series(np.arange(1, len(df) + 1))
    for ax, (name, ylabel, series, ylim) in zip(axes.flat, _CURVE_PANELS):
        drawn = 0
        for col, label, style in series:
            if col not in df:
                continue
            y = pd.to_numeric(df[col], errors="coerce")
            ok = y.notna() & x.notna()
            if not ok.any():
                continue
            ax.plot(x[ok], y[ok], style, marker="o", markersize=3, label=label)
            drawn += 1
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded in this run", ha="center", va="center", transform=ax.transAxes, fontsize=9)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)  # loc bias moves by 0.01 around 50: show the values
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
