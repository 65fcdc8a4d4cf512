"""``python run.py tune STUDY.yaml``: hyperparameter search on Optuna (TPE sampling, per-epoch pruning) over any
config key; every trial is an ordinary experiment on the one engine. See :mod:`survival3d.engine.tune` for the study
file and docs/training.md ("Hyperparameter search") for the outputs and for sharing one study between workers.

Examples::

    python run.py tune configs/tune/dummy1.yaml                          # 20 trials into runs/tune/dummy1/
    python run.py tune configs/tune/dummy1.yaml study.trials=8 train.epochs=4
    python run.py tune configs/tune/dummy1.yaml --storage sqlite:///runs/tune/dummy1/study.db &   # a second worker
    python run.py tune configs/tune/dummy1.yaml --storage postgresql://user:pw@dbhost/optuna     # across machines

``key=value`` overrides go right after the study file, before any ``--option``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from survival3d.cli import COMMANDS

log = logging.getLogger(__name__)


@COMMANDS.register("tune")
class TuneCommand:
    help = "hyperparameter search on Optuna (TPE, pruning, resumable SQLite/RDB studies)"
    description = ("Run or continue an Optuna study described by a YAML file (experiment config, search space, "
                   "objective, sampler, pruner, seeds). Writes trials.csv, best.yaml (ready for run.py train), "
                   "best.json and history/intermediate/importance PNGs under --out (default runs/tune/<study name>). "
                   "Rerunning the same command continues the study; several processes may share it.")

    def add_arguments(self, parser):
        parser.add_argument("study", metavar="STUDY.yaml", help="the study file (e.g. configs/tune/dummy1.yaml)")
        parser.add_argument("--out", help="output folder (default: runs/tune/<study name>)")
        parser.add_argument("--storage", help="RDB URL of the study (default: sqlite:///<out>/study.db); e.g. "
                                              "postgresql://user:pw@host/db to share a study between machines")
        parser.add_argument("--max-trials", type=int, default=None,
                            help="start at most this many trials in this process (default: until study.trials are done)")
        parser.add_argument("overrides", nargs="*", metavar="key=value",
                            help="study.<setting>=value (e.g. study.trials=8) or config overrides shared by every trial; "
                                 "right after STUDY.yaml, before any --option")

    def run(self, args) -> int:
        from survival3d.engine.tune import load_study_spec, run_study
        from survival3d.errors import ConfigError

        spec = load_study_spec(args.study, overrides=args.overrides)
        if args.max_trials is not None and args.max_trials < 1:
            raise ConfigError(f"--max-trials must be >= 1, got {args.max_trials}.")
        out = Path(args.out) if args.out else Path("runs") / "tune" / spec.name
        logging.getLogger("optuna").setLevel(logging.INFO)
        summary = run_study(spec, out, storage=args.storage, max_trials=args.max_trials)
        line = (f"study {summary['study']}: {summary['complete']} complete, {summary['pruned']} pruned, "
                f"{summary['fail']} failed trials")
        if summary.get("complete"):
            line += f"; best value {summary['best_value']:.4f} (trial {summary['best_trial']}) {summary['best_params']}"
        print(line)
        for name, path in summary.get("files", {}).items():
            print(f"{name}: {path}")
        return 0
