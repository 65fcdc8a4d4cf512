import json

import pytest

from survival3d.engine.summary import main, summarise


def test_summary_over_seeds(tmp_path, rng, capsys):
    vals = rng.uniform(0.6, 0.9, 3)
    runs = []
    for k, v in enumerate(vals):
        d = tmp_path / f"run{k}"
        d.mkdir()
        (d / "final_metrics.json").write_text(json.dumps({"c_index": v, "c_index_oracle": 0.78, "mae_censored": None,
                                                          "device": "cpu", "time": 10.0 * k}))
        runs.append(d)
    s = summarise(runs)
    assert s["c_index"]["mean"] == pytest.approx(vals.mean()) and s["c_index"]["sd"] == pytest.approx(vals.std(ddof=1))
    assert "mae_censored" not in s and s["c_index"]["n"] == 3
    assert main([*map(str, runs), "--label", "dummy1", "--header"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("| dummy1 | ") and f"{vals.mean() - 0.78:+.3f}" in out[2]
    assert main([str(tmp_path / "missing")]) == 1
