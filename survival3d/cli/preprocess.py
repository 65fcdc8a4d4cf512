"""`run.py preprocess`: real CTs (OSIC tree, DICOM folders, NIfTI, NRRD) → preprocessed images, lung masks, QC and
a manifest (see docs/data.md)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from survival3d.cli import COMMANDS
from survival3d.errors import ConfigError

logger = logging.getLogger(__name__)


def _case_id(path: Path) -> str:
    name = path.name.rstrip("/")
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@COMMANDS.register("preprocess")
class PreprocessCommand:
    help = "preprocess real CTs (OSIC tree or DICOM/NIfTI/NRRD inputs) into images, lung masks, QC and a manifest"
    description = (
        "Read CTs, reorient to RAS, resample, mask the lungs, crop to the lungs + margin, fit to the model size and "
        "write images/<id>.nii.gz, lung_masks/<id>.nii.gz, qc/<id>.png|json and manifest.csv under --out. "
        "Resumable: cases done with the same settings are skipped. Exit status 1 when any case failed "
        "(failures.csv lists them; the manifest lists the others)."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        src = parser.add_mutually_exclusive_group(required=True)
        src.add_argument("--osic", metavar="ROOT", help="OSIC root with train/<Patient>/*.dcm and train.csv")
        src.add_argument("--input", nargs="+", metavar="PATH", help="DICOM folder(s), NIfTI or NRRD file(s)")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument("--survival", metavar="CSV",
                            help="survival table: Patient,time,event (OSIC) or id,time,event (--input; ids are the "
                                 "file/folder names without extension unless --id is given)")  # fmt: skip
        parser.add_argument("--train-csv", help="OSIC clinical table (default ROOT/train.csv)")
        parser.add_argument("--id", nargs="+", help="case ids for --input (default: file/folder names)")
        parser.add_argument("--time", type=float, help="survival time for a single --input")
        parser.add_argument("--event", type=int, choices=(0, 1), help="event indicator for a single --input")
        parser.add_argument("--series-uid",
                            help="DICOM SeriesInstanceUID to read (default: the CT series with most slices)")
        parser.add_argument("--lung-mask", choices=("auto", "lungmask", "classical"), default="auto",
                            help="lung masker; auto = lungmask when weights are available, else classical")
        parser.add_argument("--lungmask-weights", metavar="PATH", help="lungmask state dict (.pth), e.g. R231")
        parser.add_argument("--lungmask-model", default="R231", help="torch-hub-cache weights to look for (auto)")
        parser.add_argument("--cpu", action="store_true", help="run lungmask on the CPU even with a GPU")
        parser.add_argument("--spacing", type=float, nargs="+", default=[2.0], metavar="MM",
                            help="target spacing in mm (1 or 3 values; default 2)")
        parser.add_argument("--size", type=int, nargs="+", default=[128], metavar="N",
                            help="output shape (1 or 3 values; default 128)")
        parser.add_argument("--window", type=float, nargs=2, default=[-1024.0, 150.0], metavar=("LOW", "HIGH"),
                            help="HU window (default -1024 150)")
        parser.add_argument("--margin-mm", type=float, default=10.0, help="margin around the lung box (mm)")
        parser.add_argument("--no-crop", action="store_true", help="do not crop to the lung bounding box")
        parser.add_argument("--lung-volume-range", type=float, nargs=2, default=[0.5, 10.0], metavar=("MIN", "MAX"),
                            help="plausible total lung volume in litres (default 0.5 10)")
        parser.add_argument("--no-volume-check", action="store_true", help="accept any non-empty lung mask")
        parser.add_argument("--workers", type=int, default=1, help="worker processes")
        parser.add_argument("--overwrite", action="store_true", help="redo cases already done")
        parser.add_argument("--no-qc-png", action="store_true", help="skip the QC montage")

    def run(self, args: argparse.Namespace) -> int:
        from survival3d.data.lung_masking import resolve_masker_spec
        from survival3d.data.osic import CaseJob, osic_jobs, read_survival_csv, run_preprocess_jobs
        from survival3d.data.preprocess import PreprocessSettings

        def triple(values, name):
            if len(values) == 1:
                return tuple(values) * 3
            if len(values) == 3:
                return tuple(values)
            raise ConfigError(f"--{name} takes 1 or 3 values, got {values}")

        if args.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {args.workers}")
        masker = resolve_masker_spec(args.lung_mask, weights=args.lungmask_weights, modelname=args.lungmask_model)
        if masker["name"] == "lungmask" and args.cpu:
            masker["force_cpu"] = True
        settings = PreprocessSettings(
            spacing=triple(args.spacing, "spacing"),
            size=triple(args.size, "size"),
            window=tuple(args.window),
            margin_mm=args.margin_mm,
            crop=not args.no_crop,
            lung_volume_range_l=None if args.no_volume_check else tuple(args.lung_volume_range),
            masker=masker,
        )
        if args.osic:
            for flag in ("id", "time", "event"):
                if getattr(args, flag) is not None:
                    raise ConfigError(f"--{flag} is for --input, not --osic")
            if not args.survival:
                raise ConfigError("--osic needs --survival CSV (Patient,time,event)")
            jobs = osic_jobs(args.osic, args.survival, train_csv=args.train_csv)
            for job in jobs:
                job.series_uid = args.series_uid
        else:
            paths = [Path(p) for p in args.input]
            ids = args.id or [_case_id(p) for p in paths]
            if len(ids) != len(paths):
                raise ConfigError(f"--id got {len(ids)} ids for {len(paths)} inputs")
            if (args.time is None) != (args.event is None):
                raise ConfigError("--time and --event go together")
            rows = [{} for _ in paths]
            if args.time is not None:
                if len(paths) != 1 or args.survival:
                    raise ConfigError("--time/--event are for one --input without --survival")
                if args.time < 0:
                    raise ConfigError(f"--time must be >= 0, got {args.time}")
                rows = [{"time": args.time, "event": args.event}]
            elif args.survival:
                surv = read_survival_csv(args.survival, id_column="id")
                missing = [i for i in ids if i not in surv.index]
                if missing:
                    raise ConfigError(f"case id(s) {missing} not in {args.survival} (ids: {list(surv.index)[:5]})")
                rows = [{"time": float(surv.loc[i, "time"]), "event": int(surv.loc[i, "event"])} for i in ids]
            jobs = [CaseJob(id=i, source=str(p), series_uid=args.series_uid, row=r)
                    for i, p, r in zip(ids, paths, rows)]  # fmt: skip
        summary = run_preprocess_jobs(
            jobs, args.out, settings, workers=args.workers, resume=not args.overwrite, qc_png=not args.no_qc_png
        )
        for f in summary["failures"]:
            logger.error("failed: %s", f["error"])
        return 1 if summary["failed"] else 0
