"""`run.py glsa-train` and `run.py glsa-experiments`: the 2D GLSA classifier (see docs/glsa.md)."""

from __future__ import annotations

import logging

from survival3d.cli import COMMANDS

log = logging.getLogger(__name__)


@COMMANDS.register("glsa-train")
class GLSATrain:
    help = "train a GLSA image classifier (HAM10000, ISIC-2018, digits)"
    description = (
        "Train a ResNet/VGG + GLSA classifier from a YAML config and key=value overrides, e.g. "
        "`run.py glsa-train --config configs/glsa/ham10000.yaml data.root=/data/HAM10000 model.fusion=learnable_gate`. "
        "Writes config.yaml, train.log, metrics.csv, best.pt, confusion_matrix.png, gradcam.png and results.json to "
        "{train.output_dir}/{train.run_name}_{fusion}_{residual}_{attention}/."
    )

    def add_arguments(self, parser):
        parser.add_argument("--config", default="glsa/ham10000.yaml", help="YAML config (default: %(default)s)")
        parser.add_argument("--run-dir", default=None, help="write the run here instead of the named folder")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")

    def run(self, args) -> int:
        from survival3d.config import load_config
        from survival3d.glsa.config import GLSAConfig
        from survival3d.glsa.trainer import train

        cfg = load_config(args.config, args.overrides, schema=GLSAConfig)
        results = train(cfg, run_dir=args.run_dir)
        print(f"{results['run_name']}: balanced accuracy {results['balanced_accuracy']:.4f}, accuracy "
              f"{results['accuracy']:.4f}, macro-F1 {results['macro_f1']:.4f}")
        return 0


@COMMANDS.register("glsa-experiments")
class GLSAExperiments:
    help = "run a GLSA experiment plan (resumable) and write the paper tables"
    description = (
        "Train every run of a plan (backbone x attention x fusion x residual x seeds x dataset) that has no "
        "results.json yet, then write markdown and LaTeX tables (mean ± sd, parameters, time, paired t-test vs the "
        "baseline) under {output_dir}/tables/."
    )

    def add_arguments(self, parser):
        parser.add_argument("--plan", required=True, help="plan YAML, e.g. configs/glsa/paper.yaml")
        parser.add_argument("--dry-run", action="store_true", help="list the runs (done/todo) and stop")
        parser.add_argument("--tables-only", action="store_true", help="rebuild the tables from finished runs")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="plan overrides, e.g. seeds=[0,1]")

    def run(self, args) -> int:
        from survival3d.glsa.experiments import build_tables, collect_results, load_plan, run_plan

        plan, plan_dir = load_plan(args.plan, args.overrides)
        failed: list[str] = []
        if args.tables_only:
            df = collect_results(plan)
        else:
            df, failed = run_plan(plan, plan_dir, dry_run=args.dry_run)
            if args.dry_run:
                return 0
        paths = build_tables(plan, df)
        print(f"{len(df)} finished runs; tables in {paths[-1].parent / 'tables'} and {paths[-1]}")
        if failed:
            print(f"{len(failed)} run(s) failed (rerun the same command to retry): {', '.join(failed)}")
            return 1
        return 0
