"""Clinical covariates → tensors for FiLM: fitted on the training split only, serialisable into checkpoints.

Numeric columns are standardised with the training split's mean and standard deviation (a missing value becomes
the training mean, i.e. 0 after standardisation). Categorical columns get a level vocabulary from the training split;
index 0 is the 'unknown' slot that takes missing values and levels never seen in training, so a validation or
deployment case with a new level still runs. The encoder's :attr:`spec` is the
:class:`~survival3d.contracts.CovariateSpec` a model is built with.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from survival3d.errors import InputError
from survival3d.contracts import CovariateSpec

__all__ = ["CovariateEncoder", "UNKNOWN"]

UNKNOWN = "<unknown>"


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _category_key(value: Any) -> str | None:
    """Levels are compared as strings (so ``1`` and ``"1"`` from CSV/YAML are the same level)."""
    if _is_missing(value):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value).strip()


def _record_value(record: Mapping[str, Any], column: str) -> Any:
    if column in record:
        return record[column]
    nested = record.get("covariates")
    if isinstance(nested, Mapping) and column in nested:
        return nested[column]
    raise KeyError(column)


class CovariateEncoder:
    """Standardise numeric and index categorical covariates.

    Args:
        numeric: names of numeric columns (``data.covariates.numeric``).
        categorical: names of categorical columns (``data.covariates.categorical``).

    Example::

        enc = CovariateEncoder(numeric=["age"], categorical=["sex"]).fit(train_records)
        cov_num, cov_cat = enc.transform(record)        # float32 (n,), int64 (m,)
        model = build_model(cfg, enc.spec)
        state = enc.state_dict(); CovariateEncoder.from_state(state)
    """

    def __init__(self, numeric: Sequence[str] = (), categorical: Sequence[str] = ()):
        numeric, categorical = [str(c) for c in numeric], [str(c) for c in categorical]
        both = set(numeric) & set(categorical)
        if both:
            raise ValueError(f"covariate columns {sorted(both)} are listed as both numeric and categorical.")
        if len(set(numeric)) != len(numeric) or len(set(categorical)) != len(categorical):
            raise ValueError(f"duplicate covariate columns in numeric={numeric} / categorical={categorical}.")
        self.numeric = numeric
        self.categorical = categorical
        self.mean = np.zeros(len(numeric), dtype=np.float64)
        self.std = np.ones(len(numeric), dtype=np.float64)
        self.levels: list[list[str]] = [[] for _ in categorical]
        self.fitted = not numeric and not categorical

    # ------------------------------------------------------------------ fitting
    def fit(self, records: Iterable[Mapping[str, Any]], *, source: str | None = None) -> CovariateEncoder:
        """Learn mean/sd and level vocabularies from ``records`` (the training split only).

        Raises:
            InputError: a named column is absent, a numeric column holds text, or it has no value at all.
        """
        records = list(records)
        nums = np.full((len(records), len(self.numeric)), np.nan)
        seen: list[set[str]] = [set() for _ in self.categorical]
        for i, rec in enumerate(records):
            for j, col in enumerate(self.numeric):
                nums[i, j] = self._numeric(rec, col, source)
            for j, col in enumerate(self.categorical):
                key = _category_key(self._get(rec, col, source))
                if key is not None:
                    seen[j].add(key)
        for j, col in enumerate(self.numeric):
            values = nums[:, j][~np.isnan(nums[:, j])]
            if values.size == 0:
                raise InputError("numeric covariate has no value in the training split.", path=source, field=col)
            self.mean[j] = values.mean()
            sd = values.std(ddof=1) if values.size > 1 else 0.0
            self.std[j] = sd if sd > 0 else 1.0
        self.levels = [sorted(s) for s in seen]
        self.fitted = True
        return self

    @staticmethod
    def _get(record: Mapping[str, Any], column: str, source: str | None) -> Any:
        try:
            return _record_value(record, column)
        except KeyError:
            rid = record.get("id", "?")
            raise InputError(f"case '{rid}' has no covariate column '{column}'.", path=source, field=column) from None

    def _numeric(self, record: Mapping[str, Any], column: str, source: str | None) -> float:
        value = self._get(record, column, source)
        if _is_missing(value):
            return float("nan")
        try:
            return float(value)
        except (TypeError, ValueError):
            rid = record.get("id", "?")
            raise InputError(f"case '{rid}': numeric covariate is not a number: {value!r}.", path=source, field=column) from None

    # ------------------------------------------------------------------ transform
    @property
    def spec(self) -> CovariateSpec:
        """Shapes for :func:`survival3d.models.build_model`: cardinalities include the unknown slot."""
        return CovariateSpec(num_numeric=len(self.numeric), cardinalities=[len(lv) + 1 for lv in self.levels])

    def transform(self, record: Mapping[str, Any], *, source: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(cov_num float32 (n,), cov_cat int64 (m,))`` for one case."""
        if not self.fitted:
            raise RuntimeError("CovariateEncoder.transform called before fit() / from_state().")
        num = np.zeros(len(self.numeric), dtype=np.float32)
        for j, col in enumerate(self.numeric):
            v = self._numeric(record, col, source)
            num[j] = 0.0 if math.isnan(v) else (v - self.mean[j]) / self.std[j]
        cat = np.zeros(len(self.categorical), dtype=np.int64)
        for j, col in enumerate(self.categorical):
            key = _category_key(self._get(record, col, source))
            lv = self.levels[j]
            cat[j] = lv.index(key) + 1 if key in lv else 0
        return num, cat

    def decode_category(self, column: str, index: int) -> str:
        """The level behind ``index`` of categorical ``column`` (``'<unknown>'`` for slot 0)."""
        lv = self.levels[self.categorical.index(column)]
        return UNKNOWN if index == 0 else lv[index - 1]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain Python types only (safe for ``torch.load(weights_only=True)`` and JSON)."""
        return {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
            "levels": [list(lv) for lv in self.levels],
            "fitted": bool(self.fitted),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CovariateEncoder:
        enc = cls(state["numeric"], state["categorical"])
        enc.mean = np.asarray(state["mean"], dtype=np.float64)
        enc.std = np.asarray(state["std"], dtype=np.float64)
        enc.levels = [list(lv) for lv in state["levels"]]
        enc.fitted = bool(state["fitted"])
        return enc

    def __repr__(self) -> str:
        return f"CovariateEncoder(numeric={self.numeric}, categorical={self.categorical}, levels={self.levels})"
