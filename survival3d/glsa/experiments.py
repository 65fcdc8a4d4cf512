"""Experiment plans: grids of GLSA runs and the paper tables built from them.

A plan (``configs/glsa/paper.yaml``) names the datasets (each with a training config), the seeds, and studies;
a study is a grid ``backbone × attention × fusion × residual`` plus a ``baseline``: the factor values that turn a
row into the row it is compared with (``{attention: none}`` compares every CBAM row with the same backbone
without attention). Every (dataset, backbone, attention, fusion, residual, seed) is trained once, even when
several studies share it, under ``{output_dir}/runs/{dataset}_{backbone}_s{seed}_{fusion}_{residual}_{attention}``;
a run whose ``results.json`` exists is skipped, so an interrupted plan resumes where it stopped.

Tables (``{output_dir}/tables/{study}_{dataset}.md`` and ``.tex``, all together in ``tables.md``) give, per row,
the mean ± sd over seeds of accuracy, balanced accuracy and macro-F1, the exact parameter count, the mean training
time, and the p-value of a paired t-test (``scipy.stats.ttest_rel``, pairs = seeds) of the plan's ``metric``
against the row's baseline.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from survival3d.config import load_config
from survival3d.engine.grid import GridRun, run_grid
from survival3d.errors import ConfigError
from survival3d.glsa.config import GLSAConfig
from survival3d.glsa.trainer import _atomic_write, make_run_name, train

__all__ = ["PlanConfig", "StudyConfig", "DatasetEntry", "load_plan", "expand_plan", "run_plan", "collect_results",
           "build_tables"]

log = logging.getLogger(__name__)

FACTORS = ("backbone", "attention", "fusion", "residual")
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
_TITLES = {
    "backbone_comparison": "Backbone comparison",
    "cbam_impact": "Impact of CBAM local attention",
    "fusion_ablation": "Fusion strategy ablation",
    "residual_ablation": "Residual strategy ablation",
    "cross_dataset": "Cross-dataset validation",
}


@dataclass
class DatasetEntry:
    config: str = "glsa/ham10000.yaml"  # training config (relative to the plan file or configs/)
    overrides: list[str] = field(default_factory=list)  # applied after the plan's overrides


@dataclass
class StudyConfig:
    backbone: list[str] = field(default_factory=lambda: ["resnet50"])
    attention: list[str] = field(default_factory=lambda: ["cbam"])
    fusion: list[str] = field(default_factory=lambda: ["original"])
    residual: list[str] = field(default_factory=lambda: ["original"])
    baseline: dict[str, str] = field(default_factory=dict)  # e.g. {attention: none}; empty = no test
    datasets: Optional[list[str]] = None  # default: every dataset of the plan
    title: Optional[str] = None


@dataclass
class PlanConfig:
    name: str = "glsa_plan"
    output_dir: str = "runs/glsa_experiments"
    datasets: dict[str, DatasetEntry] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    overrides: list[str] = field(default_factory=list)  # training-config overrides for every run
    metric: str = "balanced_accuracy"  # the metric of the paired t-test
    studies: dict[str, StudyConfig] = field(default_factory=dict)


def load_plan(path: str | Path, overrides=()) -> tuple[DictConfig, Path]:
    """Load and check a plan; returns it with the plan file's folder (for relative training-config paths)."""
    plan = load_config(path, overrides, schema=PlanConfig)
    if not plan.datasets:
        raise ConfigError(f"{path}: the plan names no datasets.")
    if not plan.studies:
        raise ConfigError(f"{path}: the plan has no studies.")
    if not plan.seeds:
        raise ConfigError(f"{path}: seeds is empty.")
    if plan.metric not in METRICS:
        raise ConfigError(f"{path}: metric must be one of {METRICS}, got {plan.metric!r}.")
    for name, study in plan.studies.items():
        bad = sorted(set(study.baseline) - set(FACTORS))
        if bad:
            raise ConfigError(f"{path}: studies.{name}.baseline has unknown factor(s) {bad}; factors: {FACTORS}.")
        for ds in study.datasets or []:
            if ds not in plan.datasets:
                raise ConfigError(f"{path}: studies.{name}.datasets names '{ds}', not one of {list(plan.datasets)}.")
        for f in FACTORS:
            if not study[f]:
                raise ConfigError(f"{path}: studies.{name}.{f} is empty.")
    return plan, Path(path).resolve().parent


def _study_rows(study) -> list[tuple[str, str, str, str]]:
    rows = list(itertools.product(*(list(study[f]) for f in FACTORS)))
    for r in list(rows):
        b = _baseline_row(r, study)
        if b not in rows:
            rows.append(b)
    return rows


