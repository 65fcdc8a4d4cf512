"""`run.py evaluate`: survival metrics, predictions and figures of a trained model (or of every fold of a k-fold run)
on the cases of a manifest.

Writes under ``--out``: ``metrics.json``, ``predictions.csv`` and ``figures/{pred_vs_observed,km_risk_tertiles,
calibration}.png``. For a k-fold run directory, each fold gets ``fold<k>/`` with the same files and the top-level
``metrics.json`` holds the per-fold metrics and their mean ± sd; the top-level ``predictions.csv`` stacks the folds
with a ``fold`` column.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from survival3d.cli import COMMANDS
from survival3d.errors import ConfigError, InputError

log = logging.getLogger(__name__)

MIN_CASES = 3  # the risk-tertile figure and any ranking metric need a few cases
_FOLD_DIR = re.compile(r"^fold[_-]?(\d+)$")


def fold_checkpoints(path: str | Path) -> list[tuple[str, Path]]:
    """``[(name, checkpoint_or_run_dir), ...]``: the ``fold<k>`` sub-folders of a k-fold run directory (sorted by k),
    or ``[("model", path)]`` for a single checkpoint / single run."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such checkpoint file or run directory", path=path, field="--checkpoint")
    if path.is_dir():
        folds = sorted(
            ((int(m.group(1)), p) for p in path.iterdir() if p.is_dir() and (m := _FOLD_DIR.match(p.name))),
            key=lambda kp: kp[0],
        )
        if folds:
            return [(p.name, p) for _, p in folds]
    return [("model", path)]


def predict_manifest(checkpoint: Path, manifest: Path):
    """The glue to the engine and the data path: load a trained model, predict every case of the manifest.

    Uses :func:`survival3d.engine.checkpoint.load_trained`, ``TrainedModel.dataset(manifest)`` (the run's
    evaluation preprocessing and covariate encoder; manifest read by ``read_manifest``) and ``TrainedModel.predict``.

    Returns:
        (predictions DataFrame with id,time,event,pred_time,risk[,expected_time], times in the data's unit; (n, tmax)
        pmf array over the model's time grid in the same row order, or None when the loss defines no distribution;
        ALPHA_CENS of the run's loss; the run's :class:`~survival3d.time_grid.TimeGrid`).
    """
    from survival3d.engine.checkpoint import load_trained

    trained = load_trained(checkpoint)
    preds = trained.predict(trained.dataset(manifest))
    if "expected_time" in preds.columns and preds["expected_time"].isna().all():
        preds = preds.drop(columns="expected_time")
    pmf, _ = trained.pmf(preds["pred_time"].to_numpy())
    alpha = float(getattr(getattr(trained.cfg, "loss", None), "alpha_cens", 1.0))
    trained.time_grid.check(preds["time"].to_numpy(), preds["event"].to_numpy(), what="evaluated", source=manifest)
    return preds, pmf, alpha, trained.time_grid


