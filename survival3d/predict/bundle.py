"""A trained run as a MONAI bundle (``run.py export``), and the bundle's inference entry point.

Layout (MONAI bundle specification)::

    BUNDLE/configs/metadata.json    inputs/outputs, versions, the preprocessing plan, the model config, the
                                    covariate encoder, the time unit
    BUNDLE/configs/inference.json   `python -m monai.bundle run --config_file ... --input_image CT --output_dir OUT`
    BUNDLE/models/model.pt          the network's state dict (+ the loss's, for learnt variances)
    BUNDLE/models/model.ts          TorchScript (traced) network, when tracing works for the model
    BUNDLE/docs/README.md           how to run it

The bundle's ``run`` calls :class:`BundlePredictor`, which rebuilds the network from the metadata, loads the
weights (or the TorchScript module) and runs the same preprocessing, prediction and heatmap code as
``run.py predict``, writing the same files for one case.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from survival3d.contracts import SurvivalOutput
from survival3d.errors import InputError
from survival3d.io import write_json, write_text

__all__ = ["export_bundle", "BundlePredictor"]

log = logging.getLogger(__name__)


class _Traced(torch.nn.Module):
    """``(image, cov_num, cov_cat, lung_mask) -> (pred, risk, p)`` for tracing (``p``: zeros when the head has none)."""

    def __init__(self, model: torch.nn.Module, keys: list[str]):
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, image: torch.Tensor, *extra: torch.Tensor):
        out = self.model(image, **dict(zip(self.keys, extra)))
        p = out.p if out.p is not None else torch.zeros(1)
        return out.pred, out.risk, p


class _Scripted(torch.nn.Module):
    """A TorchScript network behind the survival model's call signature (returns a ``SurvivalOutput``)."""

    def __init__(self, module, keys: list[str], patch_size: int | None):
        super().__init__()
        self.module = module
        self.keys = keys
        self.patch_size = patch_size

    def forward(self, image, cov_num=None, cov_cat=None, lung_mask=None):
        given = {"cov_num": cov_num, "cov_cat": cov_cat, "lung_mask": lung_mask}
        pred, risk, p = self.module(image, *[given[k] for k in self.keys])
        return SurvivalOutput(pred=pred, risk=risk, p=p if p.dim() == 5 else None)


def _example_batch(ens):
    cfg = ens.cfg
    size = [int(s) for s in cfg.data.image_size]
    enc = ens.encoder
    batch = {"image": torch.rand(1, 1, *size), "cov_num": torch.zeros(1, len(enc.numeric)),
             "cov_cat": torch.zeros(1, len(enc.categorical), dtype=torch.long)}
    if ens.uses_lung_mask:
        batch["lung_mask"] = torch.ones(1, 1, *size)
    return batch


def _trace(ens, path: Path) -> dict[str, Any]:
    """Trace the network to TorchScript and check it against eager on a random input; never raises."""
    from survival3d.engine.inference import model_inputs

    model = ens.members[0].model
    batch = _example_batch(ens)
    kw = {k: v for k, v in model_inputs(batch).items() if v is not None}
    keys = list(kw)
    wrapper = _Traced(model, keys).eval()
    try:
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, (batch["image"], *kw.values()), check_trace=False, strict=False)
            check = {k: v for k, v in model_inputs(_example_batch(ens)).items() if v is not None}
            image = torch.rand_like(batch["image"])
            a = traced(image, *[check[k] for k in keys])
            b = wrapper(image, *[check[k] for k in keys])
        diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
        if diff > 1e-4:
            return {"torchscript": None, "reason": f"traced module differs from eager by {diff:.2e}"}
        torch.jit.save(traced, str(path))
        return {"torchscript": path.name, "inputs": keys, "max_abs_diff_vs_eager": diff}
    except (RuntimeError, TypeError, ValueError, torch.jit.Error) as e:  # tracing limits of the model
        return {"torchscript": None, "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}


def export_bundle(model: str | Path, out: str | Path) -> Path:
    """Write the bundle of one trained run or checkpoint into ``out`` (see the module docstring)."""
    import monai
    from omegaconf import OmegaConf

    import survival3d
    from survival3d.data.plan import describe_plan
    from survival3d.predict.models import load_ensemble

    ens = load_ensemble([model])
    if len(ens.members) != 1:
        raise InputError(f"export takes one model; {model} holds {len(ens.members)} (pick a fold, e.g. "
                         f"{Path(model) / ens.names[0]}).", path=model, field="--model")
    out = Path(out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "docs").mkdir(parents=True, exist_ok=True)
    m = ens.members[0]
    torch.save({"model": m.model.state_dict(), "loss": m.loss_fn.state_dict()}, out / "models" / "model.pt")
    ts = _trace(ens, out / "models" / "model.ts")
    cfg = m.cfg
    size = [int(s) for s in cfg.data.image_size]
    meta = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported from {m.path}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"survival3d": survival3d.__version__},
        "name": f"survival3d {cfg.name}",
        "task": "survival prediction from chest CT with a localisation heatmap",
        "description": "Predicts the distribution of the survival time (pmf over t = 1..TMAX) and a heatmap of the "
                       "softmin weight per region. Research software: not for clinical use.",
        "authors": "survival3d", "copyright": "see the survival3d repository",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": size, "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": False, "channel_def": {"0": "CT windowed to "
                                                                         f"{list(cfg.data.intensity_window)} HU"}},
                       "covariates": {"numeric": list(ens.encoder.numeric), "categorical": list(ens.encoder.categorical)}},
            "outputs": {"pred": {"type": "number", "format": "time", "unit": ens.unit,
                                 "description": "mean of the discretised Gaussian survival distribution"},
                        "pmf": {"type": "probabilities", "num_channels": ens.tmax, "description": "P(T = t) over the "
                                "time grid's bins (survival.csv: t in the data's unit)"},
                        "heatmap": {"type": "image", "format": "softmin weight", "description": "on the input CT's "
                                    "grid and affine (heatmap.nii.gz)"}},
        },
        "preprocessing": ens.plan, "preprocessing_description": describe_plan(ens.plan),
        "time_unit": ens.unit,
        "survival3d": {"config": OmegaConf.to_container(cfg, resolve=True), "time_grid": ens.time_grid.state_dict(),
                       "covariate_encoder": m.covariate_encoder.state_dict(),
                       "model_inputs": {"lung_mask": ens.uses_lung_mask}, "torchscript": ts,
                       "source_checkpoint": str(m.path)},
    }
    write_json(out / "configs" / "metadata.json", meta, default=str)
    inference = {
        "imports": ["$import survival3d.predict.bundle"],
        "bundle_root": str(out.resolve()),
        "input_image": "",
        "case_id": "case",
        "covariates_file": "",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "cpu",
        "use_torchscript": bool(ts.get("torchscript")),
        "predictor": {"_target_": "survival3d.predict.bundle.BundlePredictor", "bundle_root": "@bundle_root",
                      "device": "@device", "use_torchscript": "@use_torchscript"},
        "run": ["$@predictor(@input_image, @output_dir, case_id=@case_id, covariates_file=@covariates_file)"],
    }
    write_json(out / "configs" / "inference.json", inference)
    write_text(out / "docs" / "README.md", f"""# survival3d bundle: {cfg.name}

Predicts survival (mean, median, 10-90 % interval, risk score, S(t) and the pmf over 1..{ens.tmax} {ens.unit}) and a
heatmap on the input CT's grid for one CT (DICOM folder, NIfTI or NRRD), with the same code as `run.py predict`:

    python -m monai.bundle run --config_file {out}/configs/inference.json --meta_file {out}/configs/metadata.json \\
        --input_image CT.nii.gz --output_dir OUT [--covariates_file covariates.csv --case_id ID]

Preprocessing: {describe_plan(ens.plan)}.
TorchScript: {ts.get('torchscript') or 'not available (' + str(ts.get('reason')) + ')'}.
Requires the survival3d package ({survival3d.__version__}).
""")
    log.info("bundle written to %s (TorchScript: %s)", out, ts.get("torchscript") or ts.get("reason"))
    return out


