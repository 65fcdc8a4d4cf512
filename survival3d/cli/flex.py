"""`run.py flex-train` (one FlexLayer configuration) and `run.py flex-experiments` (a plan's grid)."""

from __future__ import annotations

import logging
from pathlib import Path

from survival3d.cli import COMMANDS

log = logging.getLogger(__name__)


def _add_common(parser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; reused to resume)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.epochs=5 model.masking.k=10")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


@COMMANDS.register("flex-train")
class FlexTrain:
    help = "train and attack one FlexLayer network (configs/flex/*.yaml)"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--config", default=None, help="YAML config (default: built-in digits defaults)")
        _add_common(parser)

    def run(self, args) -> int:
        from survival3d.flex.config import load_flex_config
        from survival3d.flex.train import run_flex

        cfg = load_flex_config(args.config, args.overrides)
        result = run_flex(cfg, args.out, progress=not args.quiet)
        aucs = " ".join(f"{k}={v:.4f}" for k, v in result.items() if k.endswith("_auc"))
        log.info("val_acc=%.4f %s conv_ratio=%.3f -> %s", result["val_acc"], aucs, result["conv_ratio"],
                 args.out / "result.json")
        return 0


@COMMANDS.register("flex-experiments")
class FlexExperiments:
    help = "run a FlexLayer plan (logits × masking × seeds × datasets) resumably; write table + plots"

    def add_arguments(self, parser) -> None:
        parser.add_argument("--plan", required=True, help="plan YAML, e.g. configs/flex/digits.yaml")
        parser.add_argument("--force", action="store_true", help="re-run finished runs")
        parser.add_argument("--list", action="store_true", help="only list the runs of the plan")
        _add_common(parser)

    def run(self, args) -> int:
        from survival3d.flex.config import load_flex_config
        from survival3d.flex.experiments import expand_grid, run_plan

        cfg = load_flex_config(args.plan, args.overrides)
        if args.list:
            for spec in expand_grid(cfg):
                print(spec.run_id)
            return 0
        table = run_plan(cfg, args.out, force=args.force, progress=not args.quiet)
        log.info("%d runs -> %s", len(table), args.out / "results.md")
        return 0
