"""survival3d.bench.study: the variant × seed study driver (the CLI replaced by a fake that writes run outputs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from survival3d.bench import study
from survival3d.config import ExperimentConfig, load_config, save_config


def _fake_cli(values: dict, calls: list):
    """A stand-in for the CLI subprocesses: writes the files each command leaves behind, with numbers from
    ``values[(variant, seed)]``."""

    def run(cmd, log):
        calls.append(cmd[3:])
        sub = cmd[3]
        if sub == "dummy":
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "manifest.csv").write_text("id,image,time,event\n")
            return
        if sub == "train":
            over = dict(a.split("=", 1) for a in cmd if "=" in a and not a.startswith("-"))
            run_dir = Path(over["out_dir"]) / over["name"]
            variant, seed = over["name"].rsplit("_s", 1)
            v = values[(variant, int(seed))]
            run_dir.mkdir(parents=True)
            cfg = load_config(cmd[cmd.index("--config") + 1], cmd[cmd.index("--config") + 2:], schema=ExperimentConfig)
            save_config(cfg, run_dir / "config.yaml")  # as train does: the resolved config
            pd.DataFrame({"epoch": [1, 2], "epoch_time_s": [1.5, 2.5], "c_index": [0.5, v["c"]],
                          "c_index_oracle": [0.8, 0.8], "p_lesion": [0.1, v["p"]],
                          "p_distractor": [np.nan, np.nan]}).to_csv(run_dir / "metrics.csv", index=False)
            (run_dir / "final_metrics.json").write_text("{}")
            return
        run_dir = Path(cmd[cmd.index("--checkpoint") + 1])
        variant, seed = run_dir.name.rsplit("_s", 1)
        v = values[(variant, int(seed))]
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True)
        if sub == "evaluate":
            (out / "metrics.json").write_text(json.dumps({"c_index": v["fc"], "c_index_oracle": 0.78}))
        else:  # explain: two lesion cases and one without a lesion (NaN scores, left out)
            loc = pd.DataFrame({"case_id": ["a", "b", "c"], "method": ["head_grid"] * 3,
                                "pointing_game": [1.0, v["pg"], np.nan], "energy_pg": [0.9, 0.7, np.nan],
                                "energy_pg_cubelet": [1.0, 1.0, np.nan]})
            if "pc" in v:  # files written before session 17 have no pointing_cubelet column
                loc["pointing_cubelet"] = [1.0, v["pc"], np.nan]
            loc.to_csv(out / "localisation.csv", index=False)

    return run


def test_study_table_matches_the_runs(tmp_path, monkeypatch):
    rng = np.random.default_rng()
    values = {(v, s): {"c": rng.uniform(0.6, 0.9), "p": rng.uniform(), "fc": rng.uniform(0.6, 0.9),
                       "pg": float(rng.integers(0, 2))}
              for v in ("base", "var36") for s in (0, 1, 2)}
    for s in (0, 1, 2):  # var36's explain files carry pointing_cubelet, base's are of the older format
        values[("var36", s)]["pc"] = float(rng.integers(0, 2))
    calls: list = []
    monkeypatch.setattr(study, "_run", _fake_cli(values, calls))
    spec = {"config": "cfg.yaml", "out": str(tmp_path / "out"), "seeds": [0, 1, 2],
            "seed_keys": ["train.seed", "data.dummy.seed"], "overrides": ["train.epochs=2"],
            "variants": {"base": [], "var36": ["loss.var_init=36"]},
            "fresh": {"level": 1, "n": 10, "size": 16, "seed": 9}}
    (tmp_path / "cfg.yaml").write_text("base: base.yaml\n")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert study.main([str(path), "--jobs", "2"]) == 0
    table = pd.read_csv(tmp_path / "out" / "study.csv")
    assert len(table) == 6
    for (v, s), val in values.items():
        row = table[(table.variant == v) & (table.seed == s)].iloc[0]
        assert row.val_c_index == pytest.approx(val["c"])
        assert row.val_gap == pytest.approx(val["c"] - 0.8)
        assert row.val_p_lesion == pytest.approx(val["p"])
        assert row.fresh_gap == pytest.approx(val["fc"] - 0.78)
        assert row.pointing_game == pytest.approx((1.0 + val["pg"]) / 2)
        assert row.energy_pg == pytest.approx(0.8)
        if "pc" in val:
            assert row.pointing_cubelet == pytest.approx((1.0 + val["pc"]) / 2)
        else:
            assert np.isnan(row.pointing_cubelet)
        assert row.train_s == pytest.approx(4.0)
    train = [c for c in calls if c[0] == "train"]
    assert len(train) == 6
    for c in train:  # each seed goes to every seed key, after the variant's overrides
        seed = next(a for a in c if a.startswith("name=")).rsplit("_s", 1)[1]
        assert c[-2:] == [f"train.seed={seed}", f"data.dummy.seed={seed}"]
    assert any("loss.var_init=36" in c and "data.dummy.seed=2" in c and "train.epochs=2" in c for c in train)
    summary = (tmp_path / "out" / "summary.md").read_text()
    base = [values[("base", s)]["c"] for s in range(3)]
    assert f"{np.mean(base):.3f} ± {np.std(base, ddof=1):.3f}" in summary.splitlines()[2]

    # a second call trains nothing (every result exists); --only keeps the other variants' rows
    calls.clear()
    assert study.main([str(path), "--only", "var36", "--seeds", "1"]) == 0
    assert calls == []
    again = pd.read_csv(tmp_path / "out" / "study.csv")
    pd.testing.assert_frame_equal(again[table.columns], table)


def test_a_run_trained_with_another_config_is_not_reused(tmp_path, monkeypatch, capsys):
    """A finished run is reused only while the study still asks for it: editing the shipped config (or a variant's
    overrides) after the run was trained reports the run as FAILED with the keys that differ, and trains nothing;
    pinning the old value in the variant makes the run valid again."""
    rng = np.random.default_rng()
    values = {("a", s): {"c": rng.uniform(0.6, 0.9), "p": rng.uniform(), "fc": 0.7, "pg": 1.0} for s in (0, 1)}
    calls: list = []
    monkeypatch.setattr(study, "_run", _fake_cli(values, calls))
    beta = float(rng.uniform(1, 9))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"base: base.yaml\nhead: {{beta_init: {beta}}}\n")
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({"config": "cfg.yaml", "out": str(tmp_path / "o"), "seeds": [0, 1],
                                    "variants": {"a": ["train.epochs=3"]}}))
    assert study.main([str(spec)]) == 0 and len(calls) == 2
    first = pd.read_csv(tmp_path / "o" / "study.csv")
    assert study.stale_keys(tmp_path / "o" / "runs" / "a_s1", cfg, ["train.epochs=3", "train.seed=1"]) == []

    calls.clear()
    cfg.write_text(f"base: base.yaml\nhead: {{beta_init: {beta + 1}}}\n")  # the shipped config moves on
    capsys.readouterr()
    assert study.main([str(spec)]) == 1
    out = capsys.readouterr().out
    assert calls == []
    for s in (0, 1):
        assert f"a_s{s}: FAILED: {tmp_path / 'o' / 'runs' / f'a_s{s}'} was trained with a different config " \
               f"(head.beta_init: {beta!r} -> {beta + 1!r})" in out
    spec.write_text(yaml.safe_dump({"config": "cfg.yaml", "out": str(tmp_path / "o"), "seeds": [0, 1],
                                    "variants": {"a": ["train.epochs=4"]}}))  # and a variant's overrides change
    cfg.write_text(f"base: base.yaml\nhead: {{beta_init: {beta}}}\n")
    assert study.main([str(spec), "--seeds", "0"]) == 1
    assert "(train.epochs: 3 -> 4)" in capsys.readouterr().out

    spec.write_text(yaml.safe_dump({"config": "cfg.yaml", "out": str(tmp_path / "o"), "seeds": [0, 1],
                                    "variants": {"a": ["train.epochs=3", f"head.beta_init={beta}"]}}))
    cfg.write_text(f"base: base.yaml\nhead: {{beta_init: {beta + 1}}}\n")
    assert study.main([str(spec)]) == 0 and calls == []  # pinned: the runs are reused, the table is unchanged
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "o" / "study.csv")[first.columns], first)

    (tmp_path / "o" / "runs" / "a_s1" / "config.yaml").write_text("data: [unclosed\n")  # a damaged run folder
    capsys.readouterr()
    assert study.main([str(spec), "--seeds", "1"]) == 1 and calls == []
    assert "a_s1: FAILED: " in (out := capsys.readouterr().out) and "config.yaml: cannot read the run's config" in out


def test_study_reports_bad_spec_and_failed_runs(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("config: x.yaml\n")
    with pytest.raises(SystemExit) as exc:
        study.main([str(bad)])
    assert exc.value.code == 2
    assert "bad.yaml: missing field(s) out, variants" in capsys.readouterr().err
    for name, text in (("missing.yaml", None), ("broken.yaml", "variants: [a\n")):
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit) as exc:
            study.main([str(tmp_path / name)])
        assert exc.value.code == 2
        assert f"{name}: cannot read the study file" in capsys.readouterr().err

    def failing(cmd, log):
        raise RuntimeError(f"{cmd[3]} exited 1; see {log}")

    monkeypatch.setattr(study, "_run", failing)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"config": "c.yaml", "out": str(tmp_path / "o"), "variants": {"a": []}}))
    assert study.main([str(spec)]) == 1
    assert "a_s0: FAILED: train exited 1" in capsys.readouterr().out


def test_two_processes_merging_rows_keep_each_others(tmp_path, rng):
    """merge_rows under out/.lock: writers that merge at the same moment (threads with their own flock here, as two
    study processes would) keep every row; a row re-run replaces the old one; summary.md follows the table."""
    import threading

    variants = [f"v{i}" for i in range(8)]
    values = {v: rng.normal(size=2) for v in variants}
    start = threading.Barrier(len(variants))

    def write(v):
        start.wait()
        study.merge_rows(tmp_path, pd.DataFrame({"variant": [v, v], "seed": [0, 1], "val_gap": values[v]}), variants)

    threads = [threading.Thread(target=write, args=(v,)) for v in variants]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    table = pd.read_csv(tmp_path / "study.csv")
    assert list(table["variant"]) == [v for v in variants for _ in range(2)] and list(table["seed"]) == [0, 1] * 8
    np.testing.assert_allclose(table["val_gap"], np.concatenate([values[v] for v in variants]))
    study.merge_rows(tmp_path, pd.DataFrame({"variant": ["v3"], "seed": [1], "val_gap": [9.0]}), variants)
    table = pd.read_csv(tmp_path / "study.csv")
    assert len(table) == 16 and table.loc[(table.variant == "v3") & (table.seed == 1), "val_gap"].item() == 9.0
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("\n| v") == 8 and "val_gap" in summary
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_study_processes_started_together_generate_the_fresh_cases_once(tmp_path, monkeypatch):
    """make_fresh under out/.lock: of several study processes started at the same moment (threads with their own
    flock here) one runs ``run.py dummy``, the others wait and find its manifest; a later call generates nothing."""
    import threading
    import time

    calls = []

    def fake_run(cmd, log):  # a slow generator that writes the manifest last, as ``run.py dummy`` does
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        time.sleep(0.3)
        (out / "manifest.csv").write_text("id\n")

    monkeypatch.setattr(study, "_run", fake_run)
    (tmp_path / "logs").mkdir()
    fresh = {"level": "dummy1", "n": 4, "size": 32, "seed": 9001}
    start = threading.Barrier(4)
    got = []

    def go():
        start.wait()
        got.append(study.make_fresh(tmp_path, fresh))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and "--seed" in calls[0] and calls[0][calls[0].index("--seed") + 1] == "9001"
    assert got == [tmp_path / "fresh" / "manifest.csv"] * 4
    study.make_fresh(tmp_path, fresh)
    assert len(calls) == 1


STUDIES = sorted((Path(__file__).resolve().parents[2] / "configs" / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_shipped_study_variants_load(path):
    """Every variant of every shipped study file is a valid set of overrides of its config (a YAML slip such as an
    unquoted ``key=[96]`` inside the variant's list, or a renamed key, fails here instead of in the study's run)."""
    spec = yaml.safe_load(path.read_text())
    config = (path.parent / spec["config"]).resolve()
    assert config.is_file(), spec["config"]
    seeds = [f"{k}=0" for k in spec.get("seed_keys", ["train.seed"])]
    assert spec["variants"]
    for name, overrides in spec["variants"].items():
        assert all(isinstance(o, str) and "=" in o for o in overrides or []), (name, overrides)
        cfg = load_config(config, [*spec.get("overrides", []), *(overrides or []), *seeds], schema=ExperimentConfig)
        final = dict(o.split("=", 1) for o in overrides or [])  # a key set twice: the later value wins
        for key, value in final.items():  # each override took effect: the resolved config holds the value it sets
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert str(node).replace(" ", "") == str(yaml.safe_load(value)).replace(" ", "") or \
                node == yaml.safe_load(value), (name, key, value, node)
