"""Compose a results page (e.g. ``docs/results.md``) from ``run.py evaluate`` and ``run.py explain`` output folders.

::

    python -m survival3d.explain.results --entry dummy1=eval/dummy1,explain/dummy1 \\
        --entry dummy4=eval/dummy4,explain/dummy4 --out docs/results.md

For every entry the page gets one summary row (C-index against the oracle, the head's localisation, the best
explainer), the full leaderboard, and the pictures that tell the story (predicted vs observed, and the overlay of
each method on the first case with a lesion that has overlays), copied next to the page under ``<out stem>/<label>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from survival3d.explain.pipeline import safe_name
from survival3d.io import write_text

__all__ = ["results_markdown", "main"]


def _fmt(x, nd=3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and x != x) else f"{x:.{nd}f}"


def _copy(src: Path, dst: Path) -> Path | None:
    if not src.is_file():
        return None
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def results_markdown(entries: Sequence[tuple[str, Path, Path]], out: Path, *, title: str = "Results") -> str:
    """Markdown text of the results page; copies the pictures under ``out.parent / out.stem / <label>``.

    Args:
        entries: ``(label, evaluate output folder, explain output folder)``.
        out: where the page will be written (for relative picture links).
    """
    asset_root = out.parent / out.stem
    summary = [
        "| run | n | C-index | oracle C-index | Δ | head energy_pg_cubelet | head pointing_game | best explainer "
        "(energy_pg) | chance |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sections = []
    for label, eval_dir, explain_dir in entries:
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        if "aggregate" in metrics:  # k-fold: report the fold mean
            agg = metrics["aggregate"]
            metrics = {k: v["mean"] for k, v in agg.items()}
        board = json.loads((explain_dir / "leaderboard.json").read_text())
        c, oracle = metrics.get("c_index"), metrics.get("c_index_oracle")
        delta = None if c is None or oracle is None else oracle - c
        head = board["lesion"].get("head", {})
        best = board["ranking"][0] if board["ranking"] else None
        chance = board["lesion"][best]["chance_energy"]["mean"] if best else None
        best_txt = f"{best} ({_fmt(board['lesion'][best]['energy_pg']['mean'])})" if best else "n/a"
        summary.append(
            f"| {label} | {metrics.get('n', 'n/a')} | {_fmt(c)} | {_fmt(oracle)} | {_fmt(delta)} | "
            f"{_fmt(head.get('energy_pg_cubelet', {}).get('mean'))} | {_fmt(head.get('pointing_game', {}).get('mean'))}"
            f" | {best_txt} | {_fmt(chance)} |"
        )
        board_md = (explain_dir / "leaderboard.md").read_text().split("\n", 2)[-1].strip()
        board_md = board_md.replace("\n## ", "\n### ")  # nest the leaderboard's sub-sections under this entry
        lines = [f"## {label}", "", board_md, ""]
        assets = asset_root / label
        fig = _copy(eval_dir / "figures" / "pred_vs_observed.png", assets / "pred_vs_observed.png")
        if fig is not None:
            lines += [f"![{label}: predicted vs observed]({os.path.relpath(fig, out.parent)})", ""]
        table = pd.read_csv(explain_dir / "localisation.csv")
        lesion_cases = table.loc[table["has_lesion"].astype(bool), "case_id"].astype(str).unique()
        with_views = [c for c in lesion_cases if any((explain_dir / "cases" / safe_name(c)).glob("*_overlay.png"))]
        if with_views:
            case = with_views[0]
            lines += [f"Overlays on case `{case}` (lesion contour in lime):", ""]
            for method in board["ranking"]:
                png = _copy(explain_dir / "cases" / safe_name(case) / f"{method}_overlay.png",
                            assets / f"{method}_overlay.png")
                if png is not None:
                    lines.append(f"![{label} {method}]({os.path.relpath(png, out.parent)})")
            lines.append("")
        sections.append("\n".join(lines))
    head = [f"# {title}", "", "Δ = oracle − model C-index. Energies read against `chance` (a uniform map's energy).", ""]
    return "\n".join(head + summary + [""] + sections) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m survival3d.explain.results", description=__doc__.split("\n\n")[0])
    p.add_argument("--entry", action="append", required=True, metavar="LABEL=EVAL_DIR,EXPLAIN_DIR")
    p.add_argument("--out", required=True, help="markdown file to write (e.g. docs/results.md)")
    p.add_argument("--title", default="Results")
    args = p.parse_args(argv)
    entries = []
    for e in args.entry:
        label, _, dirs = e.partition("=")
        parts = dirs.split(",")
        if not label or len(parts) != 2:
            p.error(f"--entry must be LABEL=EVAL_DIR,EXPLAIN_DIR, got {e!r}")
        entries.append((label, Path(parts[0]), Path(parts[1])))
    out = Path(args.out)
    try:
        text = results_markdown(entries, out, title=args.title)
    except FileNotFoundError as err:
        print(f"results: error: {err}", file=sys.stderr)
        return 1
    write_text(out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
