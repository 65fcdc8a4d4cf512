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


@COMMANDS.register("glsa-activations")
class GLSAActivations:
    help = "draw per-stage activation maps (input, features, cor_feature, output) of a baseline_featureact run"
    description = (
        "Reload a trained 2D classifier (a glsa-train run folder or its best.pt; backbone baseline_featureact) and "
        "write one PNG per validation image to --out: a row per stage with the channel-mean maps of the pooled "
        "features, FeatureAct's cor_feature and the output, each with a colourbar."
    )

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, help="run folder with best.pt (or the checkpoint file)")
        parser.add_argument("--out", required=True, help="output folder for activations_<i>.png")
        parser.add_argument("--images", type=int, default=2, help="validation images to draw (default: %(default)s)")

    def run(self, args) -> int:
        from pathlib import Path

        import torch

        from survival3d.errors import InputError
        from survival3d.glsa.activations import save_activation_figure
        from survival3d.glsa.data import build_dataset
        from survival3d.glsa.trainer import _plain, load_classifier

        if args.images < 1:
            raise InputError("--images must be >= 1.", field="--images")
        model, class_names, cfg = load_classifier(args.model)
        if not hasattr(model, "stage_activations"):
            raise InputError(f"backbone {cfg.model.backbone} has no per-stage activations; this figure is for "
                             "model.backbone=baseline_featureact.", path=args.model, field="model.backbone")
        spec = _plain(cfg.model.attention)
        attention = spec if isinstance(spec, str) else ", ".join(f"{k}={v}" for k, v in spec.items())
        d = cfg.data
        data = build_dataset(d.name, root=d.root, image_size=d.image_size, val_frac=d.val_frac,
                             split_seed=d.split_seed, augment=False, max_samples=d.max_samples,
                             official_val=d.official_val)
        for i in range(min(args.images, len(data.val))):
            image, label = data.val[i]
            with torch.no_grad():
                pred = int(model(image[None]).argmax(1))
            path = save_activation_figure(
                model, image, Path(args.out) / f"activations_{i}.png", mean=data.mean, std=data.std,
                title=f"{cfg.model.backbone} + {attention}: validation image {i}, true {class_names[int(label)]}, "
                      f"predicted {class_names[pred]}")
            print(path)
        return 0
