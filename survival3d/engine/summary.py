"""Summarise finished runs (e.g. one per seed) as a Markdown table row: mean ± sd of the validation metrics.

    python -m survival3d.engine.summary runs/dummy1_s0 runs/dummy1_s1 runs/dummy1_s2 [--json out.json]

Each run folder must hold ``final_metrics.json`` (k-fold runs: ``cv_metrics.json``, whose fold means are used).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from survival3d.errors import InputError

__all__ = ["summarise", "markdown_row", "main"]

COLUMNS = ("c_index", "c_index_oracle", "mae_censored", "mae_uncensored", "p_on_lesion", "epochs", "time")


def _metrics(run: Path) -> dict:
    fm, cv = run / "final_metrics.json", run / "cv_metrics.json"
    if fm.is_file():
        return json.loads(fm.read_text())
    if cv.is_file():
        agg = json.loads(cv.read_text())
        return {k: v["mean"] for k, v in agg.items() if isinstance(v, dict) and "mean" in v}
    raise InputError("no final_metrics.json or cv_metrics.json (run not finished?).", path=run)


def summarise(runs: Sequence[str | Path]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "sd", "n"}}`` over runs (sample sd, ddof=1; missing/NaN values skipped)."""
    per = [_metrics(Path(r)) for r in runs]
    out: dict[str, dict[str, float]] = {}
    for key in COLUMNS:
        vals = [float(m[key]) for m in per if m.get(key) is not None and math.isfinite(float(m[key]))]
        if vals:
            out[key] = {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, "n": len(vals)}
    devices = sorted({str(m.get("device", "?")) for m in per})
    out["device"] = {"value": ", ".join(devices)}  # type: ignore[dict-item]
    return out


def markdown_row(label: str, s: dict) -> str:
    def f(k, digits=3):
        if k not in s:
            return "n/a"
        return f"{s[k]['mean']:.{digits}f} ± {s[k]['sd']:.{digits}f}"

    gap = "n/a"
    if "c_index" in s and "c_index_oracle" in s:
        gap = f"{s['c_index']['mean'] - s['c_index_oracle']['mean']:+.3f}"
    n = s.get("c_index", {}).get("n", 0)
    return (f"| {label} | {f('c_index')} | {f('c_index_oracle')} | {gap} | {f('mae_censored', 2)} | {f('mae_uncensored', 2)} | "
            f"{f('p_on_lesion', 2)} | {n} | {f('time', 0)} s | {s['device']['value']} |")


HEADER = ("| level | C-index | oracle C-index | gap | censored MAE | uncensored MAE | p on lesion (heatmap case) | seeds | train time | device |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (one per seed)")
    ap.add_argument("--label", default=None, help="first column (default: the first run's name)")
    ap.add_argument("--json", default=None, help="also write the summary as JSON here")
    ap.add_argument("--header", action="store_true", help="print the table header first")
    args = ap.parse_args(argv)
    try:
        s = summarise(args.runs)
    except InputError as e:
        print(f"summary: error: {e}", file=sys.stderr)
        return 1
    if args.header:
        print(HEADER)
    print(markdown_row(args.label or Path(args.runs[0]).name, s))
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