def parse_horizons(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        h = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError as e:
        raise ConfigError(f"--horizons must be comma-separated numbers, got {text!r}.") from e
    if not h or h[0] <= 0:
        raise ConfigError(f"--horizons must be positive times, got {text!r}.")
    return h


def evaluate_one(preds, pmf, alpha_cens: float, out_dir: Path, *, title: str = "", figures: bool = True,
                 horizons: list[float] | None = None, time_grid=None) -> dict:
    """metrics.json + predictions.csv + figures for one model's predictions; returns the metrics."""
    from survival3d.io import write_csv, write_json
    from survival3d.metrics import survival_metrics
    from survival3d.metrics.figures import plot_calibration, plot_km_by_risk_tertile, plot_pred_vs_observed

    out_dir.mkdir(parents=True, exist_ok=True)
    scale = 1.0 if time_grid is None else float(time_grid.bin_width)
    metrics = survival_metrics(preds, pmf, alpha_cens=alpha_cens, horizons=horizons, time_scale=scale)
    if time_grid is not None:
        metrics["time_unit"] = time_grid.unit
        metrics["time_grid"] = time_grid.state_dict()
    if figures:
        fig_dir = out_dir / "figures"
        plot_pred_vs_observed(preds, fig_dir / "pred_vs_observed.png", title=title)
        _, p = plot_km_by_risk_tertile(preds, fig_dir / "km_risk_tertiles.png", title=title)
        metrics["logrank_p_tertiles"] = p if p == p else None
        if pmf is not None and metrics.get("horizons"):
            plot_calibration(preds, pmf, metrics["horizons"], fig_dir / "calibration.png", title=title, time_scale=scale)
    write_csv(out_dir / "predictions.csv", preds)
    write_json(out_dir / "metrics.json", metrics, allow_nan=False)
    return metrics


def check_output_folder(out: Path, marker: str) -> None:
    """``--out`` must be new, empty, or an earlier output of the same command (holding ``marker``): it is replaced
    as a whole, so it must not be a folder holding anything else (a run folder, a home directory)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise ConfigError(f"--out {out} is a non-empty folder without {marker} (not an earlier output of this "
                          f"command); it would be replaced as a whole: give a new or empty folder.")


@COMMANDS.register("evaluate")
class Evaluate:
    help = "survival metrics (C-index, Uno, MAE, IBS, td-AUC, NLL), predictions.csv and figures on a manifest"

    def add_arguments(self, parser):
        parser.add_argument("--checkpoint", required=True, help="checkpoint file, run directory or k-fold run dir")
        parser.add_argument("--data", required=True, help="manifest CSV (id,image,time,event[,expected_time,...])")
        parser.add_argument("--out", required=True, help="output directory")
        parser.add_argument("--horizons", default=None,
                            help="comma-separated times for Brier / td-AUC / calibration (default: event-time quartiles)")
        parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")

    def run(self, args) -> int:
        manifest = Path(args.data)
        if not manifest.is_file():
            raise InputError("no such manifest file", path=manifest, field="--data")
        from survival3d.io import atomic_folder

        final_out = Path(args.out)
        check_output_folder(final_out, "metrics.json")
        horizons = parse_horizons(args.horizons)
        folds = fold_checkpoints(args.checkpoint)
        # predict everything first: a bad input stops the command before anything is written
        predicted = [(name, ckpt, *predict_manifest(ckpt, manifest)) for name, ckpt in folds]
        n = len(predicted[0][2])
        if n < MIN_CASES:
            raise InputError(f"{n} case(s): evaluate needs at least {MIN_CASES} (C-index pairs, risk tertiles).",
                             path=manifest, field="id")
        # everything is written into a new folder that replaces --out at the end: a failure leaves the old
        # output as it was, never old files beside new ones
        with atomic_folder(final_out) as out:
            self._write(predicted, out, manifest, horizons, args.no_figures, final_out)
        return 0

    @staticmethod
    def _write(predicted, out: Path, manifest: Path, horizons, no_figures: bool, shown: Path) -> int:
        import pandas as pd

        from survival3d.io import write_csv, write_json
        from survival3d.metrics import aggregate_folds

        args_no_figures = no_figures
        if len(predicted) == 1:
            name, ckpt, preds, pmf, alpha, grid = predicted[0]
            metrics = evaluate_one(preds, pmf, alpha, out, figures=not args_no_figures, horizons=horizons, time_grid=grid)
            metrics.update({"checkpoint": str(ckpt), "manifest": str(manifest)})
            write_json(out / "metrics.json", metrics, allow_nan=False)
            log.info("C-index %s (oracle %s) on %d cases → %s", metrics.get("c_index"),
                     metrics.get("c_index_oracle"), metrics["n"], shown)
            return 0
        per_fold, stacked = [], []
        for name, ckpt, preds, pmf, alpha, grid in predicted:
            m = evaluate_one(preds, pmf, alpha, out / name, title=name, figures=not args_no_figures,
                             horizons=horizons, time_grid=grid)
            per_fold.append({"fold": name, "checkpoint": str(ckpt), **m})
            stacked.append(preds.assign(fold=name))
        summary = {"manifest": str(manifest), "n_folds": len(per_fold), "aggregate": aggregate_folds(per_fold),
                   "folds": per_fold}
        write_csv(out / "predictions.csv", pd.concat(stacked, ignore_index=True))
        write_json(out / "metrics.json", summary, allow_nan=False)
        agg = summary["aggregate"].get("c_index")
        if agg:
            log.info("C-index %.3f ± %.3f over %d folds → %s", agg["mean"], agg["sd"], agg["n"], shown)
        return 0
