"""``python run.py bench``: the project's survival model against MONAI's SwinUNETR encoder, in one process.

Examples::

    python run.py bench --size 128 --batch 2 --device cuda --compile --json bench128.json
    python run.py bench --sizes 128,160,192 --batch 2 model.depth=4 model.embed_dim=96
    python run.py bench --size 32 --batch 1 --steps 2 --warmup 1 --device cpu      # CPU smoke test

Prints markdown tables (training step, inference, project ÷ MONAI ratios) and, with ``--json``, writes the full
report. ``key=value`` arguments override the project model's config (as for ``run.py train``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from survival3d.cli import COMMANDS
from survival3d.errors import ConfigError

log = logging.getLogger(__name__)


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum`` (``what`` names it in the error)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _size_list(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 128,160,192, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sizes


def _name_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Where and how the models run: device, precision, compilation, memory format, the project's config."""
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 on CUDA instead of bf16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="channels_last_3d memory format")
    parser.add_argument("--config", default=None, help="YAML config for the project model (as for run.py train)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="project config overrides, e.g. model.depth=4"
    )


@COMMANDS.register("bench")
class BenchCommand:
    help = "time the survival model against MONAI's SwinUNETR encoder (train + inference)"
    description = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--size", type=_positive_int, default=128, help="cubic input edge in voxels (128)")
        parser.add_argument("--sizes", type=_size_list, default=None, help="several sizes, e.g. 128,160,192,256")
        parser.add_argument("--batch", type=_positive_int, default=2, help="volumes per step (2)")
        parser.add_argument("--monai-batch", type=_positive_int, default=None, help="MONAI's batch if different")
        parser.add_argument("--steps", type=_positive_int, default=10, help="timed steps; the median is reported")
        parser.add_argument("--warmup", type=_non_negative_int, default=3, help="untimed warm-up steps (3)")
        parser.add_argument("--compile", action="store_true", help="torch.compile both models (eager on failure)")
        parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the blocks")
        parser.add_argument("--no-flops", dest="flops", action="store_false", help="skip FLOP counting")
        parser.add_argument(
            "--models", type=_name_list, default=None, help="comma-separated (default: survival3d,monai_swinvit)"
        )
        parser.add_argument(
            "--modes", type=_name_list, default=["train", "infer"], help="train,infer (default both)"
        )
        parser.add_argument("--json", default=None, help="write the full report here (JSON)")
        parser.add_argument("--markdown", default=None, help="also write the tables here (markdown)")
        parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
        _add_run_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from survival3d.bench.contenders import BENCH_MODELS
        from survival3d.bench.measure import resolve_device
        from survival3d.bench.runner import BASELINE, MODES, PROJECT, format_markdown, run_bench, write_json, write_text
        from survival3d.config import ExperimentConfig, load_config

        try:
            device = resolve_device(args.device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        models = args.models or [PROJECT, BASELINE]
        for m in models:
            BENCH_MODELS.get(m)  # ConfigError with did-you-mean for an unknown name
        bad_modes = sorted(set(args.modes) - set(MODES))
        if bad_modes or not args.modes:
            raise ConfigError(f"--modes must be a comma-separated subset of {','.join(MODES)}, got {args.modes}.")
        load_config(args.config, args.overrides, schema=ExperimentConfig)  # config errors before any work
        sizes = args.sizes or [args.size]
        batches = {BASELINE: args.monai_batch} if args.monai_batch else {}
        report = run_bench(
            sizes,
            args.batch,
            device=device,
            models=models,
            batches=batches,
            options={PROJECT: {"config": args.config, "overrides": list(args.overrides)}},
            steps=args.steps,
            warmup=args.warmup,
            amp=args.amp,
            compile=args.compile,
            compile_backend=args.compile_backend,
            checkpointing=args.checkpointing,
            channels_last=args.channels_last,
            modes=args.modes,
            flops=args.flops,
            progress=args.progress,
        )
        table = format_markdown(report)
        sys.stdout.write(table + "\n")
        if args.json:
            log.info("wrote %s", write_json(report, args.json))
        if args.markdown:
            log.info("wrote %s", write_text(table + "\n", args.markdown))
        return 0
