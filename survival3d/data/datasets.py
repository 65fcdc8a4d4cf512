"""Datasets and batches of the 3D survival pipeline.

Cases come from one of two sources (``data.source``):

* ``manifest``: a CSV read by :func:`survival3d.data.manifest.read_manifest` (``id,image,time,event`` plus optional
  ``mask``, ``lung_mask``, ``distractor_mask``, ``expected_time`` and covariate columns); images and masks are loaded
  from disk by MONAI with their affine.
* ``dummy``: the synthetic sphere levels, generated in memory (:mod:`survival3d.data.dummy`), no disk involved.

Either way a case is a dict; :class:`SurvivalDataset` runs the cached deterministic transforms once, re-draws the
training augmentation every epoch from a seed derived from ``(seed, epoch, index)`` (so augmentation is the same
whatever the number of workers or DDP ranks, and a resumed run sees the same augmented volumes as an uninterrupted
one), and adds the encoded covariates. :func:`collate_cases` stacks cases into the batch dict every model, loss
and explainer consumes::

    image (B,1,D,H,W) float in [0,1]; mask / lung_mask / distractor_mask (B,1,D,H,W) when present;
    time, event (B,) float32; cov_num (B,n) float32; cov_cat (B,m) int64; id list[str];
    expected_time (B,) when known; affine (B,4,4) float64 (voxel → world of the volume the model saw).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset, get_track_meta, set_track_meta

from survival3d.data.covariates import CovariateEncoder
from survival3d.data.dummy_spec import DummySpec
from survival3d.data.transforms import MASK_KEYS, deterministic_transforms, random_transforms
from survival3d.errors import ConfigError, InputError

__all__ = [
    "Cases",
    "load_cases",
    "dummy_cases",
    "manifest_cases",
    "SurvivalDataset",
    "build_dataset",
    "collate_cases",
    "CACHE_MODES",
]

log = logging.getLogger(__name__)

CACHE_MODES = ("memory", "persistent", "none")
_SCALARS = ("time", "event", "expected_time")


class Cases:
    """The cases of one experiment before any transform.

    Attributes:
        records: one dict per case (``id``, ``image``, masks, ``time``, ``event``, ``expected_time``, covariates).
        mask_keys: mask keys every case has.
        load: whether ``image``/masks are file paths (manifest) rather than in-memory tensors (dummy).
        source: where the cases came from (manifest path or a dummy description), for messages.
        groups: optional patient id per case (scans of one patient stay on one side of every split).
    """

    def __init__(self, records: list[dict], *, mask_keys: Sequence[str], load: bool, source: str, groups=None):
        self.records = records
        self.mask_keys = tuple(mask_keys)
        self.load = load
        self.source = source
        self.groups = groups
        self.index = {str(r["id"]): i for i, r in enumerate(records)}

    @property
    def ids(self) -> list[str]:
        return [str(r["id"]) for r in self.records]

    @property
    def events(self) -> list[int]:
        return [int(r["event"]) for r in self.records]  # training data: read_manifest checked every event

    @property
    def has_expected_time(self) -> bool:
        return all(r.get("expected_time") is not None for r in self.records)

    def subset(self, ids: Sequence[str]) -> list[dict]:
        missing = [i for i in ids if str(i) not in self.index]
        if missing:
            raise InputError(f"ids {missing[:5]} are not in the data set.", path=self.source, field="id")
        return [self.records[self.index[str(i)]] for i in ids]

    def __len__(self) -> int:
        return len(self.records)


def _meta(array: np.ndarray, affine) -> MetaTensor:
    return MetaTensor(torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))[None], affine=torch.as_tensor(affine, dtype=torch.float64))


def dummy_cases(dummy_cfg, *, generate_case: Callable | None = None) -> Cases:
    """Generate the ``data.dummy`` cases (a :class:`DummySpec` section) in memory: ``generate_case(level, i,
    **spec.case_kwargs())`` for ``i < n``, by default :func:`survival3d.data.dummy.generate_case`."""
    if generate_case is None:
        from survival3d.data.dummy import generate_case  # owned by the dummy-data module
    d = DummySpec.from_section(dummy_cfg)
    if int(d.n) < 4:
        raise ConfigError(f"data.dummy.n must be at least 4 to split into train and validation, got {d.n}.")
    records = []
    for i in range(int(d.n)):
        case = generate_case(d.level, i, **d.case_kwargs())
        affine = case.get("affine")
        if affine is None:
            affine = np.diag([float(d.spacing)] * 3 + [1.0])
        rec = {k: v for k, v in case.items() if k not in ("image", "affine", "covariates", *MASK_KEYS)}
        if isinstance(case.get("covariates"), Mapping):
            rec.update(case["covariates"])
        rec["id"] = str(case["id"]) if "id" in case else f"dummy{int(d.level)}_{i:04d}"
        rec["image"] = _meta(case["image"], affine)
        for key in MASK_KEYS:
            if case.get(key) is not None:
                rec[key] = _meta(case[key], affine)
        records.append(rec)
    mask_keys = [k for k in MASK_KEYS if all(k in r for r in records)]
    for r in records:
        for k in MASK_KEYS:
            if k not in mask_keys:
                r.pop(k, None)
    return Cases(records, mask_keys=mask_keys, load=False, source=f"dummy level {d.level} (n={d.n}, seed={d.seed})")


def manifest_cases(path: str, *, group_column: str | None = None, require_outcome: bool = True) -> Cases:
    """Read a manifest (validated by :func:`survival3d.data.manifest.read_manifest`) into cases.

    ``require_outcome=False`` (explain, predict): ``time``/``event`` may be missing or blank (NaN in the batch).
    """
    from survival3d.data.manifest import read_manifest  # owned by the manifest module

    df = read_manifest(path, require_outcome=require_outcome)
    mask_keys = []
    for key in MASK_KEYS:
        if key not in df.columns:
            continue
        present = df[key].notna() & (df[key].astype(str).str.strip() != "")
        if present.all():
            mask_keys.append(key)
        elif present.any():
            missing = df.loc[~present, "id"].astype(str).tolist()[:5]
            raise InputError(f"column is filled for some cases but empty for {missing}; give it for all or none.", path=path, field=key)
    groups = None
    if group_column is not None:
        if group_column not in df.columns:
            raise InputError(f"cv.group_column '{group_column}' is not a column of the manifest.", path=path, field=group_column)
        groups = df[group_column].astype(str).tolist()
    check_volumes(df, mask_keys, path)
    records = []
    for row in df.to_dict(orient="records"):
        rec = {k: v for k, v in row.items() if k not in MASK_KEYS or k in mask_keys}
        rec["id"] = str(rec["id"])
        et = rec.get("expected_time")
        if et is not None and isinstance(et, float) and math.isnan(et):
            rec["expected_time"] = None
        records.append(rec)
    return Cases(records, mask_keys=mask_keys, load=True, source=str(path), groups=groups)


def check_volumes(df, mask_keys: Sequence[str], manifest: str) -> None:
    """Every image and mask of a manifest is a readable, finite 3D volume, and every mask has its image's shape and
    affine (the pipeline resizes image and masks separately: a mask on another grid would be stretched onto the
    wrong voxels, so it is an error, not a silent resample). An all-zero ``lung_mask`` is a warning naming the file
    (the model then uses every cubelet of that case).

    Raises:
        InputError: naming the file and the manifest column.
    """
    from survival3d.data.readers import probe_volume

    for row in df.to_dict(orient="records"):
        image = probe_volume(row["image"], "image")
        for key in mask_keys:
            info = probe_volume(row[key], key)
            if info.shape != image.shape:
                raise InputError(f"shape {info.shape} differs from its image's {image.shape} ({row['image']}); masks "
                                 f"must be on the image's voxel grid.", path=row[key], field=key)
            if not np.allclose(info.affine, image.affine, rtol=1e-4, atol=1e-3):
                raise InputError(f"affine differs from its image's ({row['image']}): the mask is not on the image's "
                                 f"voxel grid (max difference {np.abs(info.affine - image.affine).max():.3g} mm); "
                                 f"resample it onto the image first.", path=row[key], field=key)
            if key == "lung_mask" and not info.any_nonzero:
                log.warning("%s [lung_mask]: all zero (case %s): the model will use every cubelet of this case",
                            row[key], row["id"])


def load_cases(data_cfg, *, generate_case: Callable | None = None, group_column: str | None = None) -> Cases:
    """The cases named by the ``data`` section (``data.source`` = ``dummy`` or ``manifest``)."""
    if data_cfg.source == "dummy":
        return dummy_cases(data_cfg.dummy, generate_case=generate_case)
    if data_cfg.source == "manifest":
        if not data_cfg.manifest:
            raise ConfigError("data.source=manifest needs data.manifest=<path to manifest.csv>.")
        return manifest_cases(data_cfg.manifest, group_column=group_column)
    raise ConfigError(f"data.source must be 'dummy' or 'manifest', got '{data_cfg.source}'.")


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0])


class SurvivalDataset(torch.utils.data.Dataset):
    """Cached deterministic transforms + per-epoch seeded augmentation + encoded covariates.

    Args:
        base: a MONAI dataset returning deterministically transformed cases (``CacheDataset`` & co).
        records: the raw records (for ids, times and covariates, without touching the cached volumes).
        encoder: a fitted :class:`CovariateEncoder`.
        augment: the random transform chain, or ``None`` (validation).
        seed: base seed of the augmentation stream.
        source: shown in error messages.
    """

    def __init__(self, base, records: list[dict], encoder: CovariateEncoder, *, augment=None, seed: int = 0, source: str | None = None):
        self.base = base
        self.records = records
        self.encoder = encoder
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.source = source
        self._lock = threading.Lock()
        self.covariates = [encoder.transform(r, source=source) for r in records]  # fail early on bad values

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before iterating, like ``DistributedSampler``)."""
        self.epoch = int(epoch)

    @property
    def ids(self) -> list[str]:
        return [str(r["id"]) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        if self.augment is not None:
            # plain tensors: MONAI's metadata tracking costs more than the flips themselves, and an augmented
            # volume's affine is never used (heatmaps come from unaugmented validation cases)
            item = {k: v.as_tensor() if isinstance(v, MetaTensor) else v for k, v in item.items()}
            with self._lock:
                tracking = get_track_meta()
                set_track_meta(False)
                try:
                    self.augment.set_random_state(seed=_seed(self.seed, self.epoch, index))
                    item = self.augment(item)
                finally:
                    set_track_meta(tracking)
        rec = self.records[index]
        out = {k: item[k] for k in ("image", *MASK_KEYS) if k in item}
        out["id"] = str(rec["id"])
        out["time"] = float(rec["time"])
        out["event"] = float(rec["event"])
        if rec.get("expected_time") is not None:
            out["expected_time"] = float(rec["expected_time"])
        num, cat = self.covariates[index]
        out["cov_num"] = torch.from_numpy(num)
        out["cov_cat"] = torch.from_numpy(cat)
        return out


def build_dataset(cases: Cases, ids: Sequence[str], encoder: CovariateEncoder, data_cfg, *, train: bool, seed: int = 0) -> SurvivalDataset:
    """A :class:`SurvivalDataset` over the cases ``ids`` with the ``data`` section's transforms and cache mode."""
    records = cases.subset(ids)
    det = deterministic_transforms(
        mask_keys=cases.mask_keys,
        image_size=list(data_cfg.image_size),
        intensity_window=list(data_cfg.intensity_window),
        spatial=data_cfg.spatial,
        load=cases.load,
        device=None if data_cfg.cache_device == "cpu" else data_cfg.cache_device,
        outside_lung=data_cfg.outside_lung,
    )
    if data_cfg.cache == "memory":
        base = CacheDataset(records, transform=det, cache_rate=1.0, num_workers=None, progress=False, copy_cache=False)
    elif data_cfg.cache == "persistent":
        if not data_cfg.cache_dir:
            raise ConfigError("data.cache=persistent needs data.cache_dir=<folder>.")
        if not cases.load:
            raise ConfigError("data.cache=persistent is for data.source=manifest; in-memory dummy data uses data.cache=memory.")
        base = PersistentDataset(records, transform=det, cache_dir=data_cfg.cache_dir)
    elif data_cfg.cache == "none":
        base = Dataset(records, transform=det)
    else:
        raise ConfigError(f"data.cache must be one of {CACHE_MODES}, got '{data_cfg.cache}'.")
    augment = None
    if train and data_cfg.augment:
        augment = random_transforms(
            mask_keys=cases.mask_keys, flip_prob=data_cfg.flip_prob, affine_prob=data_cfg.affine_prob,
            rotate_deg=data_cfg.rotate_deg, scale=data_cfg.scale_range, translate=data_cfg.translate,
            spatial_size=list(data_cfg.image_size) if data_cfg.spatial is not None else None,
        )
    return SurvivalDataset(base, records, encoder, augment=augment, seed=seed, source=cases.source)


def _plain(t) -> torch.Tensor:
    return t.as_tensor() if isinstance(t, MetaTensor) else torch.as_tensor(t)


def collate_cases(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack cases into the batch dict (plain tensors; the image affines go to ``affine`` (B,4,4))."""
    if not items:
        raise ValueError("cannot collate an empty list of cases.")
    batch: dict[str, Any] = {"id": [it["id"] for it in items]}
    for key in ("image", *MASK_KEYS):
        if key in items[0]:
            batch[key] = torch.stack([_plain(it[key]) for it in items]).float()
    batch["affine"] = torch.stack(
        [it["image"].affine.to(torch.float64).cpu() if isinstance(it["image"], MetaTensor) else torch.eye(4, dtype=torch.float64) for it in items]
    )
    for key in _SCALARS:
        if all(key in it for it in items):
            batch[key] = torch.tensor([it[key] for it in items], dtype=torch.float32)
    batch["cov_num"] = torch.stack([it["cov_num"] for it in items]).float()
    batch["cov_cat"] = torch.stack([it["cov_cat"] for it in items]).long()
    return batch
