"""``run.py dummy``: write a synthetic dummy1–6 dataset (NIfTI volumes, masks and ``manifest.csv``).

The generation options are the fields of :class:`~survival3d.data.dummy_spec.DummySpec` (``--feat-frac`` for
``feat_frac``); only the defaults of ``--n`` and ``--size`` differ (a dataset on disk is bigger).

Example::

    python run.py dummy --level 3 --n 200 --size 64 --seed 0 --out data/dummy3 --workers 2 --preview
"""

from __future__ import annotations

import dataclasses
import logging
import typing

from survival3d.cli import COMMANDS
from survival3d.data.dummy_spec import DummySpec

logger = logging.getLogger(__name__)

CLI_DEFAULTS = DummySpec(n=200, size=64)  # ``--level`` is required


def _arg_type(annotation) -> type:
    """``int`` / ``float`` for a DummySpec field annotation (``Optional[float]`` -> ``float``)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


@COMMANDS.register("dummy")
class DummyCommand:
    help = "write a synthetic dummy1–6 or real-anatomy ct1–ct3 dataset (NIfTI + masks + manifest.csv)"
    description = (
        "Write a synthetic sphere dataset of one dummy level (see docs/dummy.md): images/, masks/ (survival-relevant "
        "lesions), lung_masks/ and distractor_masks/ where the level has them, and manifest.csv (written last, "
        "atomically). Same seed -> identical files, whatever the number of workers."
    )

    def add_arguments(self, parser):
        hints = typing.get_type_hints(DummySpec)
        for f in dataclasses.fields(DummySpec):
            flag = "--" + f.name.replace("_", "-")
            if f.name == "level":
                parser.add_argument(flag, type=str, required=True, help=f.metadata["help"])
                continue
            default = getattr(CLI_DEFAULTS, f.name)
            parser.add_argument(flag, type=_arg_type(hints[f.name]), default=default,
                                help=f"{f.metadata['help']} (default {default})")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
        parser.add_argument(
            "--preview", action="store_true", help="also write preview.png (slices + contours) and times_hist.png"
        )
        parser.add_argument("--overwrite", action="store_true", help="replace an existing manifest in --out")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, args) -> int:
        from survival3d.data.dummy import write_dummy_dataset

        spec = DummySpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DummySpec)})
        manifest = write_dummy_dataset(
            args.out, spec, workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress
        )
        if args.preview:
            from survival3d.data.preview import save_preview

            for path in save_preview(manifest):
                logger.info("preview: %s", path)
        logger.info("manifest: %s", manifest)
        return 0
