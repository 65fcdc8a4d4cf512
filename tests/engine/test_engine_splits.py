import pytest

from survival3d.data.splits import kfold_splits, train_val_split


def _data(rng, n=60, per_patient=1):
    patients = [f"p{i}" for i in range(n)]
    ev = {p: int(rng.random() < 0.6) for p in patients}
    ids, events, groups = [], [], []
    for p in patients:
        for s in range(per_patient):
            ids.append(f"{p}_scan{s}")
            events.append(ev[p])
            groups.append(p)
    return ids, events, groups


def test_single_split_is_patient_level_stratified_and_seeded(rng):
    ids, events, groups = _data(rng, 50, per_patient=3)
    train, val = train_val_split(ids, events, val_frac=0.3, seed=4, groups=groups)
    assert sorted(train + val) == sorted(ids) and not set(train) & set(val)
    g = dict(zip(ids, groups))
    assert not {g[i] for i in train} & {g[i] for i in val}  # no patient on both sides
    ev = dict(zip(ids, events))
    n_pat_events = sum(ev[f"p{i}_scan0"] for i in range(50))
    val_pat_events = sum(ev[i] for i in val) // 3
    assert val_pat_events == round(0.3 * n_pat_events)  # per-stratum rounding
    assert len(val) // 3 == round(0.3 * n_pat_events) + round(0.3 * (50 - n_pat_events))
    assert (train, val) == train_val_split(ids, events, val_frac=0.3, seed=4, groups=groups)
    assert val != train_val_split(ids, events, val_frac=0.3, seed=5, groups=groups)[1]


def test_kfold_disjoint_covering_and_stratified(rng):
    ids, events, groups = _data(rng, 53, per_patient=2)
    folds = kfold_splits(ids, events, folds=5, seed=1, groups=groups)
    vals = [v for _, v in folds]
    assert sorted(i for v in vals for i in v) == sorted(ids)
    for k, (train, val) in enumerate(folds):
        assert not set(train) & set(val) and sorted(train + val) == sorted(ids)
        g = dict(zip(ids, groups))
        assert not {g[i] for i in train} & {g[i] for i in val}
    ev = dict(zip(ids, events))
    per_fold_events = [sum(ev[i] for i in v) // 2 for v in vals]
    assert max(per_fold_events) - min(per_fold_events) <= 1
    sizes = [len(v) // 2 for v in vals]
    assert max(sizes) - min(sizes) <= 1


def test_split_errors():
    with pytest.raises(ValueError, match="val_frac"):
        train_val_split(["a", "b"], [0, 1], val_frac=1.0)
    with pytest.raises(ValueError, match="unique"):
        train_val_split(["a", "a"], [0, 1], val_frac=0.5)
    with pytest.raises(ValueError, match="cannot make 5 folds from 3"):
        kfold_splits(["a", "b", "c"], [0, 1, 1], folds=5)
    with pytest.raises(ValueError, match="folds >= 2"):
        kfold_splits(["a", "b", "c"], [0, 1, 1], folds=1)
