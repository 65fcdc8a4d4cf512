"""``run.py predict``: cases in (raw CTs or a manifest), per-patient predictions, curves, heatmaps and pages out.

Per case, under ``OUT/cases/<id>/``: ``prediction.json`` (written last: marks the case done), ``survival.csv``
(t, pmf, S(t), and one pmf column per ensemble member), ``survival.png``, ``heatmap.nii.gz`` (on the original
CT's grid and affine), ``heatmap_model.nii.gz`` (the model's input grid), ``overlay.png`` and ``summary.html``.
For the batch: ``predictions.csv``, ``failures.csv`` (when a case failed) and ``run.json``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from survival3d.data.datasets import collate_cases
from survival3d.data.splits import read_id_table
from survival3d.data.plan import check_same_plan, describe_plan, read_sidecar, settings_from_plan
from survival3d.data.preprocess import map_to_original
from survival3d.data.transforms import deterministic_transforms
from survival3d.engine.inference import forward, to_device
from survival3d.errors import InputError, Survival3DError
from survival3d.explain.base import cubelets_to_image, patch_size_of
from survival3d.io import write_csv, write_json, write_nifti
from survival3d.predict.models import Ensemble, distribution_summary, member_pmf

__all__ = ["CaseInput", "PredictJob", "predict_cases", "cases_from_inputs", "cases_from_manifest", "safe_name",
           "run_ensemble", "peak_world"]

log = logging.getLogger(__name__)

_CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def safe_name(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)) or "case"


def _case_id(path: Path) -> str:
    name = path.name.rstrip("/")
    for s in _CT_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


@dataclass
class CaseInput:
    """One patient to predict: an id, the CT (raw DICOM folder / NIfTI / NRRD, or a preprocessed image), its
    covariates and, when known, its observed time and event (copied to the outputs, never used)."""

    id: str
    source: str
    record: dict[str, Any] = field(default_factory=dict)
    lung_mask: str | None = None
    time: float | None = None
    event: float | None = None


def _is_blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _read_covariates(path: str | Path) -> pd.DataFrame:
    return read_id_table(path, field="--covariates", what="covariates file").set_index("id")


def cases_from_inputs(paths: Sequence[str | Path], ids: Sequence[str] | None = None,
                      covariates: str | Path | None = None) -> list[CaseInput]:
    """``--input`` CTs (ids: file/folder names without extension unless given), covariates from an id-keyed CSV."""
    paths = [Path(p) for p in paths]
    ids = list(ids) if ids else [_case_id(p) for p in paths]
    if len(ids) != len(paths):
        raise InputError(f"--id got {len(ids)} ids for {len(paths)} inputs.", field="--id")
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"duplicate case id(s) {dup[:5]}; give --id.", field="--id")
    table = _read_covariates(covariates) if covariates else None
    cases = []
    for cid, p in zip(ids, paths):
        rec = {"id": cid}
        if table is not None and cid in table.index:
            rec.update(table.loc[cid].to_dict())
        cases.append(CaseInput(id=cid, source=str(p), record=rec))
    return cases


def cases_from_manifest(manifest: str | Path, covariates: str | Path | None = None) -> list[CaseInput]:
    """Manifest rows (time/event optional); ``--covariates`` values override the manifest's."""
    from survival3d.data.manifest import read_manifest

    df = read_manifest(manifest, require_outcome=False)
    table = _read_covariates(covariates) if covariates else None
    cases = []
    for row in df.to_dict(orient="records"):
        rec = {k: v for k, v in row.items() if k not in ("image", "mask", "lung_mask", "distractor_mask")}
        if table is not None and rec["id"] in table.index:
            rec.update(table.loc[rec["id"]].to_dict())
        t, e = row.get("time"), row.get("event")
        cases.append(CaseInput(id=str(row["id"]), source=str(row["image"]), record=rec,
                               lung_mask=row.get("lung_mask") or None,
                               time=None if _is_blank(t) else float(t), event=None if _is_blank(e) else float(e)))
    return cases


