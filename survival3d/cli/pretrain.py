"""``python run.py pretrain``: self-supervised pretraining of the survival encoder (masked-cubelet autoencoder).

Examples::

    python run.py pretrain                                        # embedded default: small dummy3 run on the CPU
    python run.py pretrain --config configs/pretrain_dummy3.yaml model.vq_codes=256 name=pre_vq
    python run.py pretrain --resume runs/pretrain_dummy3          # continue from checkpoints/last.pt
    python run.py train --config configs/dummy3.yaml model.init=runs/pretrain_dummy3   # fine-tune from it
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from survival3d.cli import COMMANDS

log = logging.getLogger(__name__)

#: ``python run.py pretrain`` without arguments: 96 unlabelled dummy3 volumes of 32^3, a few minutes on 2 CPU cores.
DEFAULT_JOB = {
    "name": "pretrain_default",
    "data": {"source": "dummy", "dummy": {"level": 3, "n": 96, "size": 32}, "image_size": [32, 32, 32],
             "batch_size": 8, "val_frac": 0.125},
    "model": {"patch_size": 4, "window_size": 4},
    "optim": {"lr": 1e-3},
    "train": {"epochs": 5, "overwrite": True},
    "logging": {"wandb": False},
}


@COMMANDS.register("pretrain")
class PretrainCommand:
    help = "pretrain the encoder without labels (masked-cubelet autoencoder, optional VQ tokens)"
    description = (
        "Self-supervised pretraining of the survival model's encoder on images only (a dummy level or a manifest "
        "with id,image). key=value overrides any config key (pretrain.*, model.*, data.*, optim.*, train.*; "
        "docs/config.md). Fine-tune with: run.py train model.init=<this run>."
    )

    def add_arguments(self, parser):
        parser.add_argument("--config", "-c", help="YAML config (may say base: other.yaml); default: embedded dummy3 job")
        parser.add_argument("--resume", metavar="RUN_DIR", help="continue runs/<name> from checkpoints/last.pt")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. pretrain.mask_ratio=0.75")

    def run(self, args) -> int:
        from survival3d.cli.train import experiment_config

        cfg = experiment_config(args, DEFAULT_JOB)

        from survival3d.engine.distributed import shutdown_distributed
        from survival3d.engine.loop import NonFiniteLossError
        from survival3d.engine.pretrain_task import run_pretraining

        try:
            result = run_pretraining(cfg, resume=bool(args.resume))
        except NonFiniteLossError as e:
            log.error("%s", e)
            return NonFiniteLossError.exit_code
        finally:
            shutdown_distributed()
        if int(os.environ.get("RANK", "0")) != 0:
            return 0
        msg = (f"validation reconstruction loss {result['val_recon']:.4f} (masked cubelets, "
               f"{'normalised' if cfg.pretrain.norm_target else 'raw'} targets); {result['epochs']} epochs in "
               f"{result['time']:.0f} s")
        if result.get("volumes_per_s"):
            msg += f", {result['volumes_per_s']:.1f} volumes/s"
        if result.get("codebook_usage") is not None:
            msg += f"; codebook usage {result['codebook_usage']:.2f}, perplexity {result['perplexity']:.1f}"
        msg += f"; results in {Path(cfg.out_dir) / cfg.name}"
        if result.get("figure"):
            msg += f"\nreconstruction figure: {result['figure']}"
        print(msg)
        return 0
