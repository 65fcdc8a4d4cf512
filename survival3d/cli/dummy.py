"""``run.py dummy``: write a synthetic dummy1–6 dataset (NIfTI volumes, masks and ``manifest.csv``).

Example::

    python run.py dummy --level 3 --n 200 --size 64 --seed 0 --out data/dummy3 --workers 2 --preview
"""

from __future__ import annotations

import logging

from survival3d.cli import COMMANDS

logger = logging.getLogger(__name__)


@COMMANDS.register("dummy")
class DummyCommand:
    help = "write a synthetic dummy1–6 dataset (NIfTI + masks + manifest.csv)"
    description = (
        "Write a synthetic sphere dataset of one dummy level (see docs/dummy.md): images/, masks/ (survival-relevant "
        "lesions), lung_masks/ and distractor_masks/ where the level has them, and manifest.csv (written last, "
        "atomically). Same seed -> identical files, whatever the number of workers."
    )

    def add_arguments(self, parser):
        parser.add_argument("--level", type=int, required=True, help="dummy level 1-6")
        parser.add_argument("--n", type=int, default=200, help="number of cases (default 200)")
        parser.add_argument("--size", type=int, default=64, help="volume edge in voxels (default 64)")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument(
            "--feat-frac", type=float, default=0.5, help="fraction of scans with a lesion (default 0.5)"
        )
        parser.add_argument(
            "--censor-frac",
            type=float,
            default=None,
            help="fraction of right-censored cases (default: the level's, 0.3; 0.6 for dummy6)",
        )
        parser.add_argument("--spacing", type=float, default=1.5, help="isotropic voxel spacing in mm (default 1.5)")
        parser.add_argument("--tmax", type=int, default=100, help="times are clipped to [1, tmax] (default 100)")
        parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
        parser.add_argument(
            "--preview", action="store_true", help="also write preview.png (slices + contours) and times_hist.png"
        )
        parser.add_argument("--overwrite", action="store_true", help="replace an existing manifest in --out")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, args) -> int:
        from survival3d.data.dummy import write_dummy_dataset

        manifest = write_dummy_dataset(
            args.out,
            args.level,
            args.n,
            size=args.size,
            seed=args.seed,
            feat_frac=args.feat_frac,
            censor_frac=args.censor_frac,
            spacing=args.spacing,
            tmax=args.tmax,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        if args.preview:
            from survival3d.data.preview import save_preview

            for path in save_preview(manifest):
                logger.info("preview: %s", path)
        logger.info("manifest: %s", manifest)
        return 0
