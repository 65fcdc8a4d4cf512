"""`run.py export`: a trained run as a MONAI bundle (see docs/predict.md)."""

from __future__ import annotations

from survival3d.cli import COMMANDS


@COMMANDS.register("export")
class ExportCommand:
    help = "export a trained run as a MONAI bundle (metadata, inference config, weights, TorchScript when possible)"

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, metavar="RUN|CKPT", help="run folder or checkpoint file")
        parser.add_argument("--out", required=True, help="bundle folder")

    def run(self, args) -> int:
        from survival3d.predict.bundle import export_bundle

        path = export_bundle(args.model, args.out)
        print(f"MONAI bundle written to {path}")
        return 0
