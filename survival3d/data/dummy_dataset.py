"""The in-memory dummy dataset: :func:`~survival3d.data.dummy.generate_case` behind a MONAI ``Dataset``.

A module of its own because importing MONAI is slow: the CLI and the writer's worker processes do not need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Optional

from monai.data import Dataset
from monai.transforms import apply_transform

from survival3d.data.dummy import SpecLike, as_spec, case_scalars, check_params, generate_case, sample_case
from survival3d.errors import ConfigError

__all__ = ["DummyDataset"]


class DummyDataset(Dataset):
    """An in-memory dummy dataset (nothing written to disk) usable wherever a MONAI ``Dataset`` is.

    Item ``i`` is :func:`generate_case` of ``indices[i]`` (default ``range(n)``) with keys whose value is None
    dropped (so the default collate works), passed through ``transform`` when given. Arrays have no channel
    axis: add one with e.g. ``EnsureChannelFirstd(keys, channel_dim="no_channel")``.

    Args:
        spec: a :class:`~survival3d.data.dummy_spec.DummySpec` or a level (None: the defaults); ``fields``
            (``level``, ``n``, ``size``, ``seed``, ...) override its values. ``n`` is ignored when ``indices`` is
            given.
        indices: explicit case indices, e.g. ``range(1000, 1200)`` for a held-out set from the same generator.
        transform: a MONAI transform applied to each item.
        cache: keep generated cases in memory (trades memory for speed across epochs).

    Example::

        DummyDataset(level=1, n=96, size=32, seed=0)
    """

    def __init__(
        self,
        spec: Optional[SpecLike] = None,
        *,
        indices: Optional[Sequence[int]] = None,
        transform=None,
        cache: bool = False,
        **fields: Any,
    ):
        spec = as_spec(spec, **fields)
        indices = list(range(spec.n)) if indices is None else [int(i) for i in indices]
        self.spec = replace(spec, n=max(len(indices), 1))
        self.level = check_params(self.spec)
        if not indices or min(indices) < 0:
            raise ConfigError(f"indices must be a non-empty list of non-negative integers, got {indices[:5]}.")
        self.cache = cache
        self._cache: dict[int, dict] = {}
        super().__init__(data=indices, transform=transform)

    def case(self, i: int) -> dict[str, Any]:
        """The untransformed case at position ``i``."""
        index = self.data[i]
        if index in self._cache:
            return self._cache[index]
        case = {k: v for k, v in generate_case(self.spec, index).items() if v is not None}
        if self.cache:
            self._cache[index] = case
        return case

    def _transform(self, index: int):
        item = dict(self.case(index))
        return apply_transform(self.transform, item) if self.transform is not None else item

    def table(self):
        """The cases' scalar columns (id, time, event, expected_time, counts, covariates) without rendering voxels,
        e.g. for stratified splits or an oracle C-index."""
        import pandas as pd

        return pd.DataFrame([case_scalars(sample_case(self.spec, i), self.level) for i in self.data])
