"""``data.splits``: training uses the folds of a splits file written by make_splits.py (patient-level, stratified)."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from survival3d.config import ExperimentConfig, load_config
from survival3d.data.datasets import Cases
from survival3d.engine.experiment import make_splits
from survival3d.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[2]


def _cases(rng, n=30):
    records = [{"id": f"c{i:03d}", "image": None, "time": float(rng.uniform(1, 50)), "event": int(rng.random() < 0.6)}
               for i in range(n)]
    return Cases(records, mask_keys=(), load=True, source="test")


def _manifest(cases, path):
    pd.DataFrame([{"id": r["id"], "image": "x.nii.gz", "time": r["time"], "event": r["event"]}
                  for r in cases.records]).to_csv(path, index=False)


def _cfg(*overrides):
    return load_config(None, list(overrides), schema=ExperimentConfig)


def _make_splits_csv(cases, tmp_path, folds=5, seed=0):
    _manifest(cases, tmp_path / "manifest.csv")
    out = tmp_path / "splits.csv"
    rc = subprocess.run([sys.executable, str(ROOT / "data_prep" / "make_splits.py"), "--manifest",
                         str(tmp_path / "manifest.csv"), "--folds", str(folds), "--seed", str(seed), "--out", str(out)],
                        capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    return out


def test_training_uses_the_file_folds(rng, tmp_path):
    cases = _cases(rng)
    path = _make_splits_csv(cases, tmp_path, seed=int(rng.integers(1000)))
    table = pd.read_csv(path, dtype={"id": str})
    splits = make_splits(_cfg(f"data.splits={path}", "cv.folds=5"), cases)
    assert len(splits) == 5
    for k, s in enumerate(splits):
        assert sorted(s["val"]) == sorted(table.loc[table["fold"] == k, "id"])
        assert sorted(s["train"] + s["val"]) == sorted(cases.ids) and not set(s["train"]) & set(s["val"])
    one = make_splits(_cfg(f"data.splits={path}", "cv.folds=1", "cv.fold=3"), cases)
    assert one == [splits[3]]
    # the file differs from what cv.seed would draw, so the file is what is used
    drawn = make_splits(_cfg("cv.folds=5", "cv.seed=12345"), cases)
    assert [sorted(s["val"]) for s in drawn] != [sorted(s["val"]) for s in splits]


@pytest.mark.parametrize("edit, message", [
    (lambda t: pd.concat([t, t.iloc[[0]]]), "duplicate id"),
    (lambda t: pd.concat([t, pd.DataFrame([{"id": "nobody", "fold": 0}])]), "not cases of the data"),
    (lambda t: t.iloc[1:], "not in the splits file"),
    (lambda t: t.assign(fold=t["fold"].astype(float) + 0.5), "non-integer fold"),
])
def test_bad_split_files_are_one_line_errors(rng, tmp_path, edit, message):
    cases = _cases(rng)
    path = _make_splits_csv(cases, tmp_path)
    edit(pd.read_csv(path, dtype={"id": str})).to_csv(path, index=False)
    with pytest.raises(InputError, match=message) as e:
        make_splits(_cfg(f"data.splits={path}", "cv.folds=5"), cases)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_fold_count_must_match(rng, tmp_path):
    cases = _cases(rng)
    path = _make_splits_csv(cases, tmp_path, folds=4)
    with pytest.raises(ConfigError, match="has 4 folds but cv.folds=5"):
        make_splits(_cfg(f"data.splits={path}", "cv.folds=5"), cases)
