"""The in-memory dummy dataset: :func:`~survival3d.data.dummy.generate_case` behind a MONAI ``Dataset``.

Importable as ``survival3d.data.dummy.DummyDataset`` (loaded lazily there, because importing MONAI is slow).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

from monai.data import Dataset
from monai.transforms import apply_transform

from survival3d.data.dummy import case_scalars, check_params, generate_case, sample_case
from survival3d.errors import ConfigError

__all__ = ["DummyDataset"]


class DummyDataset(Dataset):
    """An in-memory dummy dataset (nothing written to disk) usable wherever a MONAI ``Dataset`` is.

    Item ``i`` is :func:`generate_case` of ``indices[i]`` (default ``range(n)``) with keys whose value is None
    dropped (so the default collate works), passed through ``transform`` when given. Arrays have no channel
    axis: add one with e.g. ``EnsureChannelFirstd(keys, channel_dim="no_channel")``.

    Args:
        level: 1..6 or "dummyN".
        n: number of cases (ignored when ``indices`` is given).
        size, seed, feat_frac, censor_frac, spacing, tmax: see :func:`generate_case`.
        indices: explicit case indices, e.g. ``range(1000, 1200)`` for a held-out set from the same generator.
        transform: a MONAI transform applied to each item.
        cache: keep generated cases in memory (trades memory for speed across epochs).
    """

    def __init__(
        self,
        level: Union[int, str] = 1,
        n: int = 96,
        size: int = 32,
        seed: int = 0,
        *,
        feat_frac: float = 0.5,
        censor_frac: Optional[float] = None,
        spacing: float = 1.5,
        tmax: float = 100,
        indices: Optional[Sequence[int]] = None,
        transform=None,
        cache: bool = False,
    ):
        indices = list(range(n)) if indices is None else [int(i) for i in indices]
        self.level = check_params(
            level,
            n=max(len(indices), 1),
            size=size,
            seed=seed,
            feat_frac=feat_frac,
            censor_frac=censor_frac,
            spacing=spacing,
            tmax=tmax,
        )
        if not indices or min(indices) < 0:
            raise ConfigError(f"indices must be a non-empty list of non-negative integers, got {indices[:5]}.")
        self.kwargs = dict(
            size=size, seed=seed, feat_frac=feat_frac, censor_frac=censor_frac, spacing=spacing, tmax=tmax
        )
        self.cache = cache
        self._cache: dict[int, dict] = {}
        super().__init__(data=indices, transform=transform)

    def case(self, i: int) -> dict[str, Any]:
        """The untransformed case at position ``i``."""
        index = self.data[i]
        if index in self._cache:
            return self._cache[index]
        case = {k: v for k, v in generate_case(self.level, index, **self.kwargs).items() if v is not None}
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

        kw = {k: self.kwargs[k] for k in ("seed", "feat_frac", "censor_frac", "tmax")}
        return pd.DataFrame([case_scalars(sample_case(self.level, i, **kw), self.level) for i in self.data])
