"""`run.py explain`: heatmaps of a trained model for the cases of a manifest, scored against the GT lesion masks.

Writes under ``--out``: ``cases/<id>/<method>.nii.gz`` (on the source image's grid, with its affine),
``cases/<id>/<method>_overlay.png`` and ``<method>_3d.png``, ``localisation.csv`` (case × method × metric),
``leaderboard.md`` and ``leaderboard.json`` (method → mean ± sd over the cases with a lesion).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from survival3d.cli import COMMANDS
from survival3d.errors import ConfigError, InputError

log = logging.getLogger(__name__)

#: Fast on a CPU (see docs/benchmarks.md). On request: ``polycam`` (one forward pass per feature channel per layer),
#: ``occlusion`` (the fine box), ``gradcampp``, ``feature_pca_*``; ``all`` = every registered explainer.
DEFAULT_METHODS = "head,head_grid,gradcam,occlusion_coarse"


def parse_methods(text: str) -> list[str]:
    """Comma-separated explainer names (``all`` = every registered one), checked against the registry."""
    from survival3d.explain import EXPLAINERS

    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    if names == ["all"]:
        return EXPLAINERS.keys()
    if not names:
        raise ConfigError("--methods is empty.")
    for n in names:
        EXPLAINERS.get(n)  # ConfigError with did-you-mean for a typo
    return list(dict.fromkeys(names))


def load_cases(checkpoint: Path, manifest: Path, max_cases: int | None):
    """The glue to the engine, the manifest and the data path.

    Uses :func:`survival3d.engine.checkpoint.load_trained`, :func:`survival3d.data.manifest.read_manifest` (for the
    source image of each id), ``TrainedModel.dataset(manifest, ids)`` (the run's evaluation preprocessing) and
    ``survival3d.data.datasets.collate_cases`` (whose ``affine`` entry is the model-space affine of each image).

    Returns:
        (the trained model in eval mode, number of cases, an iterator of :class:`~survival3d.explain.pipeline.Case`
        each holding a batch of one case and the path of its source image).
    """
    import numpy as np
    import torch

    from survival3d.data.datasets import collate_cases
    from survival3d.data.manifest import read_manifest
    from survival3d.engine.checkpoint import load_trained
    from survival3d.explain.pipeline import Case

    trained = load_trained(checkpoint)
    table = read_manifest(manifest, require_outcome=False)  # heatmaps need no survival times
    ids = table["id"].astype(str).tolist()[:max_cases]
    sources = dict(zip(table["id"].astype(str), table["image"]))
    dataset = trained.dataset(manifest, ids=ids, require_outcome=False)

    def cases() -> Iterator[Case]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=collate_cases)
        for batch in loader:
            cid = str(batch["id"][0])
            affine = batch.get("affine")
            affine = None if affine is None else np.asarray(affine[0].cpu().numpy(), dtype=np.float64)
            yield Case(id=cid, batch=batch, source=sources.get(cid), model_affine=affine)

    trained.model.eval()
    trained.model.time_grid = trained.time_grid  # explain_cases reports pred_time in the data's unit
    return trained.model, len(ids), cases()


@COMMANDS.register("explain")
class Explain:
    help = "heatmaps (head, Grad-CAM(++), Poly-CAM, occlusion, feature PCA) + GT-mask localisation leaderboard"
    description = (
        "Heatmaps of a trained model for the cases of a manifest, scored against the GT lesion masks. The default "
        "methods are the fast ones (about 3 CPU seconds per 32^3 case, pictures included); polycam, occlusion (fine box), gradcampp "
        "and feature_pca_embed/_tokens are slow or off-target and run on request (--methods ...,polycam or all). "
        "The expected run time is logged after the first case."
    )

    def add_arguments(self, parser):
        parser.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
        parser.add_argument("--data", required=True, help="manifest CSV with image (and mask, lung_mask) columns")
        parser.add_argument("--out", required=True, help="output directory")
        parser.add_argument("--methods", default=DEFAULT_METHODS,
                            help=f"comma-separated explainers or 'all' (default: {DEFAULT_METHODS}; slow on a "
                                 "CPU: polycam, occlusion)")
        parser.add_argument("--max-cases", type=int, default=None, help="explain only the first N cases")
        parser.add_argument("--tolerance", type=float, default=0.0,
                            help="pointing-game tolerance in voxels (default 0: the peak must be inside the mask)")
        parser.add_argument("--topk", type=float, default=None,
                            help="fraction of voxels for dice_topk (default: the mask fraction)")
        parser.add_argument("--no-views", action="store_true", help="skip the PNG overlays and 3D views")
        parser.add_argument("--max-views", type=int, default=None,
                            help="write the PNG views for the first N cases only (heatmaps and metrics: every case)")

    def run(self, args) -> int:
        if args.max_cases is not None and args.max_cases < 1:
            raise ConfigError(f"--max-cases must be >= 1, got {args.max_cases}.")
        if args.max_views is not None and args.max_views < 0:
            raise ConfigError(f"--max-views must be >= 0, got {args.max_views}.")
        if args.tolerance < 0:
            raise ConfigError(f"--tolerance must be >= 0, got {args.tolerance}.")
        if args.topk is not None and not 0 < args.topk <= 1:
            raise ConfigError(f"--topk must be in (0, 1], got {args.topk}.")
        manifest = Path(args.data)
        if not manifest.is_file():
            raise InputError("no such manifest file", path=manifest, field="--data")
        ckpt = Path(args.checkpoint)
        if not ckpt.exists():
            raise InputError("no such checkpoint file or run directory", path=ckpt, field="--checkpoint")
        # the paths are checked before the heavy imports (torch, MONAI): a typo is reported at once
        from survival3d.cli.evaluate import check_output_folder
        from survival3d.explain.pipeline import explain_cases, write_leaderboard
        from survival3d.io import atomic_folder

        check_output_folder(Path(args.out), "leaderboard.json")
        methods = parse_methods(args.methods)
        model, n, cases = load_cases(ckpt, manifest, args.max_cases)
        # written into a new folder that replaces --out at the end: a failure leaves no partial or mixed output
        with atomic_folder(args.out) as out:
            table = explain_cases(model, cases, methods, out, tolerance=args.tolerance, topk=args.topk,
                                  views=not args.no_views, max_views=args.max_views, total=n,
                                  time_grid=getattr(model, "time_grid", None))
            board = write_leaderboard(table, out)
        for m in board["ranking"]:
            s = board["lesion"][m]
            log.info("%-18s pointing %.3f  energy %.3f  energy(cubelet) %.3f  pointing(cubelet) %.3f  (chance %.3f)", m,
                     *(s[c]["mean"] if s[c]["mean"] is not None else float("nan")
                       for c in ("pointing_game", "energy_pg", "energy_pg_cubelet", "pointing_cubelet",
                                 "chance_energy")))
        log.info("wrote %s", Path(args.out) / "leaderboard.md")
        return 0
