"""Run explainers over cases, write every heatmap as NIfTI + pictures, score them against the GT masks and build
the localisation leaderboard (what ``run.py explain`` does once the model and cases are loaded)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from survival3d.explain.base import EXPLAINERS, Unsupported, patch_size_of, run_model
from survival3d.explain.io import plot_3d, plot_overlays, save_nifti, source_geometry, to_source_grid
from survival3d.metrics.localisation import (DISTRACTOR_COLUMNS, LOCALISATION_COLUMNS, distractor_metrics,
                                             localisation_metrics)
from survival3d.io import write_csv, write_json, write_text

__all__ = ["Case", "explain_cases", "leaderboard", "safe_name", "write_leaderboard"]

log = logging.getLogger(__name__)


@dataclass
class Case:
    """One case to explain.

    Attributes:
        id: case id (used in file names, made file-safe).
        batch: a data-path batch of size 1 (``image`` (1, 1, D, H, W), optional ``mask``, ``lung_mask``,
            ``cov_num``, ``cov_cat``, ``time``, ``event``).
        source: the source image file; heatmaps are resampled onto its grid and written with its affine.
        model_affine: the model-space affine (the data path's MetaTensor affine) when known; see
            :func:`~survival3d.explain.io.to_source_grid`.
    """

    id: str
    batch: dict
    source: str | Path | None = None
    model_affine: np.ndarray | None = None


def safe_name(name: str) -> str:
    """A case id as a file-safe folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)) or "case"


def _np(x) -> np.ndarray | None:
    if x is None:
        return None
    return (x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x))[0, 0]




def explain_cases(
    model: torch.nn.Module,
    cases: Iterable[Case],
    methods: Sequence[str],
    out_dir: str | Path,
    *,
    tolerance: float = 0.0,
    topk: float | None = None,
    views: bool = True,
    max_views: int | None = None,
    progress: bool = True,
    total: int | None = None,
    time_grid=None,
) -> pd.DataFrame:
    """Explain every case with every method; write files under ``out_dir/cases/<id>/`` and return the
    localisation table (one row per case × heatmap method; RGB views get files but no row).

    Files per case and method: ``<method>.nii.gz`` (on the source grid with the source affine when the case has a
    source file), and with ``views``: ``<method>_overlay.png`` (three planes) and ``<method>_3d.png`` — for the
    first ``max_views`` cases only when it is set (the PNGs cost more than the cheap explainers themselves).
    Metrics are computed in model space, where the heatmap, the lesion mask and the cubelet grid live.
    ``time_grid``: the model's :class:`~survival3d.time_grid.TimeGrid` (``pred_time`` in the data's unit).
    """
    from tqdm.auto import tqdm

    explainers = {m: EXPLAINERS.build(m) for m in methods}
    out_dir = Path(out_dir)
    rows = []
    if max_views is not None and max_views < 0:
        raise ValueError(f"max_views must be >= 0, got {max_views}.")
    for index, case in enumerate(tqdm(cases, desc="explain", unit="case", disable=None if progress else True, total=total)):
        case_views = views and (max_views is None or index < max_views)
        batch = case.batch
        image = _np(batch["image"])
        mask = _np(batch.get("mask"))
        lung = _np(batch.get("lung_mask"))
        distractor = _np(batch.get("distractor_mask"))
        has_lesion = mask is not None and bool((mask > 0).any())
        with torch.no_grad():
            out = run_model(model, batch)
        grid = out.p.shape[2:] if out.p is not None else next(iter(out.features.values())).shape[2:]
        # energy_pg_cubelet is scored on the model's cubelets, also for a head map finer than them (map_upsample)
        ps = getattr(model, "patch_size", None) or patch_size_of(model, image.shape, grid)
        if case.source is not None:
            src_affine, src_shape = source_geometry(case.source)
        else:
            src_affine = case.model_affine if case.model_affine is not None else np.eye(4)
            src_shape = image.shape
        case_dir = out_dir / "cases" / safe_name(case.id)
        t_case, spent = time.perf_counter(), {}
        for name, explainer in list(explainers.items()):
            t0 = time.perf_counter()
            try:
                heat = explainer(model, batch)[0].numpy()  # (C, D, H, W)
            except Unsupported as e:  # the model lacks what this method needs (e.g. a head without a p map)
                log.warning("skipping explainer '%s' for every case: %s", name, e)
                del explainers[name]
                continue
            on_source = to_source_grid(heat, src_shape, src_affine=src_affine, model_affine=case.model_affine)
            save_nifti(on_source, src_affine, case_dir / f"{name}.nii.gz")
            rgb = explainer.kind == "rgb"
            scores = None if rgb else localisation_metrics(
                heat[0], mask if mask is not None else np.zeros_like(heat[0]), lung_mask=lung, patch_size=ps,
                tolerance=tolerance, topk=topk)
            if case_views:
                title = f"{case.id} · {name}"
                plot_overlays(image, heat if rgb else heat[0], case_dir / f"{name}_overlay.png", mask=mask,
                              lung_mask=lung, affine=case.model_affine if case.model_affine is not None
                              else (src_affine if case.source is not None else None), title=title, rgb=rgb,
                              distractor_mask=distractor, scores=scores)
                if not rgb:
                    plot_3d(heat[0], case_dir / f"{name}_3d.png", lung_mask=lung, mask=mask, title=title)
            if rgb:
                continue
            row = {"case_id": case.id, "method": name, "has_lesion": has_lesion, **scores}
            if distractor is not None:
                row.update(distractor_metrics(heat[0], distractor, lung_mask=lung, patch_size=ps))
            pred = float(out.pred[0])  # grid units → the data's unit (survival3d.time_grid; None = identity)
            row["pred_time"] = pred if time_grid is None else float(time_grid.from_grid(pred))
            for key in ("time", "event"):
                if torch.is_tensor(batch.get(key)):
                    row[key] = float(batch[key].reshape(-1)[0])
            rows.append(row)
            spent[name] = time.perf_counter() - t0
        if index == 0:
            _log_estimate(time.perf_counter() - t_case, spent, total)
    cols = ["case_id", "method", "has_lesion", *LOCALISATION_COLUMNS, "peak_to_mean"]
    df = pd.DataFrame(rows)
    return df[cols + [c for c in df.columns if c not in cols]] if len(df) else pd.DataFrame(columns=cols)


