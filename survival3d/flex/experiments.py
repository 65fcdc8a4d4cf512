"""Run a plan — logits method × masking function × seed × dataset — resumably, and tabulate and plot the results.

Each run lives in ``OUT/runs/<run id>/`` (see :func:`survival3d.flex.train.run_flex`); a run whose ``result.json``
exists and whose saved ``config.yaml`` equals the run's current config is skipped, so an interrupted plan resumes
where it stopped. After the grid, ``OUT`` holds ``results.csv`` (one row per run), ``summary.csv`` and
``results.md`` (mean ± sd over seeds), ``robust_accuracy.png`` (accuracy vs ε per attack) and ``conv_ratio.png``
(mean FlexLayer conv ratio on the validation set after each epoch).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from survival3d.config import config_to_yaml, save_config
from survival3d.engine.grid import GridRun, run_grid
from survival3d.errors import ConfigError
from survival3d.flex.logits import LOGITS
from survival3d.flex.train import _atomic, run_flex

__all__ = ["spec_label", "expand_grid", "run_plan", "summarise", "write_report"]

log = logging.getLogger(__name__)

METRICS = ("val_acc", "fgsm_auc", "pgd_auc", "conv_ratio", "binariness", "homogeneity", "train_time_s",
           "eval_time_s", "params", "logits_params")


def _as_spec(item: Any) -> dict[str, Any]:
    if isinstance(item, DictConfig):
        item = OmegaConf.to_container(item, resolve=True)
    if isinstance(item, str):
        return {"name": item}
    if isinstance(item, dict) and "name" in item:
        return dict(item)
    raise ConfigError(f"grid entry {item!r} must be a name or a mapping with a 'name' key.")


def spec_label(spec: dict[str, Any]) -> str:
    """``sharp_sigmoid(k=50)`` for ``{"name": "sharp_sigmoid", "k": 50}``; the bare name without kwargs."""
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if not kwargs:
        return str(spec["name"])
    args = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(kwargs.items()))
    return f"{spec['name']}({args})"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text.replace("(", "_").replace(")", "")).strip("-")


def expand_grid(cfg: DictConfig) -> list[GridRun]:
    """One :class:`~survival3d.engine.grid.GridRun` per (dataset, logits, masking, seed), with the factors
    ``dataset``, ``logits``, ``masking`` (labels) and ``seed``; joint mechanisms run once per dataset and seed."""
    g = cfg.grid
    logits_specs = [_as_spec(s) for s in g.logits]
    masking_specs = [_as_spec(s) for s in g.masking]
    datasets = [_as_spec(s) for s in g.datasets] or [dict(OmegaConf.to_container(cfg.data, resolve=True))]
    if not logits_specs or not masking_specs or not len(g.seeds):
        raise ConfigError("grid.logits, grid.masking and grid.seeds must each name at least one entry.")
    runs, seen = [], set()
    for data in datasets:
        for lspec in logits_specs:
            joint = LOGITS.get(lspec["name"]).joint
            for mspec in masking_specs[:1] if joint else masking_specs:
                for seed in g.seeds:
                    run_cfg = cfg.copy()
                    try:
                        run_cfg.data = OmegaConf.merge(cfg.data, data)
                    except OmegaConfBaseException as e:
                        raise ConfigError(f"grid.datasets entry {data!r}: {str(e).splitlines()[0]}") from None
                    run_cfg.model.logits = lspec
                    run_cfg.model.masking = mspec
                    run_cfg.train.seed = int(seed)
                    # the run's own one-point grid, so its saved config reproduces it alone
                    run_cfg.grid.logits, run_cfg.grid.masking = [lspec], [mspec]
                    run_cfg.grid.seeds, run_cfg.grid.datasets = [int(seed)], []
                    dname, lname, mname = run_cfg.data.name, spec_label(lspec), "-" if joint else spec_label(mspec)
                    run_id = _slug(f"{dname}__{lname}__{mname}__s{seed}")
                    if run_id in seen:
                        raise ConfigError(f"grid produces the run '{run_id}' twice; remove the duplicate entry.")
                    seen.add(run_id)
                    factors = {"dataset": dname, "logits": lname, "masking": mname, "seed": int(seed)}
                    runs.append(GridRun(run_id, factors, run_cfg))
    return runs


def _is_done(run_dir: Path, run_cfg: DictConfig) -> bool:
    result, saved = run_dir / "result.json", run_dir / "config.yaml"
    if not result.is_file() or not saved.is_file():
        return False
    if saved.read_text() != config_to_yaml(run_cfg):
        log.warning("%s: config changed since the finished run, running again", run_dir.name)
        return False
    return True


def run_plan(cfg: DictConfig, out_dir: str | Path, *, force: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run every grid point not yet finished (all with ``force``), then write the report; returns the per-run table.

    The loop is :func:`survival3d.engine.grid.run_grid`; a failing run stops the plan (``keep_going=False``).
    """
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "plan.yaml")
    runs = expand_grid(cfg)
    t0 = time.perf_counter()

    def train(run_cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
        result = run_flex(run_cfg, run_dir, progress=progress)
        log.info("%s: val_acc=%.4f %s", run_dir.name, result["val_acc"],
                 " ".join(f"{k}={v:.4f}" for k, v in result.items() if k.endswith("_auc")))
        return result

    rows, _ = run_grid(runs, out / "runs", train=train, result_file="result.json",
                       is_done=(lambda run_dir, run_cfg: False) if force else _is_done, keep_going=False,
                       progress=progress, desc="flex plan")
    table = pd.DataFrame(rows)
    write_report(table, out, wall_time_s=time.perf_counter() - t0)
    return table


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds of each metric, per (dataset, logits, masking), in plan order."""
    keys = ["dataset", "logits", "masking"]
    metrics = [m for m in (*METRICS, *[c for c in table.columns if c.endswith("_auc") and c not in METRICS])
               if m in table.columns]
    grouped = table.groupby(keys, sort=False)
    summary = grouped[metrics].agg(["mean", "std"])
    summary.columns = [f"{m}_{s}" for m, s in summary.columns]
    summary.insert(0, "seeds", grouped.size())
    return summary.reset_index()


def _fmt(mean: float, sd: float, digits: int = 3) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if pd.isna(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _markdown(summary: pd.DataFrame, attacks: list[str]) -> str:
    head = ["dataset", "logits", "masking", "seeds", "val acc", *[f"{a.upper()} AUC" for a in attacks],
            "params (logits)", "train s", "eval s", "conv ratio", "binariness", "homogeneity"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [r.dataset, f"`{r.logits}`", f"`{r.masking}`", str(r.seeds),
                 _fmt(r.val_acc_mean, r.val_acc_std),
                 *[_fmt(r[f"{a}_auc_mean"], r[f"{a}_auc_std"]) for a in attacks],
                 f"{int(r.params_mean)} ({int(r.logits_params_mean)})", f"{r.train_time_s_mean:.1f}",
                 f"{r.eval_time_s_mean:.1f}", _fmt(r.conv_ratio_mean, r.conv_ratio_std, 2),
                 _fmt(r.binariness_mean, np.nan, 2), _fmt(r.homogeneity_mean, np.nan, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "v", "D", "x", "P", "*")


def _styles(table: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    """Colour per logits method, line style and marker per masking function: 20+ curves stay tellable apart."""
    import matplotlib.pyplot as plt

    logits = list(dict.fromkeys(table.logits))
    maskings = list(dict.fromkeys(table.masking))
    cmap = plt.get_cmap("tab20" if len(logits) > 10 else "tab10")
    return {(lg, mk): {"color": cmap(logits.index(lg) % cmap.N),
                       "linestyle": _LINESTYLES[maskings.index(mk) % len(_LINESTYLES)],
                       "marker": _MARKERS[maskings.index(mk) % len(_MARKERS)]}
            for lg, mk in zip(table.logits, table.masking)}


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    _atomic(path, lambda p: fig.savefig(p, dpi=120, format="png", bbox_inches="tight"))
    plt.close(fig)


def _plot_curves(table: pd.DataFrame, attacks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = _styles(table)
    datasets = list(dict.fromkeys(table.dataset))
    fig, axes = plt.subplots(len(datasets), len(attacks), figsize=(5 * len(attacks), 4 * len(datasets)),
                             squeeze=False, sharey=True)
    for i, ds in enumerate(datasets):
        sub = table[table.dataset == ds]
        for j, attack in enumerate(attacks):
            ax = axes[i, j]
            for (lg, mk), grp in sub.groupby(["logits", "masking"], sort=False):
                eps = np.asarray(grp.eps.iloc[0])
                found = [c[attack] for c in grp.curves if attack in c]
                if not found:
                    continue
                acc = np.mean(found, axis=0)
                ax.plot(eps, acc, ms=3, lw=1.2, label=f"{lg} / {mk}", **styles[(lg, mk)])
            ax.set(title=f"{ds}: {attack.upper()} (mean over seeds)", xlabel="ε (L∞, pixel range [0, 1])",
                   ylabel="robust accuracy")
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, title="logits / masking")
    fig.tight_layout()
    _save(fig, path)


def _plot_conv_ratio(out: Path, table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = _styles(table)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (lg, mk), grp in table.groupby(["logits", "masking"], sort=False):
        curves = []
        for run_id in grp.run_id:
            hist = out / "runs" / run_id / "history.csv"
            if hist.is_file():
                h = pd.read_csv(hist)
                if "val_conv_ratio" in h:
                    curves.append(h.groupby("epoch")["val_conv_ratio"].mean())
        if curves:
            curve = pd.concat(curves, axis=1).mean(axis=1)
            ax.plot(curve.index, curve.values, lw=1.2, ms=3, label=f"{lg} / {mk}", **styles[(lg, mk)])
    ax.set(xlabel="epoch", ylabel="conv ratio (mean over FlexLayers, validation)", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, title="logits / masking")
    fig.tight_layout()
    _save(fig, path)


def write_report(table: pd.DataFrame, out: Path, *, wall_time_s: float | None = None) -> None:
    """Write ``results.csv``, ``summary.csv``, ``results.md`` and the two PNGs into ``out``."""
    attacks = [c[: -len("_auc")] for c in table.columns if c.endswith("_auc")]
    flat = table.drop(columns=[c for c in ("curves", "eps", "layers") if c in table.columns])
    for attack in attacks:  # the curves, flattened for spreadsheet users
        flat[f"{attack}_curve"] = [";".join(f"{a:.4f}" for a in c.get(attack, [])) for c in table.curves]
    flat["eps"] = [";".join(f"{e:g}" for e in e_) for e_ in table.eps]
    _atomic(out / "results.csv", lambda p: flat.to_csv(p, index=False))
    summary = summarise(table)
    _atomic(out / "summary.csv", lambda p: summary.to_csv(p, index=False))
    device = ", ".join(sorted(set(table.device)))
    threads = ", ".join(str(t) for t in sorted(set(table.torch_threads)))
    eps = table.eps.iloc[0]
    meta = [f"{len(table)} runs; device {device}, torch threads {threads}; ε grid {', '.join(f'{e:g}' for e in eps)}."]
    run_time = (table.train_time_s.sum() + table.eval_time_s.sum()) / 60
    meta.append(f"Sum of per-run train + attack time: {run_time:.1f} min.")
    if wall_time_s is not None:
        meta.append(f"Wall time of this invocation: {wall_time_s / 60:.1f} min (finished runs are skipped, not re-timed).")
    text = "# FlexLayer results\n\n" + " ".join(meta) + "\n\n" + _markdown(summary, attacks)
    _atomic(out / "results.md", lambda p: Path(p).write_text(text))
    _plot_curves(table, attacks, out / "robust_accuracy.png")
    _plot_conv_ratio(out, table, out / "conv_ratio.png")