def check_covariates(ens: Ensemble, cases: Sequence[CaseInput], source: str | None) -> None:
    """Every covariate the model was trained with, present and of the right type, for every case (one line naming
    the id and the column otherwise)."""
    enc = ens.encoder
    for case in cases:
        for col in list(enc.numeric) + list(enc.categorical):
            if col not in case.record or _is_blank(case.record[col]):
                raise InputError(f"case '{case.id}' has no value for covariate '{col}' (the model was trained with "
                                 f"{list(enc.numeric) + list(enc.categorical)}); give it with --covariates CSV "
                                 f"(id,{col},...) or in the manifest.", path=source, field=col)
        enc.transform(case.record, source=source)  # wrong types: one line naming id and column


# --------------------------------------------------------------------------------------------- preparing inputs
@dataclass
class Prepared:
    """A case ready for the model: its batch (model grid) and the grids to map heatmaps back to."""

    batch: dict[str, Any]
    kind: str  # raw (preprocessed here with the model's plan) | preprocessed (sidecar) | as-is (no plan)
    original_affine: np.ndarray
    original_shape: tuple[int, int, int]
    original_image: np.ndarray | None = None  # HU on the original grid (raw inputs), for the overlay
    qc: dict[str, Any] = field(default_factory=dict)


def _load(path: str, what: str):
    from monai.transforms import LoadImage

    try:
        return LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except (OSError, RuntimeError, ValueError) as e:
        raise InputError(f"cannot read the {what} ({type(e).__name__}: {str(e).splitlines()[0][:160]}).", path=path,
                         field=what) from None


class Preparer:
    """Turns :class:`CaseInput` into :class:`Prepared` with the ensemble's plan and data settings."""

    def __init__(self, ens: Ensemble):
        self.ens = ens
        cfg = ens.cfg
        keys = ["lung_mask"] if ens.uses_lung_mask else []
        self.transforms = deterministic_transforms(mask_keys=keys, image_size=list(cfg.data.image_size),
                                                   intensity_window=list(cfg.data.intensity_window),
                                                   spatial=cfg.data.spatial, load=False,
                                                   outside_lung=OmegaConf.select(cfg, "data.outside_lung",
                                                                                 default="keep"))
        self.settings = None
        self._masker = None
        if ens.plan is not None:
            self.settings = settings_from_plan(ens.plan)
            if self.settings.digest() != ens.plan["digest"]:
                raise InputError(f"this survival3d's preprocessing pipeline differs from the model's "
                                 f"({describe_plan(ens.plan)}; here digest {self.settings.digest()}): predict with the "
                                 f"survival3d version the model was trained with.", field="preprocessing")

    def masker(self):
        if self._masker is None:
            self._masker = self.settings.build_masker()
        return self._masker

    def kind_of(self, case: CaseInput, *, raw_only: bool) -> str:
        side = None if raw_only else read_sidecar(case.source)
        if side is not None:
            check_same_plan(self.ens.plan, {"settings": side["settings"], "digest": side["settings_digest"]},
                            path=case.source, model=f"the model ({self.ens.names[0]}...)")
            return "preprocessed"
        if self.ens.plan is not None:
            return "raw"
        if raw_only:
            raise InputError("the model has no preprocessing plan (it was trained on in-memory dummy data or on images "
                             "not written by run.py preprocess), so a raw CT cannot be prepared for it; give a "
                             "--manifest of images prepared like its training data.", path=case.source, field="--input")
        return "as-is"

    def __call__(self, case: CaseInput, kind: str) -> Prepared:
        import nibabel as nib
        from monai.data import MetaTensor

        from survival3d.data.preprocess import preprocess_volume
        from survival3d.data.readers import read_ct

        original_image, qc = None, {}
        if kind == "raw":
            vol = read_ct(case.source)
            res = preprocess_volume(vol, self.settings, self.masker())
            aff = torch.as_tensor(res.affine, dtype=torch.float64)
            image = MetaTensor(torch.from_numpy(res.image.astype(np.float32))[None], affine=aff)
            lung = MetaTensor(torch.from_numpy(res.lung_mask.astype(np.float32))[None], affine=aff.clone())
            original_affine, original_shape = np.asarray(vol.affine, dtype=float), tuple(int(s) for s in vol.shape)
            original_image = vol.array
            qc = {k: res.qc[k] for k in ("lung_volume_l", "lung_components", "masker", "seconds") if k in res.qc}
        else:
            image = _load(case.source, "image")
            lung = None
            if self.ens.uses_lung_mask:
                if not case.lung_mask:
                    raise InputError("the model was trained with lung masks but this case has none (manifest column "
                                     "lung_mask).", path=case.source, field="lung_mask")
                lung = _load(case.lung_mask, "lung_mask")
            if kind == "preprocessed":
                side = read_sidecar(case.source)
                original_affine = np.asarray(side["original"]["affine"], dtype=float)
                original_shape = tuple(int(s) for s in side["original"]["shape"])
            else:
                hdr = nib.load(case.source) if case.source.endswith((".nii", ".nii.gz")) else None
                original_affine = np.asarray(hdr.affine if hdr is not None else image.affine, dtype=float)
                original_shape = tuple(int(s) for s in image.shape[1:])
        d = {"image": image}
        if self.ens.uses_lung_mask:
            d["lung_mask"] = lung
        d = self.transforms(d)
        num, cat = self.ens.encoder.transform(case.record)
        item = {"id": case.id, "image": d["image"], "cov_num": torch.from_numpy(num), "cov_cat": torch.from_numpy(cat)}
        if "lung_mask" in d:
            item["lung_mask"] = d["lung_mask"]
        return Prepared(batch=collate_cases([item]), kind=kind, original_affine=original_affine,
                        original_shape=original_shape, original_image=original_image, qc=qc)


