"""`run.py predict`: survival estimates, curves, heatmaps on the original CT grid and a summary page per patient
(see docs/predict.md)."""

from __future__ import annotations

import logging
from pathlib import Path

from survival3d.cli import COMMANDS
from survival3d.errors import ConfigError

log = logging.getLogger(__name__)


@COMMANDS.register("predict")
class PredictCommand:
    help = "predict survival (time, interval, risk, S(t)) and a heatmap for new patients' CTs"
    description = (
        "Predict for new patients with a trained run, a k-fold run (the folds are averaged as an ensemble) or several "
        "runs. Raw CTs (DICOM folders, NIfTI, NRRD) are preprocessed with the model's own plan; preprocessed images "
        "must come from the same plan. Writes OUT/cases/<id>/ (prediction.json, survival.csv/.png, heatmap.nii.gz on "
        "the original CT grid, overlay.png, summary.html), OUT/predictions.csv and, when a case failed, "
        "OUT/failures.csv (exit status 1). Resumable: finished cases are skipped."
    )

    def add_arguments(self, parser):
        parser.add_argument("--model", nargs="+", required=True, metavar="RUN|CKPT",
                            help="run folder(s), k-fold run folder(s) or checkpoint file(s); several = ensemble")
        src = parser.add_mutually_exclusive_group(required=True)
        src.add_argument("--input", nargs="+", metavar="CT", help="raw CT(s): DICOM folder, NIfTI or NRRD")
        src.add_argument("--manifest", metavar="CSV", help="manifest (id,image[,lung_mask,covariates]; time/event "
                                                           "optional)")
        parser.add_argument("--id", nargs="+", help="case ids for --input (default: file/folder names)")
        parser.add_argument("--covariates", metavar="CSV", help="id-keyed covariates (id,age,sex,...)")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument("--no-heatmap", action="store_true", help="skip the heatmap")
        parser.add_argument("--no-figures", action="store_true", help="skip PNGs and the summary page")
        parser.add_argument("--overwrite", action="store_true", help="redo finished cases")
        parser.add_argument("--device", default="cpu", help="cpu | cuda[:N] (default cpu)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, args) -> int:
        from survival3d.predict.models import load_ensemble
        from survival3d.predict.runner import PredictJob, cases_from_inputs, cases_from_manifest, predict_cases

        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} exists and is not a directory.")
        if args.id and not args.input:
            raise ConfigError("--id goes with --input.")
        if args.manifest:
            cases = cases_from_manifest(args.manifest, args.covariates)
        else:
            cases = cases_from_inputs(args.input, args.id, args.covariates)
        ens = load_ensemble(args.model, device=args.device)
        job = PredictJob(cases=cases, out_dir=out, raw_only=bool(args.input), heatmap=not args.no_heatmap,
                         figures=not args.no_figures, progress=not args.no_progress, resume=not args.overwrite,
                         source=args.covariates or args.manifest)
        s = predict_cases(ens, job)
        print(f"predicted {s['done']} case(s), {s['skipped']} already done, {s['failed']} failed "
              f"({len(ens.members)} model(s), times in {ens.unit}) → {s['predictions']}"
              + (f"; failures in {out / 'failures.csv'}" if s["failed"] else ""))
        return 1 if s["failed"] else 0
