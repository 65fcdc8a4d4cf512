"""The per-patient outputs a reader needs without the code: the survival table, the survival curve, the heatmap
overlay through its peak, and a one-page self-contained HTML summary."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from survival3d.io import atomic_path, write_text

__all__ = ["survival_table", "plot_survival", "plot_overlay", "write_summary_page"]


def survival_table(pmf: np.ndarray, member_pmfs: Sequence[np.ndarray], names: Sequence[str],
                   times: np.ndarray | None = None) -> pd.DataFrame:
    """``t, pmf, survival, cdf`` over the time grid's bins (``t`` in the data's unit, default 1..TMAX;
    S(t) = P(T > t)), plus ``pmf_<member>`` for an ensemble."""
    pmf = np.asarray(pmf, dtype=np.float64)
    cdf = np.cumsum(pmf)
    t = np.arange(1, len(pmf) + 1) if times is None else np.asarray(times)
    df = pd.DataFrame({"t": t, "pmf": pmf, "survival": np.clip(1.0 - cdf, 0.0, 1.0),
                       "cdf": np.clip(cdf, 0.0, 1.0)})
    if len(member_pmfs) > 1:
        for n, m in zip(names, member_pmfs):
            df[f"pmf_{n}"] = m
    return df


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path


def plot_survival(res: Mapping[str, Any], names: Sequence[str], unit: str, path: str | Path, *, title: str = "",
                  times: np.ndarray | None = None) -> Path:
    """S(t) of the (ensemble) prediction with its 10–90 % interval, median and mean marked; members in grey."""
    plt = _plt()
    pmf = np.asarray(res["pmf"])
    t = np.arange(1, len(pmf) + 1) if times is None else np.asarray(times)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    members = res["members"]
    if len(members) > 1:
        for i, mb in enumerate(members):
            ax.step(t, 1 - np.cumsum(mb["pmf"]), where="post", color="grey", lw=0.8, alpha=0.6,
                    label="ensemble members" if i == 0 else None)
    ax.step(t, 1 - np.cumsum(pmf), where="post", color="C0", lw=2, label="predicted survival S(t)")
    ax.axvspan(res["q10_time"], res["q90_time"], color="C0", alpha=0.12, label="10–90 % interval")
    ax.axvline(res["median_time"], color="C3", ls="--", lw=1.2, label=f"median {res['median_time']:.0f} {unit}")
    ax.axvline(res["mean_time"], color="C2", ls=":", lw=1.2, label=f"mean {res['mean_time']:.1f} {unit}")
    ax.set_xlim(0, float(t[-1]))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"time ({unit})")
    ax.set_ylabel("probability of surviving beyond t")
    ax.set_title(title or "predicted survival")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, Path(path))


def plot_overlay(image: np.ndarray, heat: np.ndarray, affine: np.ndarray, path: str | Path, *,
                 window: tuple[float, float], title: str = "") -> Path:
    """Axial, coronal and sagittal slices through the heatmap's peak: the CT in grey (``window``), the heatmap on
    top (transparent below 5 % of its maximum) with a colourbar; voxel aspect from the affine."""
    from survival3d.explain.io import plane_axes
    from survival3d.data.readers import affine_spacing

    plt = _plt()
    image = np.asarray(image, dtype=np.float32)
    h = np.asarray(heat, dtype=np.float32)
    peak = np.unravel_index(int(np.argmax(h)), h.shape)
    sp = affine_spacing(np.asarray(affine))
    axes = plane_axes(affine)
    vmax = float(h.max()) if h.max() > 0 else 1.0
    fig, ax = plt.subplots(1, 3, figsize=(13, 4.6))
    im = None
    for a, plane in zip(ax, ("axial", "coronal", "sagittal")):
        axis = axes[plane]
        sl = [slice(None)] * 3
        sl[axis] = int(peak[axis])
        sl = tuple(sl)
        rest = [i for i in range(3) if i != axis]
        aspect = sp[rest[1]] / sp[rest[0]]
        a.imshow(image[sl].T, cmap="gray", origin="lower", vmin=window[0], vmax=window[1], aspect=aspect)
        shown = np.ma.masked_less(h[sl], 0.05 * vmax)
        im = a.imshow(shown.T, cmap="inferno", origin="lower", alpha=0.55, vmin=0, vmax=vmax, aspect=aspect)
        a.set_title(f"{plane} slice {int(peak[axis])} (through the peak)", fontsize=9)
        a.axis("off")
    fig.colorbar(im, ax=list(ax), shrink=0.8, label="softmin weight p (share of the prediction)")
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path))


def _img(path: Path) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def _fmt(v, digits: int = 1) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def write_summary_page(info: Mapping[str, Any], ens, case_dir: Path, files: Mapping[str, str]) -> Path:
    """``summary.html``: one self-contained page (figures embedded) explaining the prediction in words."""
    u = html.escape(info["time_unit"])
    e = html.escape
    members = info.get("members", [])
    rows = [
        ("Predicted survival time (mean)", f"{_fmt(info.get('mean_time'))} {u}",
         "expected value of the predicted distribution"),
        ("Predicted survival time (median)", f"{_fmt(info.get('median_time'), 0)} {u}",
         "half of the predicted probability lies before this time"),
        ("Interval (10–90 %)", f"{_fmt(info.get('q10_time'), 0)} – {_fmt(info.get('q90_time'), 0)} {u}",
         "80 % of the predicted probability lies in this range"),
        ("Risk score", _fmt(info.get("risk"), 2), "higher = shorter predicted survival; only for ranking patients "
                                                     "scored by the same model"),
    ]
    if len(members) > 1:
        rows.append(("Spread between models", f"{_fmt(info.get('member_sd_time'))} {u}",
                     f"sd of the {len(members)} ensemble members' mean times (model uncertainty)"))
    if info.get("p_at_tmax") is not None and info["p_at_tmax"] > 0.01:
        rows.append(("Probability at the grid's end", _fmt(100 * info["p_at_tmax"], 1) + " %",
                     f"mass at t = {_fmt(info.get('horizon', info['tmax']))} {u}, the longest time the model can "
                     "predict"))
    table = "".join(f"<tr><th>{e(a)}</th><td><b>{b}</b></td><td>{e(c)}</td></tr>" for a, b, c in rows)
    mem = "".join(f"<tr><td>{e(m['name'])}</td><td>{_fmt(m.get('mean_time', m.get('pred')))} {u}</td>"
                  f"<td>{_fmt(m.get('median_time'), 0)} {u}</td></tr>" for m in members)
    obs = ""
    if info.get("time") is not None:
        obs = (f"<p>Observed in the input table: {_fmt(info['time'])} {u} "
               f"({'event' if info.get('event') == 1 else 'censored'}); not used for the prediction.</p>")
    peak = info.get("peak_world_mm")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(info['id'])}: survival prediction</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}th{{text-align:left;padding-right:1em}}
td{{padding:0.2em 1em 0.2em 0}}table{{border-collapse:collapse}} .note{{color:#555;font-size:90%}}</style></head><body>
<h1>Patient {e(info['id'])}: predicted survival</h1>
<p class="note">Input: {e(str(info['source']))} ({e(info['input_kind'])}). Times are in <b>{u}</b>, the unit of the
model's training data. Research software: not for clinical decisions.</p>
<table>{table}</table>{obs}
<h2>Survival curve</h2><p class="note">Probability of surviving beyond each time, with the 10–90 % interval shaded.</p>
{_img(case_dir / files['survival_png']) if 'survival_png' in files else '<p>(no distribution for this model)</p>'}
<h2>Where the model looked</h2><p class="note">The heatmap shows the weight each region of the scan had in the
prediction (softmin weight p). Slices pass through its peak{' at world (' + ', '.join(f'{v:.1f}' for v in peak) + ') mm' if peak else ''}.
The heatmap file <code>heatmap.nii.gz</code> lies on the original CT's grid and opens over it in 3D Slicer or ITK-SNAP.</p>
{_img(case_dir / files['overlay_png']) if 'overlay_png' in files else '<p>(no heatmap for this model)</p>'}
<h2>Model</h2><p class="note">{len(members)} model(s); preprocessing: {e(info['plan'])}.</p>
<table><tr><th>member</th><th>mean</th><th>median</th></tr>{mem}</table>
</body></html>
"""
    return write_text(case_dir / "summary.html", page)