# ------------------------------------------------------------------------------------------------- the model
def peak_world(heat: np.ndarray, affine: np.ndarray, frac: float = 0.99) -> list[float]:
    """World (mm) coordinates of the heatmap's peak: the centroid of the voxels at ≥ ``frac`` × the maximum (a
    plateau's centre rather than its first voxel, so the same point on any grid)."""
    h = np.asarray(heat, dtype=np.float64)
    idx = np.argwhere(h >= frac * h.max()).mean(axis=0)
    return [float(v) for v in (np.asarray(affine, dtype=float) @ np.append(idx, 1.0))[:3]]


@torch.no_grad()
def run_ensemble(ens: Ensemble, batch: Mapping[str, Any], *, heatmap: bool = True) -> dict[str, Any]:
    """Every member on one case: ``pmf`` (averaged, normalised; ``None`` for losses without a distribution),
    ``members`` (per member: pred, risk, pmf), the summary numbers and ``heat`` (D, H, W) on the model grid (the
    members' softmin p per cubelet, trilinearly upsampled and averaged; ``None`` when the head gives no map)."""
    members, heats = [], []
    shape = tuple(batch["image"].shape[-3:])
    grid, times = ens.time_grid, ens.times()
    for name, m in zip(ens.names, ens.members):
        out = forward(m.model, to_device(batch, m.device), amp=False)
        pred = out.pred.float()  # grid units
        pmf = member_pmf(m, pred)
        members.append({"name": name, "pred": float(grid.from_grid(pred[0])), "risk": float(out.risk[0]),
                        "pmf": None if pmf is None else pmf[0]})
        if heatmap and out.p is not None:
            grid = tuple(out.p.shape[-3:])
            ps = patch_size_of(m.model, shape, grid)
            heats.append(cubelets_to_image(out.p.float(), shape, ps, "trilinear")[0, 0].cpu().numpy())
    res: dict[str, Any] = {"members": members, "heat": np.mean(heats, axis=0) if heats else None}
    if all(mb["pmf"] is not None for mb in members):
        pmf = np.mean([mb["pmf"] for mb in members], axis=0)
        res["pmf"] = pmf
        res.update(distribution_summary(pmf, times))
        for mb in members:
            mb.update(distribution_summary(mb["pmf"], times))
        res["risk"] = -res["mean_time"]
        means = [mb["mean_time"] for mb in members]
    else:
        res["pmf"] = None
        res["mean_time"] = float(np.mean([mb["pred"] for mb in members]))
        res["risk"] = float(np.mean([mb["risk"] for mb in members]))
        means = [mb["pred"] for mb in members]
    res["member_sd_time"] = float(np.std(means, ddof=1)) if len(means) > 1 else None
    return res


# -------------------------------------------------------------------------------------------------- the batch
@dataclass
class PredictJob:
    """What to predict and where: cases, output folder and options."""

    cases: list[CaseInput]
    out_dir: Path
    raw_only: bool = False  # --input: the paths are raw CTs
    heatmap: bool = True
    figures: bool = True
    progress: bool = True
    resume: bool = True
    source: str | None = None  # where covariates came from, for messages


