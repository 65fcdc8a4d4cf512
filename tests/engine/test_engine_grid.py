"""survival3d.engine.grid.run_grid: resume, result rows, and the error policy."""

import json

import pytest

from survival3d.engine.grid import GridRun, run_grid
from survival3d.errors import ConfigError


def _train(calls):
    def train(cfg, run_dir):
        calls.append(run_dir.name)
        if cfg == "boom":
            raise RuntimeError("diverged")
        if cfg == "user":
            raise ConfigError("bad key")
        result = {"score": cfg, "seed": -1}  # a result key named like a factor: the factor wins
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "r.json").write_text(json.dumps(result))
        return result
    return train


def test_skips_finished_runs_and_returns_rows_in_grid_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "r.json").write_text(json.dumps({"score": 9}))
    runs = [GridRun("a", {"seed": 0}, 1), GridRun("b", {"seed": 1}, 2), GridRun("c", {"seed": 2}, 3)]
    calls = []
    rows, failed = run_grid(runs, tmp_path, train=_train(calls), result_file="r.json")
    assert calls == ["a", "c"] and failed == []
    assert rows == [{"run_id": "a", "seed": 0, "score": 1}, {"run_id": "b", "seed": 1, "score": 9},
                    {"run_id": "c", "seed": 2, "score": 3}]
    calls.clear()
    rows2, _ = run_grid(runs, tmp_path, train=_train(calls), result_file="r.json")
    assert calls == [] and [r["score"] for r in rows2] == [1, 9, 3]
    rows3, _ = run_grid(runs, tmp_path, train=_train(calls), result_file="r.json", is_done=lambda d, c: False)
    assert calls == ["a", "b", "c"] and rows3[1]["score"] == 2


def test_error_policy(tmp_path):
    runs = [GridRun("a", {}, "boom"), GridRun("b", {}, 5)]
    calls = []
    rows, failed = run_grid(runs, tmp_path, train=_train(calls), result_file="r.json", keep_going=True)
    assert failed == ["a"] and [r["run_id"] for r in rows] == ["b"]
    with pytest.raises(RuntimeError, match="diverged"):
        run_grid(runs, tmp_path / "x", train=_train([]), result_file="r.json", keep_going=False)
    calls = []
    with pytest.raises(ConfigError):  # user errors stop the grid at once, keep_going or not
        run_grid([GridRun("u", {}, "user"), GridRun("v", {}, 1)], tmp_path / "y", train=_train(calls),
                 result_file="r.json", keep_going=True)
    assert calls == ["u"]
    with pytest.raises(ValueError, match="unique"):
        run_grid([GridRun("a"), GridRun("a")], tmp_path, train=_train([]), result_file="r.json")
