"""``python run.py plot RUN``: draw a run's training curves from its ``metrics.csv``.

Writes ``RUN/training_curves.png`` (for a k-fold run: ``RUN/fold<k>/training_curves.png`` for every fold) — loss,
C-index against the oracle, β, the loc bias (and a learned VAR), the validation p mass on lesion and distractor
cubelets, and the spread of p and of loc, per epoch (columns: docs/training.md). ``--out`` writes a single run's
figure elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

from survival3d.cli import COMMANDS
from survival3d.errors import ConfigError, InputError

log = logging.getLogger(__name__)


def metrics_files(run: Path) -> list[Path]:
    """The ``metrics.csv`` of a run folder, or of each ``fold*`` sub-folder of a k-fold run (sorted)."""
    if not run.is_dir():
        raise InputError("no such run folder", path=run, field="RUN")
    if (run / "metrics.csv").is_file():
        return [run / "metrics.csv"]
    found = sorted(p / "metrics.csv" for p in run.glob("fold*") if (p / "metrics.csv").is_file())
    if not found:
        raise InputError("no metrics.csv in the run folder or its fold* folders (has the run finished an epoch?)",
                         path=run, field="metrics.csv")
    return found


def write_training_curves(run: str | Path, out: str | Path | None = None) -> list[Path]:
    """Draw ``training_curves.png`` next to every ``metrics.csv`` of ``run`` (or at ``out`` for a single run)."""
    import pandas as pd

    from survival3d.metrics.figures import plot_training_curves

    run = Path(run)
    files = metrics_files(run)
    if out is not None and len(files) > 1:
        raise ConfigError(f"--out names one file, but {run} has {len(files)} folds; leave --out out.")
    written = []
    for f in files:
        try:
            df = pd.read_csv(f)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read the CSV ({type(e).__name__})", path=f) from None
        if "epoch" not in df.columns or df.empty:
            raise InputError("no epoch rows (not a run's metrics.csv?)", path=f, field="epoch")
        target = Path(out) if out is not None else f.parent / "training_curves.png"
        name = f.parent.name if f.parent == run else f"{run.name}/{f.parent.name}"
        written.append(plot_training_curves(df, target, title=f"{name}: training curves"))
    return written


@COMMANDS.register("plot")
class PlotCommand:
    help = "draw a run's training curves (loss, C-index, β, p mass) from its metrics.csv"
    description = ("Draw RUN/training_curves.png from RUN/metrics.csv (each fold of a k-fold run): loss, C-index "
                   "against the oracle, β, loc bias, VAR, validation p mass on lesion/distractor cubelets, spread of p "
                   "and loc, per epoch.")

    def add_arguments(self, parser):
        parser.add_argument("run", metavar="RUN", help="a run folder (runs/<name>)")
        parser.add_argument("--out", help="write the figure here instead (single runs only)")

    def run(self, args) -> int:
        for path in write_training_curves(args.run, args.out):
            print(path)
        return 0