SUMMARY_COLUMNS = ("id", "status", "mean_time", "median_time", "q10_time", "q90_time", "risk", "member_sd_time",
                   "n_members", "time_unit", "p_at_tmax", "input_kind", "source", "time", "event",
                   "peak_x_mm", "peak_y_mm", "peak_z_mm", "heatmap", "summary")


def _done(case_dir: Path, digest: str) -> dict[str, Any] | None:
    import json

    try:
        info = json.loads((case_dir / "prediction.json").read_text())
    except (OSError, ValueError):
        return None
    if info.get("model_digest") != digest:
        return None
    return info if all((case_dir / f).is_file() for f in info.get("files", {}).values()) else None


def predict_one(ens: Ensemble, prep: Preparer, case: CaseInput, kind: str, job: PredictJob) -> dict[str, Any]:
    """Predict one case and write its files; returns its ``prediction.json`` content."""
    from survival3d.predict.report import (plot_overlay, plot_survival, survival_table, write_summary_page)

    import time

    case_dir = Path(job.out_dir) / "cases" / safe_name(case.id)
    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        seconds[name] = round(clock[-1] - clock[-2], 3)

    p = prep(case, kind)
    lap("read_and_preprocess")
    res = run_ensemble(ens, p.batch, heatmap=job.heatmap)
    lap("model_and_heatmap")
    unit = ens.unit
    files: dict[str, str] = {}
    info: dict[str, Any] = {
        "id": case.id, "source": case.source, "input_kind": kind, "time_unit": unit, "tmax": ens.tmax,
        "horizon": float(ens.time_grid.horizon),
        "n_members": len(ens.members), "model_digest": ens.digest(), "plan": describe_plan(ens.plan),
        **{k: res.get(k) for k in ("mean_time", "median_time", "q10_time", "q90_time", "risk", "member_sd_time",
                                   "p_at_tmax")},
        "members": [{k: v for k, v in mb.items() if k != "pmf"} for mb in res["members"]],
        "time": case.time, "event": case.event, "qc": p.qc,
        "original_shape": list(p.original_shape), "original_affine": p.original_affine.round(6).tolist(),
    }
    if res["pmf"] is not None:
        write_csv(case_dir / "survival.csv", survival_table(res["pmf"], [mb["pmf"] for mb in res["members"]],
                                                            ens.names, ens.times()))
        files["survival_csv"] = "survival.csv"
        if job.figures:
            plot_survival(res, ens.names, unit, case_dir / "survival.png", title=case.id, times=ens.times())
            files["survival_png"] = "survival.png"
    if res["heat"] is not None:
        model_affine = p.batch["affine"][0].numpy()
        heat_model = res["heat"].astype(np.float32)
        heat_orig = map_to_original(heat_model, model_affine, p.original_affine, p.original_shape)
        heat_orig = np.clip(heat_orig, 0.0, None).astype(np.float32)
        lap("heatmap_to_original_grid")
        write_nifti(case_dir / "heatmap.nii.gz", heat_orig, p.original_affine, xyzt_units="mm")
        write_nifti(case_dir / "heatmap_model.nii.gz", heat_model, model_affine, xyzt_units="mm")
        files.update(heatmap="heatmap.nii.gz", heatmap_model="heatmap_model.nii.gz")
        lap("write_heatmaps")
        info["peak_world_mm"] = peak_world(heat_model, model_affine)
        info["peak_world_mm_original_grid"] = peak_world(heat_orig, p.original_affine) if heat_orig.max() > 0 else None
        if job.figures:
            if p.original_image is not None:
                img, heat, aff = p.original_image, heat_orig, p.original_affine
                lo, hi = (float(v) for v in ens.cfg.data.intensity_window)
            else:
                img, heat, aff = p.batch["image"][0, 0].numpy(), heat_model, model_affine
                lo, hi = 0.0, 1.0
            plot_overlay(img, heat, aff, case_dir / "overlay.png", window=(lo, hi),
                         title=f"{case.id}: where the model looked (softmin weight p)")
            files["overlay_png"] = "overlay.png"
    if job.figures:
        write_summary_page(info, ens, case_dir, files)
        files["summary"] = "summary.html"
    lap("figures_and_page")
    info["files"] = files
    info["seconds"] = seconds
    write_json(case_dir / "prediction.json", info, default=lambda o: None)  # last: marks the case done
    return info