def _baseline_row(row: tuple[str, ...], study) -> tuple[str, ...]:
    return tuple(study.baseline.get(f, v) for f, v in zip(FACTORS, row))


def _run(dataset: str, row: tuple[str, ...], seed: int) -> GridRun:
    factors = {"dataset": dataset, **dict(zip(FACTORS, row)), "seed": seed}
    name = make_run_name(f"{dataset}_{factors['backbone']}_s{seed}", factors["fusion"], factors["residual"],
                         factors["attention"])
    return GridRun(name, factors)


def expand_plan(plan: DictConfig) -> list[GridRun]:
    """Every distinct run of the plan, in study order (baselines included); ``cfg`` is filled in by :func:`run_plan`.

    A run's ``run_id`` is its folder name under ``{output_dir}/runs``; its factors are ``dataset``, ``backbone``,
    ``attention``, ``fusion``, ``residual`` and ``seed``.
    """
    runs: dict[tuple, GridRun] = {}
    for study in plan.studies.values():
        for ds in study.datasets or list(plan.datasets):
            for row in _study_rows(study):
                for seed in plan.seeds:
                    run = _run(ds, row, int(seed))
                    runs.setdefault(tuple(run.factors.items()), run)
    return list(runs.values())


def _train_config(plan: DictConfig, plan_dir: Path, run: GridRun) -> DictConfig:
    f = run.factors
    entry = plan.datasets[f["dataset"]]
    cfg_path = plan_dir / entry.config
    if not cfg_path.is_file():
        cfg_path = Path(entry.config)  # resolved by load_config (working directory, then configs/)
    overrides = [
        *plan.overrides,
        *entry.overrides,
        f"model.backbone={f['backbone']}",
        f"model.attention={f['attention']}",
        f"model.fusion={f['fusion']}",
        f"model.residual={f['residual']}",
        f"train.seed={f['seed']}",
        f"train.run_name={f['dataset']}_{f['backbone']}_s{f['seed']}",
        f"train.output_dir={Path(plan.output_dir) / 'runs'}",
    ]
    return load_config(cfg_path, overrides, schema=GLSAConfig)


