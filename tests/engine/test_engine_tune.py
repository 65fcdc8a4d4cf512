"""run.py tune: study files, the objective, pruning through the engine callback, a 3-trial study, two worker
processes sharing one SQLite study, and resuming a study after its process was killed."""

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import engine_standins as standins
from survival3d.config import ExperimentConfig, load_config
from survival3d.errors import ConfigError

optuna = pytest.importorskip("optuna")

from survival3d.engine.experiment import run_experiment  # noqa: E402
from survival3d.engine.tune import (PruningCallback, last_epochs_objective, load_study_spec,  # noqa: E402
                                    objective_value, run_study)

ROOT = Path(__file__).parents[2]


def _write_study(tmp_path, *, trials=3, seeds=(0,), pruner=None, space=None, extra_study=None, epochs=2):
    """A tiny experiment config (16^3 dummy1, 24 cases) and a study file over it."""
    overrides = dict(o.split("=", 1) for o in standins.TINY)
    exp = {"name": "tiny", "data": {"source": "dummy", "dummy": {"level": 1, "n": 24, "size": 16},
                                    "image_size": [16, 16, 16], "batch_size": 4, "val_frac": 0.34},
           "optim": {"warmup_epochs": 0}, "train": {"epochs": epochs}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    study = {"name": "tiny", "trials": trials, "seeds": list(seeds), "objective": {"c_index": 1.0},
             "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
             "pruner": pruner or {"name": "none"}, **(extra_study or {})}
    spec = {"config": "exp.yaml", "overrides": [f"{k}={v}" for k, v in overrides.items()], "study": study,
            "space": space or {"optim.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
                               "head.hidden": {"type": "categorical", "choices": [[16], [8, 8]]}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("space, field", [
    ({"optim.lr": {"type": "float", "low": 1.0, "high": 0.5}}, "space.optim.lr"),
    ({"optim.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "space.optim.lr.low"),
    ({"optim.lr": {"type": "flaot", "low": 0.1, "high": 1.0}}, "space.optim.lr.type"),
    ({"optim.lr": {"type": "categorical", "choices": []}}, "space.optim.lr.choices"),
    ({"optim.lr": {"type": "float", "low": 0.1, "high": 1.0, "choices": [1]}}, "space.optim.lr"),
])
def test_bad_search_space_names_file_and_field(tmp_path, space, field):
    path = _write_study(tmp_path, space=space)
    with pytest.raises(ConfigError, match=rf"{path}: '{field}'"):
        load_study_spec(path)


def test_bad_study_settings(tmp_path):
    path = _write_study(tmp_path)
    with pytest.raises(ConfigError, match=r"'study.objective.c_indx'.*Did you mean 'c_index'"):
        load_study_spec(path, overrides=["study.objective={c_indx: 1}"])
    with pytest.raises(ConfigError, match=r"'study.pruner.name'"):
        load_study_spec(path, overrides=["study.pruner={name: hyperband}"])
    with pytest.raises(ConfigError, match=r"'study.trials'"):
        load_study_spec(path, overrides=["study.trials=0"])
    with pytest.raises(ConfigError, match=r"'study.objective_epochs' must be an integer >= 1"):
        load_study_spec(path, overrides=["study.objective_epochs=0"])
    spec = load_study_spec(path, overrides=["study.trials=7", "train.epochs=1"])
    assert spec.trials == 7 and spec.overrides[-1] == "train.epochs=1"


def test_objective_value_weighted_sum(rng):
    m = {"c_index": rng.uniform(0.5, 1), "c_index_oracle": rng.uniform(0.5, 1), "p_lesion": rng.uniform(0, 1),
         "val_loss": rng.uniform(1, 5), "pointing": rng.uniform(0, 1)}
    w = {"c_index_gap": rng.normal(), "p_lesion": rng.normal(), "val_loss": -rng.uniform(), "pointing": rng.normal()}
    ref = (w["c_index_gap"] * (m["c_index"] - m["c_index_oracle"]) + w["p_lesion"] * m["p_lesion"]
           + w["val_loss"] * m["val_loss"] + w["pointing"] * m["pointing"])
    assert objective_value(m, w) == pytest.approx(ref, rel=1e-12)
    assert objective_value({"c_index": {"mean": 0.7, "sd": 0.1}}, {"c_index": 2.0}) == pytest.approx(1.4)
    assert math.isnan(objective_value({"c_index": float("nan")}, {"c_index": 1.0}))
    assert math.isnan(objective_value({}, {"p_lesion": 1.0}))


def test_last_epochs_objective_is_the_mean_over_the_last_validated_epochs(tmp_path, rng):
    n = 9
    rows = pd.DataFrame({"epoch": np.arange(1, n + 1), "train_loss": rng.uniform(1, 3, n),
                         "c_index": rng.uniform(0.5, 1, n), "c_index_oracle": rng.uniform(0.8, 1, n),
                         "p_lesion": rng.uniform(0, 1, n)})
    unvalidated = rng.choice(n, 3, replace=False)  # epochs without a validation pass have empty columns
    rows.loc[unvalidated, ["c_index", "c_index_oracle", "p_lesion"]] = np.nan
    rows.to_csv(tmp_path / "metrics.csv", index=False)
    w = {"c_index_gap": 1.0, "p_lesion": rng.uniform(0.05, 0.5)}
    per_epoch = (rows.c_index - rows.c_index_oracle + w["p_lesion"] * rows.p_lesion).dropna().to_numpy()
    for k in (1, 3, 100):
        assert last_epochs_objective(tmp_path / "metrics.csv", w, k) == pytest.approx(per_epoch[-k:].mean(), rel=1e-12)
    assert math.isnan(last_epochs_objective(tmp_path / "metrics.csv", {"pointing": 1.0}, 3))


class _AlwaysPrune:
    def __init__(self):
        self.reports = []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return True


def test_pruning_callback_stops_the_run_after_the_first_validated_epoch(tiny_cfg, components):
    cfg = tiny_cfg("train.epochs=3")
    trial = _AlwaysPrune()
    with pytest.raises(optuna.TrialPruned):
        run_experiment(cfg, components=components, callbacks=[PruningCallback(trial, {"c_index": 1.0}, offset=10)])
    run = Path(cfg.out_dir) / cfg.name
    rows = pd.read_csv(run / "metrics.csv")
    assert len(rows) == 1 and (run / "checkpoints" / "last.pt").is_file()
    assert trial.reports == [(11, pytest.approx(rows.c_index[0], rel=1e-12))]
    assert not (run / "predictions.csv").exists()


def test_three_trial_study_outputs(tmp_path, components):
    path = _write_study(tmp_path, trials=3, seeds=(0, 1))
    spec = load_study_spec(path)
    out = tmp_path / "out"
    summary = run_study(spec, out, components=components)
    assert summary["complete"] == 3 and summary["pruned"] == 0 and summary["started_here"] == 3
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials.number) == [0, 1, 2] and set(trials.state) == {"COMPLETE"}
    for _, t in trials.iterrows():  # value = mean over seeds of the final C-index in each run folder
        finals = [json.loads((out / "trials" / f"trial{t.number:04d}" / f"seed{s}" / "final_metrics.json").read_text())
                  for s in (0, 1)]
        assert t.value == pytest.approx(np.mean([f["c_index"] for f in finals]), rel=1e-12)
        assert t["user_attrs_seed1_c_index"] == pytest.approx(finals[1]["c_index"], rel=1e-12)
        cfg1 = load_config(out / "trials" / f"trial{t.number:04d}" / "seed1" / "config.yaml", schema=ExperimentConfig)
        assert cfg1.train.seed == 1 and cfg1.optim.lr == pytest.approx(t["params_optim.lr"], rel=1e-12)
    best = trials.loc[trials.value.idxmax()]
    cfg = load_config(out / "best.yaml", schema=ExperimentConfig)
    assert cfg.optim.lr == pytest.approx(best["params_optim.lr"], rel=1e-12) and cfg.name == "tiny_best"
    assert list(cfg.head.hidden) == json.loads(best["params_head.hidden"]) and cfg.logging.wandb is False
    assert json.loads((out / "best.json").read_text())["best_trial"] == int(best.number)
    for png in ("history.png", "intermediate.png", "importance.png"):
        assert (out / png).stat().st_size > 1000, png
    # rerunning the finished study starts nothing
    assert run_study(spec, out, components=components, write_outputs=False)["started_here"] == 0


def test_objective_epochs_averages_each_runs_last_epochs(tmp_path, components):
    path = _write_study(tmp_path, trials=2, extra_study={"objective_epochs": 2}, epochs=3)
    out = tmp_path / "out"
    run_study(load_study_spec(path), out, components=components)
    trials = pd.read_csv(out / "trials.csv")
    for _, t in trials.iterrows():
        run = out / "trials" / f"trial{t.number:04d}" / "seed0"
        c = pd.read_csv(run / "metrics.csv").c_index.to_numpy()
        final = json.loads((run / "final_metrics.json").read_text())["c_index"]
        assert len(c) == 3 and t.value == pytest.approx(c[-2:].mean(), rel=1e-12)
        assert t["user_attrs_seed0_objective_final"] == pytest.approx(final, rel=1e-12)


def test_worker_processes_with_a_fixed_seed_draw_different_trials(tmp_path, components):
    """Two workers of one study (here: two run_study calls, each opening the study afresh like a new process) with
    the study's fixed sampler seed: the second must not repeat the first's parameters (it did before: every process
    built the sampler from the same seed), and a single worker's draws stay reproducible."""
    path = _write_study(tmp_path, trials=2, epochs=1, extra_study={"sampler": {"name": "random", "seed": 3}})
    spec = load_study_spec(path)
    params = []
    for name in ("a", "b"):
        out = tmp_path / name
        for _ in range(2):
            run_study(spec, out, components=components, max_trials=1, write_outputs=False)
        params.append([t.params for t in _load(out)])
    assert params[0][0] != params[0][1]  # worker 2 drew a different point
    assert params[0] == params[1]  # the same study run again: the same draws


def _load(out):
    import optuna

    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}").get_trials()


def _tune_cmd(path, out, *extra):
    return [sys.executable, "run.py", "tune", str(path), "--out", str(out), *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _states(db):
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("select state from trials order by number")]


def test_two_workers_share_one_sqlite_study(tmp_path):
    path = _write_study(tmp_path, trials=4, epochs=1)
    out = tmp_path / "out"
    out.mkdir()
    procs = [subprocess.Popen(_tune_cmd(path, out), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    states = _states(out / "study.db")
    assert 4 <= states.count("COMPLETE") <= 5 and "RUNNING" not in states and "FAIL" not in states  # ≤ workers−1 extra
    trials = pd.read_csv(out / "trials.csv") if (out / "trials.csv").is_file() else None
    assert trials is not None and trials.number.is_unique
    dirs = sorted(p.name for p in (out / "trials").iterdir())
    assert dirs == [f"trial{n:04d}" for n in range(len(states))]  # every trial trained in its own folder


def test_resume_after_kill(tmp_path):
    path = _write_study(tmp_path, trials=3, epochs=2, extra_study={"heartbeat_interval": 1, "grace_period": 3})
    out = tmp_path / "out"
    proc = subprocess.Popen(_tune_cmd(path, out), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    # kill once trial 0 is complete and trial 1 is running with a heartbeat on record (a trial killed between
    # Optuna's ask() and its first heartbeat has none, so nothing can tell it from a live worker's: it stays RUNNING)
    while time.monotonic() < deadline:
        if (out / "study.db").is_file():
            try:
                s = _states(out / "study.db")
                with sqlite3.connect(out / "study.db") as con:
                    beats = con.execute("select count(*) from trial_heartbeats h join trials t using (trial_id) "
                                        "where t.number = 1").fetchone()[0]
            except sqlite3.OperationalError:
                s, beats = [], 0
            if s[:1] == ["COMPLETE"] and "RUNNING" in s[1:] and beats:
                break
        if proc.poll() is not None:
            pytest.fail("the study finished before it could be killed")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _states(out / "study.db")
    assert before[0] == "COMPLETE" and "RUNNING" in before
    with sqlite3.connect(out / "study.db") as con:
        first_complete = con.execute("select datetime_complete from trials where number = 0").fetchone()[0]
    time.sleep(4)  # the killed trial's heartbeat goes stale (grace_period 3 s)
    res = subprocess.run(_tune_cmd(path, out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    after = _states(out / "study.db")
    assert after.count("COMPLETE") + after.count("PRUNED") == 3 and "RUNNING" not in after
    assert after[: len(before)].count("FAIL") == 1  # the killed trial, re-queued with the same parameters
    with sqlite3.connect(out / "study.db") as con:
        assert con.execute("select datetime_complete from trials where number = 0").fetchone()[0] == first_complete
    trials = pd.read_csv(out / "trials.csv")
    failed = trials[trials.state == "FAIL"].iloc[0]
    retry = trials[(trials.number > failed.number) & (trials["params_optim.lr"] == failed["params_optim.lr"])]
    assert len(retry) == 1 and retry.iloc[0].state == "COMPLETE"
    assert "study tiny: 3 complete" in res.stdout


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "tune").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_study_files_load(path):
    spec = load_study_spec(path)
    cfg = load_config(spec.config, spec.overrides, schema=ExperimentConfig)
    for p in spec.space:  # every searched key exists in the experiment config
        node = cfg
        for part in p.key.split("."):
            node = node[part]