class BundlePredictor:
    """The bundle's inference: rebuild the model from ``configs/metadata.json`` and ``models/model.pt`` (or
    ``models/model.ts``) and predict one CT with ``run.py predict``'s code.

    Args:
        bundle_root: the bundle folder.
        device: ``cpu`` or ``cuda[:N]``.
        use_torchscript: run the traced network instead of the rebuilt one (when the bundle has it).
    """

    def __init__(self, bundle_root: str | Path, device: str = "cpu", use_torchscript: bool = False):
        from survival3d.build import build_survival_loss, build_survival_model
        from survival3d.data.covariates import CovariateEncoder
        from survival3d.engine.checkpoint import TrainedModel, config_from_checkpoint
        from survival3d.predict.models import Ensemble
        from survival3d.time_grid import TimeGrid, resolved_config

        root = Path(bundle_root)
        meta = json.loads((root / "configs" / "metadata.json").read_text())
        info = meta["survival3d"]
        cfg = config_from_checkpoint({"config": info["config"]})
        grid = TimeGrid.from_state(info["time_grid"])
        grid_cfg = resolved_config(cfg, grid)
        encoder = CovariateEncoder.from_state(info["covariate_encoder"])
        device = torch.device(device)
        weights = torch.load(root / "models" / "model.pt", map_location=device, weights_only=True)
        model = build_survival_model(grid_cfg, encoder.spec)
        model.load_state_dict(weights["model"])
        loss = build_survival_loss(grid_cfg.loss)
        if weights.get("loss"):
            loss.load_state_dict(weights["loss"])
        ts = info.get("torchscript") or {}
        if use_torchscript and ts.get("torchscript"):
            module = torch.jit.load(str(root / "models" / ts["torchscript"]), map_location=device)
            model = _Scripted(module, list(ts["inputs"]), getattr(model, "patch_size", None))
        model.to(device).eval()
        loss.to(device).eval()
        state = {"preprocessing": meta.get("preprocessing"), "model_inputs": info["model_inputs"]}
        tm = TrainedModel(model=model, loss_fn=loss, cfg=cfg, covariate_encoder=encoder, checkpoint=state,
                          path=root / "models" / "model.pt", device=device, time_grid=grid)
        self.ensemble = Ensemble(members=[tm], names=["model"], plan=meta.get("preprocessing"),
                                 uses_lung_mask=bool(info["model_inputs"].get("lung_mask")))

    def __call__(self, input_image: str, output_dir: str, *, case_id: str = "case", covariates_file: str = "") -> dict:
        from survival3d.predict.runner import PredictJob, cases_from_inputs, predict_cases

        if not input_image:
            raise InputError("no input: run with --input_image CT.", field="input_image")
        cases = cases_from_inputs([input_image], [str(case_id)], covariates_file or None)
        job = PredictJob(cases=cases, out_dir=Path(output_dir), raw_only=self.ensemble.plan is not None,
                         progress=False, resume=False, source=covariates_file or None)
        summary = predict_cases(self.ensemble, job)
        if summary["failed"]:
            raise InputError(summary["failures"][0]["error"], path=input_image)
        return summary