def _log_estimate(first: float, spent: dict[str, float], total: int | None) -> None:
    """After the first case: its time per method and the expected time for all cases (first case × count; the
    first case also pays one-off costs, so this errs on the long side)."""
    per = ", ".join(f"{m} {t:.1f} s" for m, t in sorted(spent.items(), key=lambda kv: -kv[1]))
    if total and total > 1:
        log.info("first case took %.1f s (%s): about %.1f min for all %d cases", first, per, first * total / 60, total)
    else:
        log.info("first case took %.1f s (%s)", first, per)


def leaderboard(table: pd.DataFrame) -> tuple[dict, str]:
    """Method → mean ± sd (ddof=1) of each localisation metric over the cases *with* a lesion; cases without a
    lesion are summarised separately (count and ``peak_to_mean``, which is 1 for a flat map), and, when the table has
    the distractor columns, the cases with a distractor under ``"distractor"`` (mean ± sd of ``DISTRACTOR_COLUMNS``).

    Returns:
        (JSON-ready dict, markdown text). Methods are ranked by ``energy_pg`` (then ``pointing_game``).
    """
    lesion = table[table["has_lesion"].astype(bool)] if len(table) else table
    no_lesion = table[~table["has_lesion"].astype(bool)] if len(table) else table
    board: dict = {"lesion": {}, "no_lesion": {}}

    def stats(col: pd.Series) -> dict:
        v = col.astype(float)
        v = v[np.isfinite(v)]
        return {"mean": float(v.mean()) if len(v) else None, "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
                "n": int(len(v))}

    for method, g in lesion.groupby("method", sort=False):
        board["lesion"][method] = {c: stats(g[c]) for c in LOCALISATION_COLUMNS}
    for method, g in no_lesion.groupby("method", sort=False):
        board["no_lesion"][method] = {"n": int(len(g)), "peak_to_mean": stats(g["peak_to_mean"])}
    if "energy_distractor" in table:  # cases with a distractor, with or without a lesion
        with_d = table[np.isfinite(table["energy_distractor"].astype(float))]
        board["distractor"] = {method: {"n": len(g), **{c: stats(g[c]) for c in DISTRACTOR_COLUMNS}}
                               for method, g in with_d.groupby("method", sort=False)}

    def key(m):
        s = board["lesion"][m]
        return tuple(-(s[c]["mean"] if s[c]["mean"] is not None else -np.inf) for c in ("energy_pg", "pointing_game"))

    ranked = sorted(board["lesion"], key=key)
    board["ranking"] = ranked

    def fmt(s, digits=3):
        if s["mean"] is None:
            return "n/a"
        return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}" if s["sd"] is not None else f"{s['mean']:.{digits}f}"

    n_cases = int(lesion["case_id"].nunique()) if len(lesion) else 0
    lines = [
        "# Localisation leaderboard",
        "",
        f"Cases with a lesion: {n_cases}; mean ± sd over cases; ranked by `energy_pg`. "
        "Read every energy figure against `chance_energy` (the energy of a uniform map).",
        "",
        "| method | " + " | ".join(LOCALISATION_COLUMNS) + " |",
        "|---|" + "---|" * len(LOCALISATION_COLUMNS),
    ]
    for m in ranked:
        lines.append(f"| {m} | " + " | ".join(fmt(board['lesion'][m][c]) for c in LOCALISATION_COLUMNS) + " |")
    if board["no_lesion"]:
        lines += ["", "## Cases without a lesion (not in the ranking)", "", "| method | n | peak_to_mean |",
                  "|---|---|---|"]
        for m, s in board["no_lesion"].items():
            lines.append(f"| {m} | {s['n']} | {fmt(s['peak_to_mean'])} |")
    if board.get("distractor"):
        lines += ["", ("## Mass on distractors (cases with one; a map that avoids them is below its chance level; "
                       "4 decimals)"), "", "| method | n | " + " | ".join(DISTRACTOR_COLUMNS) + " |",
                  "|---|---|" + "---|" * len(DISTRACTOR_COLUMNS)]
        for m, s in board["distractor"].items():
            lines.append(f"| {m} | {s['n']} | " + " | ".join(fmt(s[c], 4) for c in DISTRACTOR_COLUMNS) + " |")
    return board, "\n".join(lines) + "\n"


def write_leaderboard(table: pd.DataFrame, out_dir: str | Path) -> dict:
    """``localisation.csv``, ``leaderboard.json`` and ``leaderboard.md`` under ``out_dir`` (atomic writes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "localisation.csv", table)
    board, md = leaderboard(table)
    write_json(out_dir / "leaderboard.json", board, allow_nan=False)
    write_text(out_dir / "leaderboard.md", md)
    return board
