import numpy as np
import pytest
import torch

from survival3d.data.covariates import UNKNOWN, CovariateEncoder
from survival3d.errors import InputError


def _records(rng, n, levels=("F", "M")):
    return [{"id": f"c{i}", "age": float(rng.normal(60, 10)), "bmi": float(rng.normal(25, 4)),
             "sex": str(rng.choice(levels)), "smoking": int(rng.integers(0, 3))} for i in range(n)]


def test_standardisation_uses_training_statistics(rng):
    train, val = _records(rng, 40), _records(rng, 10)
    for r in val:
        r["age"] += 30.0  # a shifted population: must not change the encoder
    enc = CovariateEncoder(numeric=["age", "bmi"], categorical=["sex"]).fit(train)
    ages = np.array([r["age"] for r in train])
    np.testing.assert_allclose(enc.mean[0], ages.mean(), rtol=1e-12)
    np.testing.assert_allclose(enc.std[0], ages.std(ddof=1), rtol=1e-12)
    num = np.stack([enc.transform(r)[0] for r in val])
    expected = (np.array([r["age"] for r in val]) - ages.mean()) / ages.std(ddof=1)
    np.testing.assert_allclose(num[:, 0], expected, rtol=1e-5)
    train_num = np.stack([enc.transform(r)[0] for r in train])
    np.testing.assert_allclose(train_num.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_num.std(0, ddof=1), 1.0, atol=1e-5)


def test_unknown_and_missing_categories_map_to_slot_zero(rng):
    enc = CovariateEncoder(categorical=["sex", "smoking"]).fit(_records(rng, 30))
    assert enc.spec.cardinalities == [len(enc.levels[0]) + 1, len(enc.levels[1]) + 1]
    assert enc.spec.num_numeric == 0
    _, cat = enc.transform({"id": "x", "sex": "other", "smoking": 7})
    assert cat.tolist() == [0, 0] and cat.dtype == np.int64
    _, cat = enc.transform({"id": "y", "sex": None, "smoking": float("nan")})
    assert cat.tolist() == [0, 0]
    _, cat = enc.transform({"id": "z", "sex": "M", "smoking": 2.0})  # 2.0 from a CSV is level "2"
    assert enc.decode_category("sex", int(cat[0])) == "M" and enc.decode_category("smoking", int(cat[1])) == "2"
    assert enc.decode_category("sex", 0) == UNKNOWN


def test_missing_numeric_value_is_imputed_with_the_training_mean(rng):
    enc = CovariateEncoder(numeric=["age"]).fit(_records(rng, 20))
    num, _ = enc.transform({"id": "m", "age": None})
    assert num.tolist() == [0.0]


def test_state_round_trip_is_exact_and_weights_only_loadable(rng, tmp_path):
    recs = _records(rng, 25)
    enc = CovariateEncoder(numeric=["age", "bmi"], categorical=["sex", "smoking"]).fit(recs)
    torch.save({"enc": enc.state_dict()}, tmp_path / "s.pt")
    back = CovariateEncoder.from_state(torch.load(tmp_path / "s.pt", weights_only=True)["enc"])
    for r in _records(rng, 10, levels=("F", "M", "X")):
        a, b = enc.transform(r), back.transform(r)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert back.spec == enc.spec


def test_nested_covariates_and_constant_column(rng):
    recs = [{"id": str(i), "covariates": {"age": 50.0}} for i in range(5)]
    enc = CovariateEncoder(numeric=["age"]).fit(recs)
    assert enc.std[0] == 1.0 and enc.transform(recs[0])[0].tolist() == [0.0]


def test_bad_input():
    with pytest.raises(ValueError, match="both numeric and categorical"):
        CovariateEncoder(numeric=["a"], categorical=["a"])
    with pytest.raises(InputError, match=r"manifest.csv \[age\].*no covariate column"):
        CovariateEncoder(numeric=["age"]).fit([{"id": "p1"}], source="manifest.csv")
    with pytest.raises(InputError, match=r"\[age\].*not a number"):
        CovariateEncoder(numeric=["age"]).fit([{"id": "p1", "age": "old"}])
    with pytest.raises(InputError, match="no value in the training split"):
        CovariateEncoder(numeric=["age"]).fit([{"id": "p1", "age": None}])
    with pytest.raises(RuntimeError, match="before fit"):
        CovariateEncoder(numeric=["age"]).transform({"age": 1})