def _row(info: Mapping[str, Any], case_dir: Path) -> dict[str, Any]:
    peak = info.get("peak_world_mm") or [None] * 3
    files = info.get("files", {})
    return {"id": info["id"], "status": "done", **{k: info.get(k) for k in (
        "mean_time", "median_time", "q10_time", "q90_time", "risk", "member_sd_time", "n_members", "time_unit",
        "p_at_tmax", "input_kind", "source", "time", "event")},
        "peak_x_mm": peak[0], "peak_y_mm": peak[1], "peak_z_mm": peak[2],
        "heatmap": str(case_dir / files["heatmap"]) if "heatmap" in files else None,
        "summary": str(case_dir / files["summary"]) if "summary" in files else None}


def member_concordance(out: Path, frame: pd.DataFrame, names: Sequence[str]) -> dict[str, Any] | None:
    """Harrell's C of the ensemble's risk and of each member's (−its mean time) on the cases with an observed time
    and event; ``None`` when fewer than two such cases. For measuring an ensemble on held-out data."""
    import json

    from survival3d.metrics import harrell_c_index

    known = frame.dropna(subset=["time", "event"])
    if len(known) < 2 or known["event"].sum() < 1:
        return None
    per_member: dict[str, list[float]] = {n: [] for n in names}
    for cid in known["id"]:
        info = json.loads((out / "cases" / safe_name(cid) / "prediction.json").read_text())
        for mb in info["members"]:
            per_member[mb["name"]].append(-float(mb.get("mean_time", mb["pred"])))
    t, e = known["time"].to_numpy(float), known["event"].to_numpy(float).astype(int)
    members = {n: float(harrell_c_index(t, np.asarray(r), e)) for n, r in per_member.items()}
    vals = list(members.values())
    return {"n": int(len(known)), "events": int(e.sum()), "c_index_ensemble": float(harrell_c_index(t, known["risk"].to_numpy(float), e)),
            "c_index_members": members, "c_index_members_mean": float(np.mean(vals)),
            "c_index_members_sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            "member_sd_time_mean": float(known["member_sd_time"].mean()) if known["member_sd_time"].notna().any() else None}


def predict_cases(ens: Ensemble, job: PredictJob) -> dict[str, Any]:
    """Predict every case of ``job`` (resumable; a failing case goes to ``failures.csv`` and the others go on).

    Returns:
        ``{"done", "skipped", "failed", "failures", "predictions": path}``.
    """
    from tqdm.auto import tqdm

    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_covariates(ens, job.cases, job.source)
    prep = Preparer(ens)
    kinds = {c.id: prep.kind_of(c, raw_only=job.raw_only) for c in job.cases}  # plan refusals before any work
    digest = ens.digest()
    rows, failures, skipped = [], [], 0
    for case in tqdm(job.cases, desc="predict", unit="case", disable=not job.progress):
        case_dir = out / "cases" / safe_name(case.id)
        info = _done(case_dir, digest) if job.resume else None
        if info is not None:
            skipped += 1
        else:
            try:
                info = predict_one(ens, prep, case, kinds[case.id], job)
            except Survival3DError as e:
                failures.append({"id": case.id, "source": case.source, "error": str(e)})
                log.error("%s failed: %s", case.id, e)
                continue
            except Exception as e:  # noqa: BLE001 - one broken case must not stop a batch; the traceback is logged
                log.exception("%s: unexpected failure", case.id)
                failures.append({"id": case.id, "source": case.source, "error": f"{type(e).__name__}: {e}"})
                continue
        rows.append(_row(info, case_dir))
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    write_csv(out / "predictions.csv", frame)
    fail_csv = out / "failures.csv"
    if failures:
        write_csv(fail_csv, pd.DataFrame(failures, columns=["id", "source", "error"]))
    else:
        fail_csv.unlink(missing_ok=True)
    summary = {"cases": len(job.cases), "done": len(rows) - skipped, "skipped": skipped, "failed": len(failures),
               "failures": failures, "predictions": str(out / "predictions.csv"), "model": ens.describe()}
    concordance = member_concordance(out, frame, ens.names)
    if concordance is not None:  # the input table had observed times: how well members and ensemble rank them
        write_json(out / "concordance.json", concordance, default=lambda o: None)
        summary["concordance"] = concordance
    write_json(out / "run.json", summary, default=str)
    return summary
