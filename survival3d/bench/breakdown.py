"""Where does a model lose C-index against the oracle? Its predictions on generated cases, broken down by the
generator's ground truth.

    python -m survival3d.bench.breakdown FRESH/manifest.csv EVAL/predictions.csv [...] [--out DIR]

``manifest.csv`` is a dataset written by ``run.py dummy`` (any level; ``dummy_params.json`` next to it names the
level), ``predictions.csv`` the output of ``run.py evaluate`` on it (columns ``id``, ``pred_time``, ``risk``) or of
``run.py predict`` (a model or an ensemble; its ``mean_time`` is the prediction). For
each predictions file, on the same cases, the model's number and the oracle's (``expected_time``):

* ``c_index``: Harrell's C of the whole set.
* ``presence_auroc``: AUROC of the risk between cases with a lesion (``--burden`` column > 0) and cases without.
* ``auroc_small`` / ``auroc_mid`` / ``auroc_large``: the same with only the lesion cases of one tertile of the burden
  (bounds ``burden_q1``, ``burden_q2``): which lesion sizes the model tells from healthy cases.
* ``burden_spearman``: Spearman correlation of burden and risk over the lesion cases; ``c_index_lesion`` their C
  (NaN when they hold no comparable pair).
* ``oracle_largest_c_index`` (levels whose time is set by the summed volume of several lesions, e.g. dummy6, when
  ``dummy_params.json`` names the generator's seed): the C of the generator's expected time recomputed with only
  each case's largest lesion (and its covariates): the ceiling of a model that reads one lesion, such as a head whose
  prediction is the time of its one softmin-chosen cubelet. The cases are drawn again from the seed and checked
  against the manifest's ``expected_time``.
* ``oracle_blind_c_index`` (with ``--blind-below B``, on levels whose lesion-free cases share one expected time,
  e.g. ct1): the C of an oracle blind to every lesion of burden under ``B`` (in the ``--burden`` column's units; a
  sphere of d mm holds pi d^3 / 6 mm^3): those cases are given the lesion-free time. Read against the model's C: a
  model above it reads part of what the small lesions carry, one below it misses more than them.
* levels with clinical covariates (dummy6, ct3), the least-squares fit
  ``log pred_time = a + b_burden (log expected_time - s) + b_cov s + e`` with ``s`` the generator's covariate shift
  of log-time (:meth:`~survival3d.data.dummy.ClinicalCovariates.log_time_shift`): ``coef_burden`` and ``coef_cov``
  (1 and 1 for the oracle, 0 for a part the model ignores), ``resid_sd`` (sd of e) and ``resid_by_n_lesions``
  (mean of e per lesion count: a model that reads one lesion where the burden sums several is biased by count).

Writes ``breakdown.csv`` (one row per predictions file, model and oracle columns) and ``breakdown.json`` (the same
plus the residuals by lesion count) into ``--out`` (default: the manifest's folder) and prints a table.
Exit 2 with one line naming the file and column when an input is unusable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from survival3d.io import write_csv, write_json
from survival3d.metrics.survival import harrell_c_index

__all__ = ["blind_times", "breakdown", "burden_tertiles", "check_files", "covariate_shift", "largest_lesion_times", "main", "read_table",
           "risk_scores"]


class BreakdownError(ValueError):
    """An unusable input; the message names the file and the field."""


def _auroc(positive: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, score))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).correlation)


def covariate_shift(level, frame: pd.DataFrame) -> np.ndarray | None:
    """The generator's log-time shift of each row's covariates (``None`` for a level without covariates)."""
    cov = getattr(level, "covariates", None)
    if cov is None:
        return None
    return np.array([cov.log_time_shift(row) for row in frame.to_dict("records")], dtype=np.float64)


def largest_lesion_times(frame: pd.DataFrame, params: dict, source: str = "manifest") -> np.ndarray | None:
    """Each case's expected time with only its largest lesion kept (module docstring), in ``frame``'s row order;
    ``None`` for a level whose time model does not sum lesion volumes (no ``burden``) or ``params`` without a seed.

    Args:
        frame: manifest rows (``id`` as written by ``run.py dummy``: ``<level>_<index>``, ``expected_time``).
        params: the generator's ``dummy_params.json`` (``level``, ``seed``, and ``feat_frac``, ``censor_frac``,
            ``tmax`` when set).
        source: the manifest's name for error messages.
    """
    from survival3d.data.dummy import as_spec, get_level, sample_case

    level = get_level(params["level"])  # the real-anatomy levels (ct1-ct3) have no ``times`` model of this kind
    if not hasattr(getattr(level, "times", None), "burden") or "seed" not in params:
        return None
    spec = as_spec(params["level"], **{k: params[k] for k in ("seed", "feat_frac", "censor_frac", "tmax")
                                       if params.get(k) is not None})
    tmax = float(spec.tmax)
    out = []
    for cid, expected in zip(frame["id"].astype(str), frame["expected_time"].to_numpy(np.float64)):
        head, _, index = cid.rpartition("_")
        if not head or not index.isdigit():
            raise BreakdownError(f"{source}: id {cid!r} is not a generated case id (<level>_<index>)")
        case = sample_case(spec, int(index))
        radii = [r for _, r in case.lesions]  # biggest first
        shift = level.covariates.log_time_shift(case.covariates) if level.covariates is not None else 0.0
        full = float(np.clip(level.times.expected(radii, shift), 1.0, tmax))
        if case.id != cid or abs(full - expected) > 0.011:
            raise BreakdownError(f"{source}: case {cid}: expected_time {expected} is not the generator's ({full:.2f}) "
                                 f"for the level and seed of dummy_params.json")
        out.append(float(np.clip(level.times.expected(radii[:1], shift), 1.0, tmax)))
    return np.asarray(out)


def burden_tertiles(b: np.ndarray, has: np.ndarray) -> tuple[float, float, dict[str, np.ndarray]]:
    """The tertile bounds ``q1``, ``q2`` of the burden ``b`` over the lesion cases ``has`` and each tertile's cases:
    ``small`` (< q1), ``mid`` (q1 to < q2), ``large`` (>= q2); NaN bounds and empty tertiles without a lesion case."""
    q1, q2 = (np.quantile(b[has], [1 / 3, 2 / 3]) if has.any() else (math.nan, math.nan))
    return float(q1), float(q2), {"small": has & (b < q1), "mid": has & (b >= q1) & (b < q2), "large": has & (b >= q2)}


def risk_scores(d: pd.DataFrame, risk: np.ndarray, burden: str) -> tuple[dict, float, float]:
    """The presence / tertile / within-lesion numbers of one risk score on the cases ``d``."""
    b = d[burden].to_numpy(np.float64)
    has = b > 0
    out = {"c_index": harrell_c_index(d["time"], risk, d["event"]), "presence_auroc": _auroc(has, risk)}
    q1, q2, tertiles = burden_tertiles(b, has)
    for name, sel in tertiles.items():
        keep = sel | ~has
        out[f"auroc_{name}"] = _auroc(has[keep], risk[keep])
    out["burden_spearman"] = _spearman(b[has], risk[has])
    lesion = d[has]
    try:  # undefined (NaN) when the lesion cases hold no comparable pair, e.g. their one event is the longest time
        out["c_index_lesion"] = (harrell_c_index(lesion["time"], risk[has], lesion["event"])
                                 if has.sum() >= 2 else math.nan)
    except ValueError:
        out["c_index_lesion"] = math.nan
    return out, q1, q2


def blind_times(d: pd.DataFrame, burden: str, below: float) -> tuple[np.ndarray, np.ndarray]:
    """``expected_time`` with every case whose lesion burden is in (0, ``below``) given the lesion-free cases' time
    (the oracle blind to lesions under ``below``), and which cases those are; the lesion-free cases must share one
    expected time (a level without covariates)."""
    b = d[burden].to_numpy(np.float64)
    t = d["expected_time"].to_numpy(np.float64).copy()
    free = t[b <= 0]
    if free.size == 0 or np.ptp(free) > 0.011:
        raise BreakdownError(f"--blind-below needs cases without a lesion that share one expected_time; here "
                             f"{free.size} case(s) without one, {np.unique(free.round(2)).size} distinct time(s)")
    blind = (b > 0) & (b < below)
    t[blind] = np.median(free)
    return t, blind


def breakdown(manifest: pd.DataFrame, predictions: pd.DataFrame, *, level=None, burden: str = "lesion_volume_mm3",
              largest: np.ndarray | None = None, blind_below: float | None = None) -> dict:
    """The numbers of the module docstring for one predictions table (``id``, ``pred_time``, ``risk``) on a
    generated ``manifest`` (``id``, ``time``, ``event``, ``expected_time``, ``burden``; ``n_lesions`` optional);
    ``largest``: :func:`largest_lesion_times` of the manifest's rows (adds ``oracle_largest_c_index``);
    ``blind_below``: a burden under which the oracle is made blind (adds ``oracle_blind_c_index`` and
    ``n_blind``, :func:`blind_times`)."""
    if largest is not None:
        manifest = manifest.assign(_largest=np.asarray(largest, dtype=np.float64))
    extra = [c for c in ("time", "expected_time") if c in predictions]  # run.py evaluate writes both
    d = manifest.merge(predictions[["id", "pred_time", "risk", *extra]], on="id", how="inner", suffixes=("", "_pred"))
    if d.empty:
        raise BreakdownError("no case id is in both the manifest and the predictions")
    for c in extra:  # ids repeat across generator seeds: the same id may be another case
        if not np.allclose(d[c].to_numpy(np.float64), d[f"{c}_pred"].to_numpy(np.float64), rtol=0, atol=0.011):
            raise BreakdownError(f"the predictions' {c} differs from the manifest's: they were made on other cases "
                                 "(another generator seed?)")
    model, q1, q2 = risk_scores(d, d["risk"].to_numpy(np.float64), burden)
    oracle, _, _ = risk_scores(d, -d["expected_time"].to_numpy(np.float64), burden)
    out = {"n": int(len(d)), "n_lesion": int((d[burden] > 0).sum()), "burden_q1": q1, "burden_q2": q2,
           "model": model, "oracle": oracle}
    if largest is not None:
        out["oracle_largest_c_index"] = harrell_c_index(d["time"], -d["_largest"].to_numpy(), d["event"])
    if blind_below is not None:
        t, blind = blind_times(d, burden, blind_below)
        out["oracle_blind_c_index"] = harrell_c_index(d["time"], -t, d["event"])
        out["n_blind"] = int(blind.sum())
    s = covariate_shift(level, d) if level is not None else None
    if s is not None:
        y = np.log(d["pred_time"].to_numpy(np.float64))
        lesion_part = np.log(d["expected_time"].to_numpy(np.float64)) - s
        x = np.column_stack([np.ones(len(d)), lesion_part, s])
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        resid = y - x @ coef
        out["coef_burden"], out["coef_cov"], out["resid_sd"] = float(coef[1]), float(coef[2]), float(resid.std())
        if "n_lesions" in d:
            by = pd.Series(resid).groupby(d["n_lesions"].to_numpy()).mean()
            out["resid_by_n_lesions"] = {int(k): float(v) for k, v in by.items()}
    return out


def read_table(path: Path, needed: tuple[str, ...], adapt=None) -> pd.DataFrame:
    """``path`` as a table with the numeric columns ``needed`` (and ``id``); ``adapt`` rewrites the frame first."""
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BreakdownError(f"{path}: cannot read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if adapt is not None:
        frame = adapt(frame)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise BreakdownError(f"{path}: missing column(s) {', '.join(missing)}")
    for c in needed:
        if c != "id" and not pd.api.types.is_numeric_dtype(frame[c]):
            raise BreakdownError(f"{path}: column {c} is not numeric")
    return frame


def check_files(frame: pd.DataFrame, manifest: Path, keys: tuple[str, ...]) -> None:
    """Every ``keys`` column is in the manifest and names an existing file (relative to the manifest's folder)."""
    missing = [c for c in keys if c not in frame.columns]
    if missing:
        raise BreakdownError(f"{manifest}: missing column(s) {', '.join(missing)}")
    for key in keys:
        absent = [f for f in frame[key].astype(str) if not (manifest.parent / f).is_file()]
        if absent:
            raise BreakdownError(f"{manifest}: {key} file {absent[0]!r} not found")


def _from_predict(frame: pd.DataFrame) -> pd.DataFrame:
    """``run.py predict``'s predictions.csv (a model or an ensemble) as ``run.py evaluate``'s: its ``mean_time``, E[T]
    of the averaged pmf, is ``pred_time``, and only the cases it finished count. Other tables are left as they are."""
    if "pred_time" in frame.columns or "mean_time" not in frame.columns:
        return frame
    if "status" in frame.columns:
        frame = frame[frame["status"] == "done"]
    return frame.rename(columns={"mean_time": "pred_time"})


def _params_of(manifest_path: Path) -> dict | None:
    """The generator's settings next to the manifest (``dummy_params.json``), or ``None`` when there is none."""
    params = manifest_path.parent / "dummy_params.json"
    if not params.is_file():
        return None
    try:
        data = json.loads(params.read_text())
        data["level"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BreakdownError(f"{params}: no level ({type(e).__name__})") from e
    return data


def _level_of(manifest_path: Path, name: str | None):
    from survival3d.data.dummy import get_level

    if name is None:
        return None
    try:
        return get_level(name)
    except (KeyError, ValueError) as e:
        raise BreakdownError(f"{manifest_path}: unknown dummy level {name!r}") from e


def _row(label: str, res: dict) -> dict:
    row = {"predictions": label, "n": res["n"], "n_lesion": res["n_lesion"], "burden_q1": res["burden_q1"],
           "burden_q2": res["burden_q2"]}
    for who in ("model", "oracle"):
        row.update({f"{who}_{k}": v for k, v in res[who].items()})
    for k in ("oracle_largest_c_index", "oracle_blind_c_index", "n_blind", "coef_burden", "coef_cov", "resid_sd"):
        if k in res:
            row[k] = res[k]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m survival3d.bench.breakdown", description=__doc__.split("\n")[0])
    ap.add_argument("manifest", type=Path, help="manifest.csv of a generated dataset (run.py dummy)")
    ap.add_argument("predictions", type=Path, nargs="+", help="predictions.csv of run.py evaluate on it")
    ap.add_argument("--burden", default="lesion_volume_mm3", help="the manifest column of the lesion burden (default: %(default)s)")
    ap.add_argument("--level", help="the dummy level (default: from dummy_params.json next to the manifest)")
    ap.add_argument("--out", type=Path, help="folder for breakdown.csv / breakdown.json (default: the manifest's folder)")
    ap.add_argument("--blind-below", type=float, metavar="B",
                    help="also score an oracle blind to lesions of burden under B (the --burden column's units)")
    args = ap.parse_args(argv)
    if args.blind_below is not None and not (math.isfinite(args.blind_below) and args.blind_below > 0):
        ap.error(f"--blind-below must be a positive number, got {args.blind_below}")
    try:
        manifest = read_table(args.manifest, ("id", "time", "event", "expected_time", args.burden))
        params = _params_of(args.manifest) if args.level is None else None
        level = _level_of(args.manifest, args.level or (params or {}).get("level"))
        largest = largest_lesion_times(manifest, params, str(args.manifest)) if params is not None else None
        if args.blind_below is not None:
            try:
                blind_times(manifest, args.burden, args.blind_below)
            except BreakdownError as e:
                raise BreakdownError(f"{args.manifest}: {e}") from None
        results = {}
        for p in args.predictions:
            preds = read_table(p, ("id", "pred_time", "risk"), adapt=_from_predict)
            try:
                results[str(p)] = breakdown(manifest, preds, level=level, burden=args.burden, largest=largest,
                                            blind_below=args.blind_below)
            except BreakdownError as e:  # about this predictions file against the manifest
                raise BreakdownError(f"{p}: {e}") from None
    except BreakdownError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.manifest.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame([_row(k, v) for k, v in results.items()])
        write_csv(out / "breakdown.csv", table)
        write_json(out / "breakdown.json", results)
    except OSError as e:
        print(f"error: {out}: cannot write the breakdown ({type(e).__name__}: {e.strerror or e})", file=sys.stderr)
        return 1
    cols = ["predictions", "model_c_index", "oracle_c_index", "model_presence_auroc", "model_auroc_small",
            "model_auroc_mid", "model_auroc_large", "model_burden_spearman", "oracle_burden_spearman",
            "oracle_largest_c_index", "oracle_blind_c_index", "n_blind", "coef_burden",
            "coef_cov", "resid_sd"]
    print(table[[c for c in cols if c in table]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {out / 'breakdown.csv'} and breakdown.json")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
