"""``python run.py train``: train a 3D survival model (single split or k-fold, one process or ``torchrun``/DDP).

Examples::

    python run.py train                                   # the embedded default: a small dummy1 run on the CPU
    python run.py train --config configs/dummy2.yaml train.seed=1 name=dummy2_s1
    python run.py train --config configs/dummy1.yaml cv.folds=5
    python run.py train --resume runs/dummy2_s1           # continue after a crash (from checkpoints/last.pt)
    torchrun --standalone --nproc_per_node=4 run.py train --config configs/dummy6.yaml

Multi-node (on every node; see survival3d/engine/distributed.py)::

    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=$NODE_RANK --rdzv_backend=c10d \\
             --rdzv_endpoint=$MASTER_ADDR:29500 --rdzv_id=$JOB_ID run.py train --config configs/dummy6.yaml
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from survival3d.cli import COMMANDS
from survival3d.errors import ConfigError

log = logging.getLogger(__name__)

#: The job ``python run.py train`` runs without arguments: small in-memory dummy1, a few minutes on 2 CPU cores.
DEFAULT_JOB = {
    "name": "default",
    "data": {"source": "dummy", "dummy": {"level": 1, "n": 96, "size": 32}, "image_size": [32, 32, 32], "batch_size": 8,
             "affine_prob": 0.2},
    "model": {"patch_size": 4, "window_size": 4},
    "optim": {"lr": 1e-3},
    "train": {"epochs": 10, "overwrite": True},
}


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4f}"


def experiment_config(args, default_job: dict):
    """The run's config from ``--config``/``--resume``/overrides (``default_job`` without either), for ``train`` and
    ``pretrain``; under torchrun only rank 0 logs progress."""
    from survival3d.config import ExperimentConfig, load_config

    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: progress and results come from rank 0 only
        logging.getLogger().setLevel(logging.WARNING)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there (not a run folder).")
        if args.config:
            raise ConfigError("--resume uses the run's own config.yaml; give overrides instead of --config.")
        return load_config(run_dir / "config.yaml", list(args.overrides) + [f"out_dir={run_dir.parent}", f"name={run_dir.name}"],
                           schema=ExperimentConfig)
    if args.config:
        return load_config(args.config, args.overrides, schema=ExperimentConfig)
    return load_config(None, args.overrides, schema=ExperimentConfig, defaults=default_job)


def _training_curves(run_dir: Path) -> None:
    """``training_curves.png`` beside each ``metrics.csv`` of the run (``run.py plot`` draws the same); a figure
    that cannot be drawn is a warning, never a failed run."""
    from survival3d.cli.plot import write_training_curves
    from survival3d.errors import InputError

    try:
        for path in write_training_curves(run_dir):
            log.info("training curves: %s", path)
    except (InputError, OSError, ValueError) as e:
        log.warning("training curves not drawn (%s)", e)


@COMMANDS.register("train")
class TrainCommand:
    help = "train a survival model (default: a small dummy1 run on the CPU)"
    description = (
        "Train the 3D survival model. Without --config, runs the embedded default job (small dummy1, in memory). "
        "key=value overrides any config key (see docs/config.md). Launch with torchrun for multi-GPU/multi-node DDP."
    )

    def add_arguments(self, parser):
        parser.add_argument("--config", "-c", help="YAML config (may say base: other.yaml); default: embedded dummy1 job")
        parser.add_argument("--resume", metavar="RUN_DIR", help="continue runs/<name> from checkpoints/last.pt")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=20")

    def run(self, args) -> int:
        cfg = experiment_config(args, DEFAULT_JOB)

        from survival3d.engine.distributed import shutdown_distributed
        from survival3d.engine.experiment import run_dir_of, run_experiment
        from survival3d.engine.loop import NonFiniteLossError

        from survival3d.explain.callbacks import HeatmapCallback

        callbacks = [HeatmapCallback()] if cfg.train.heatmap else []  # the run's closing softmin-p picture
        try:
            result = run_experiment(cfg, resume=bool(args.resume), callbacks=callbacks)
        except NonFiniteLossError as e:
            log.error("%s", e)
            return NonFiniteLossError.exit_code
        finally:
            shutdown_distributed()
        if int(os.environ.get("RANK", "0")) != 0:
            return 0
        run_dir = run_dir_of(cfg)
        _training_curves(run_dir)
        if int(cfg.cv.folds) > 1:
            def ms(k):
                v = result.get(k)
                return "n/a" if v is None else f"{v['mean']:.4f} ± {v['sd']:.4f}"

            msg = (f"{cfg.cv.folds}-fold validation C-index {ms('c_index')} (oracle {ms('c_index_oracle')}); "
                   f"censored MAE {ms('mae_censored')}{' ' + cfg.data.time_unit if cfg.data.time_unit else ''}; "
                   f"results in {run_dir / 'cv_metrics.json'}")
        else:
            msg = (f"validation C-index {_fmt(result.get('c_index'))} (oracle C-index {_fmt(result.get('c_index_oracle'))}), "
                   f"MAE uncensored {_fmt(result.get('mae_uncensored'))}, censored {_fmt(result.get('mae_censored'))}"
                   f"{' ' + result['time_unit'] if result.get('time_unit') else ''}; "
                   f"{result.get('epochs')} epochs in {result.get('time', 0):.0f} s; results in {run_dir}")
            if result.get("heatmap"):
                msg += f"\nheatmap: {result['heatmap']} (NIfTI: {result['heatmap_nifti']}; p on lesion {result['p_on_lesion']:.2f})"
        print(msg)  # the command's result, for the user (logging carries the progress)
        return 0
