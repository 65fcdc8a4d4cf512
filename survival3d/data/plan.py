"""The preprocessing plan a model was trained with, read from the preprocessed cases' sidecars.

``run.py preprocess`` writes, next to every ``images/<id>.nii.gz``, a sidecar ``images/<id>.json`` holding the
:class:`~survival3d.data.preprocess.PreprocessSettings` (spacing, size, HU window, crop margin, lung masker and its
settings, pipeline version) and their digest. A training run on such a manifest records the plan
(:func:`cases_plan`) in its checkpoints (``preprocessing``) and in ``plan.json`` in the run folder, so that
``run.py predict`` applies exactly the same preprocessing to a raw CT and refuses input prepared differently.

A plan is a plain dict (JSON- and ``torch.load(weights_only=True)``-safe)::

    {"settings": {...PreprocessSettings.to_dict()}, "digest": "<12 hex>", "orientation": "RAS",
     "package": "survival3d", "package_version": "0.1.0"}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from survival3d.errors import InputError

__all__ = ["sidecar_of", "read_sidecar", "plan_from_settings", "cases_plan", "describe_plan", "settings_from_plan",
           "check_same_plan"]

_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def sidecar_of(image_path: str | Path) -> Path:
    """``images/<id>.json`` for ``images/<id>.nii.gz`` (the sidecar ``preprocess_case`` writes)."""
    p = Path(image_path)
    name = p.name
    for s in _SUFFIXES:
        if name.lower().endswith(s):
            return p.with_name(name[: -len(s)] + ".json")
    return p.with_suffix(".json")


def read_sidecar(image_path: str | Path) -> dict[str, Any] | None:
    """The preprocessing sidecar of an image, or ``None`` when there is none (not a preprocessed image)."""
    path = sidecar_of(image_path)
    if not path.is_file():
        return None
    try:
        side = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"unreadable preprocessing sidecar ({e}).", path=path) from None
    if not isinstance(side, dict) or "settings" not in side or "settings_digest" not in side:
        return None
    return side


def plan_from_settings(settings: Mapping[str, Any], digest: str) -> dict[str, Any]:
    """A plan dict from a sidecar's ``settings`` and ``settings_digest``."""
    import survival3d

    return {"settings": json.loads(json.dumps(dict(settings), default=str)), "digest": str(digest),
            "orientation": "RAS", "package": "survival3d", "package_version": survival3d.__version__}


def cases_plan(records: Iterable[Mapping[str, Any]], *, source: str | None = None) -> dict[str, Any] | None:
    """The plan shared by every record's ``image`` sidecar; ``None`` when no image has one (dummy data, or images
    prepared outside ``run.py preprocess``).

    Raises:
        InputError: some images have a sidecar and others not, or the sidecars name different plans.
    """
    found: dict[str, tuple[dict, str]] = {}
    without: list[str] = []
    for r in records:
        image = r.get("image")
        if not isinstance(image, (str, Path)):
            return None  # in-memory volumes: no plan
        side = read_sidecar(image)
        if side is None:
            without.append(str(r.get("id")))
        else:
            found.setdefault(side["settings_digest"], (side["settings"], str(r.get("id"))))
    if not found:
        return None
    if without:
        raise InputError(f"case(s) {without[:5]} have no preprocessing sidecar (images/<id>.json) while others do; "
                         "preprocess every case with run.py preprocess.", path=source, field="image")
    if len(found) > 1:
        desc = "; ".join(f"{d} (e.g. case {cid}): {describe_plan(plan_from_settings(s, d))}"
                         for d, (s, cid) in found.items())
        raise InputError(f"the cases were preprocessed with {len(found)} different plans: {desc}.", path=source,
                         field="image")
    digest, (settings, _) = next(iter(found.items()))
    return plan_from_settings(settings, digest)


def describe_plan(plan: Mapping[str, Any] | None) -> str:
    """One line: ``plan <digest>: 2x2x2 mm, 128x128x128, RAS, window [-1024, 150] HU, crop + 10 mm, classical``."""
    if plan is None:
        return "no preprocessing plan"
    s = plan.get("settings", {})

    def x(v):
        return "x".join(f"{float(a):g}" for a in v) if isinstance(v, (list, tuple)) else str(v)

    masker = dict(s.get("masker") or {})
    name = masker.pop("name", "?")
    extra = ",".join(f"{k}={v}" for k, v in sorted(masker.items()) if k != "weights")
    lv = s.get("lung_volume_range_l")
    return (f"plan {plan.get('digest')}: spacing {x(s.get('spacing'))} mm, size {x(s.get('size'))}, "
            f"{plan.get('orientation', 'RAS')}, window [{x(s.get('window')).replace('x', ', ')}] HU, "
            f"{'crop + ' + format(float(s.get('margin_mm', 0)), 'g') + ' mm margin' if s.get('crop', True) else 'no crop'}, "
            f"lung masker {name}{'(' + extra + ')' if extra else ''}, lung volume "
            f"{'any' if lv is None else x(lv).replace('x', '-') + ' L'}, pipeline v{s.get('pipeline_version')}"
            + (f" (survival3d {plan['package_version']})" if plan.get("package_version") else ""))


def settings_from_plan(plan: Mapping[str, Any]):
    """The :class:`~survival3d.data.preprocess.PreprocessSettings` of a plan (its digest must reproduce)."""
    from survival3d.data.preprocess import PreprocessSettings

    s = dict(plan["settings"])
    s.pop("pipeline_version", None)
    settings = PreprocessSettings(**s)
    return settings


def check_same_plan(model_plan: Mapping[str, Any] | None, input_plan: Mapping[str, Any], *, path=None,
                    model: str = "the model") -> None:
    """Refuse input preprocessed with another plan than the model's, naming both."""
    if model_plan is None:
        raise InputError(f"{model} has no preprocessing plan (trained on in-memory or non-preprocessed data) but this "
                         f"input was preprocessed with {describe_plan(input_plan)}.", path=path, field="image")
    if model_plan.get("digest") != input_plan.get("digest"):
        raise InputError(f"input preprocessed with {describe_plan(input_plan)}; {model} was trained with "
                         f"{describe_plan(model_plan)}. Give the raw CT instead (predict preprocesses it with the "
                         f"model's plan).", path=path, field="image")