def run_plan(plan: DictConfig, plan_dir: Path, *, dry_run: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Train every unfinished run of the plan, then return all results (one row per run) and the failed run names.

    The loop is :func:`survival3d.engine.grid.run_grid`: user errors (config, data) stop the plan at once; any
    other failure of one run is logged and the plan goes on (the run is retried next time). Every run's training
    config is built before the first run trains, so a config error stops the plan before any training.
    """
    runs = expand_plan(plan)
    out = Path(plan.output_dir) / "runs"
    if dry_run:
        done = {r.run_id for r in runs if (out / r.run_id / "results.json").is_file()}
        log.info("plan %s: %d runs, %d finished, %d to train", plan.name, len(runs), len(done), len(runs) - len(done))
        for r in runs:
            log.info("%s %s", "done" if r.run_id in done else "todo", r.run_id)
        return pd.DataFrame(), []
    for r in runs:
        r.cfg = _train_config(plan, plan_dir, r)
    rows, failed = run_grid(runs, out, train=lambda cfg, run_dir: train(cfg, run_dir=run_dir),
                            result_file="results.json", keep_going=True, desc=f"plan {plan.name}")
    return pd.DataFrame([_row(r) for r in rows]), failed


def _row(res: dict) -> dict:
    """The results-table row of one run: its factors, its name and the reported values of ``results.json``."""
    return {**{k: res[k] for k in ("dataset", "backbone", "attention", "fusion", "residual", "seed")},
            "run_name": res["run_id"], **{m: res[m] for m in METRICS}, "params": res["params"],
            "train_time_s": res["train_time_s"], "epochs_run": res["epochs_run"], "device": res.get("device", "")}


def collect_results(plan: DictConfig) -> pd.DataFrame:
    """One row per finished run of the plan (``results.json`` values plus the run's factors), without training."""
    rows = []
    for r in expand_plan(plan):
        p = Path(plan.output_dir) / "runs" / r.run_id / "results.json"
        if p.is_file():
            rows.append(_row({**json.loads(p.read_text()), "run_id": r.run_id, **r.factors}))  # factors win
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------------------------- tables
def _mean_sd(values: np.ndarray, scale: float = 100.0, digits: int = 2) -> str:
    if len(values) == 0:
        return "–"
    m = float(np.mean(values)) * scale
    if len(values) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {float(np.std(values, ddof=1)) * scale:.{digits}f}"


def paired_p_value(a: dict[int, float], b: dict[int, float]) -> float:
    """Paired t-test p-value over the seeds both rows have; NaN with fewer than two pairs or no variation."""
    from scipy.stats import ttest_rel

    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return math.nan
    x, y = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    if np.allclose(x - y, (x - y)[0]):
        return math.nan  # constant differences: the t statistic is undefined
    return float(ttest_rel(x, y).pvalue)


def study_table(df: pd.DataFrame, study, dataset: str, metric: str) -> pd.DataFrame:
    """The table of one study on one dataset (one row per grid configuration, strings ready to print)."""
    rows = []
    sub = df[df["dataset"] == dataset] if len(df) else df
    for row in _study_rows(study):
        mask = np.ones(len(sub), dtype=bool)
        for f, v in zip(FACTORS, row):
            mask &= (sub[f] == v).to_numpy()
        r = sub[mask]
        base = _baseline_row(row, study)
        if not study.baseline:
            p = "–"
        elif base == row:
            p = "baseline"
        else:
            bmask = np.ones(len(sub), dtype=bool)
            for f, v in zip(FACTORS, base):
                bmask &= (sub[f] == v).to_numpy()
            pv = paired_p_value(dict(zip(r["seed"], r[metric])), dict(zip(sub[bmask]["seed"], sub[bmask][metric])))
            p = "n/a" if math.isnan(pv) else (f"{pv:.3f}" if pv >= 0.001 else "<0.001")
        rows.append({
            "Backbone": row[0], "Attention": row[1], "Fusion": row[2], "Residual": row[3],
            "Params": f"{int(r['params'].iloc[0]):,}" if len(r) else "–",
            "Time (s)": _mean_sd(r["train_time_s"].to_numpy(), 1.0, 0) if len(r) else "–",
            "Accuracy (%)": _mean_sd(r["accuracy"].to_numpy()) if len(r) else "–",
            "Bal. acc. (%)": _mean_sd(r["balanced_accuracy"].to_numpy()) if len(r) else "–",
            "Macro-F1 (%)": _mean_sd(r["macro_f1"].to_numpy()) if len(r) else "–",
            f"p ({metric})": p,
            "n": str(len(r)),
        })
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in rec) + " |" for rec in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    return str(s).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("±", r"$\pm$").replace("<", r"$<$")


def to_latex(table: pd.DataFrame, caption: str, label: str) -> str:
    cols = list(table.columns)
    head = " & ".join(_tex_escape(c) for c in cols) + r" \\"
    body = "\n".join(" & ".join(_tex_escape(v) for v in rec) + r" \\" for rec in table.itertuples(index=False))
    return (
        "\\begin{table}[t]\n\\centering\n\\small\n"
        f"\\caption{{{_tex_escape(caption)}}}\n\\label{{{label}}}\n"
        f"\\begin{{tabular}}{{{'l' * 4 + 'r' * (len(cols) - 4)}}}\n\\toprule\n{head}\n\\midrule\n{body}\n\\bottomrule\n"
        "\\end{tabular}\n\\end{table}\n"
    )


def build_tables(plan: DictConfig, df: pd.DataFrame | None = None) -> list[Path]:
    """Write every study's markdown and LaTeX tables plus ``results.csv`` and ``tables.md``; returns the paths."""
    df = collect_results(plan) if df is None else df
    out = Path(plan.output_dir)
    tables_dir = out / "tables"
    written, combined = [], [f"# {plan.name}\n", f"Mean ± sd over seeds {list(plan.seeds)}; p: paired t-test of "
                                                  f"{plan.metric} against the row's baseline (scipy.stats.ttest_rel).\n"]
    if len(df):
        _atomic_write(out / "results.csv", lambda tmp: df.to_csv(tmp, index=False, float_format="%.6g"))
        written.append(out / "results.csv")
        devices = sorted(set(df["device"]))
        combined.append(f"Device(s): {', '.join(devices)}.\n")
    for name, study in plan.studies.items():
        for ds in study.datasets or list(plan.datasets):
            table = study_table(df, study, ds, plan.metric)
            title = f"{study.title or _TITLES.get(name, name.replace('_', ' ').capitalize())} ({ds})"
            md = f"## {title}\n\n" + to_markdown(table)
            tex = to_latex(table, title, f"tab:{name}_{ds}")
            for suffix, text in ((".md", md), (".tex", tex)):
                path = tables_dir / f"{name}_{ds}{suffix}"
                _atomic_write(path, lambda tmp, t=text: Path(tmp).write_text(t))
                written.append(path)
            combined.append(md)
    _atomic_write(out / "tables.md", lambda tmp: Path(tmp).write_text("\n".join(combined)))
    written.append(out / "tables.md")
    return written
