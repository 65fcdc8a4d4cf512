"""The parameters of a synthetic dummy dataset, declared once (stdlib only, so the config schema can import it).

:class:`DummySpec` is the ``data.dummy`` config section, what the generator, the writer and the in-memory dataset of
:mod:`survival3d.data.dummy` take, and the options of ``run.py dummy``. Validation lives with the levels
(:func:`survival3d.data.dummy.check_params`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

__all__ = ["DummySpec", "CASE_FIELDS"]


@dataclass
class DummySpec:
    """Which dummy cases to generate (see docs/dummy.md). ``metadata["help"]`` is each field's one-line help."""

    level: Union[int, str] = field(default=1, metadata={"help": "dummy level 1-6, or ct1-ct3 (real anatomy)"})
    n: int = field(default=96, metadata={"help": "number of cases"})
    size: int = field(default=32, metadata={"help": "volume edge in voxels"})
    seed: int = field(default=0, metadata={"help": "random seed (a case depends only on level, index and seed)"})
    feat_frac: float = field(default=0.5, metadata={"help": "fraction of scans with a lesion"})
    censor_frac: Optional[float] = field(
        default=None, metadata={"help": "fraction of right-censored cases (unset: the level's, 0.3; 0.6 for dummy6)"}
    )
    spacing: float = field(default=1.5, metadata={"help": "isotropic voxel spacing in mm"})
    tmax: int = field(default=100, metadata={"help": "times are clipped to [1, tmax]"})
    backgrounds: Optional[str] = field(
        default=None, metadata={"help": "ct1-ct3: 'samples' (default: the fetched lung1/lung2) or a folder of chest CTs"}
    )

    def case_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``generate_case(level, index, **kwargs)``: every field but ``level`` and ``n``
        (``backgrounds`` only when set: the sphere levels do not take it)."""
        out = {name: getattr(self, name) for name in CASE_FIELDS}
        if out["backgrounds"] is None:
            del out["backgrounds"]
        return out

    @classmethod
    def from_section(cls, section: Any) -> DummySpec:
        """A spec from a ``data.dummy`` section: a DummySpec, a DictConfig or a mapping (missing keys: defaults)."""
        if isinstance(section, cls):
            return section
        if not (isinstance(section, Mapping) or hasattr(section, "keys")):
            raise TypeError(f"expected a DummySpec or a mapping for data.dummy, got {type(section).__name__}.")
        keys = set(section.keys())
        return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls) if f.name in keys})


CASE_FIELDS = tuple(f.name for f in dataclasses.fields(DummySpec) if f.name not in ("level", "n"))
