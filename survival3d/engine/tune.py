"""Hyperparameter search on Optuna: every trial is an ordinary experiment on the one engine
(:func:`~survival3d.engine.experiment.run_experiment`).

A study file (YAML) names the experiment config every trial starts from, the overrides every trial shares, the study
settings and the search space over any config key::

    config: ../dummy1.yaml            # relative to this file, then to configs/
    overrides: [train.epochs=8]       # fixed for every trial
    study:
      name: dummy1
      trials: 20                      # COMPLETE + PRUNED trials the study should reach (over all workers)
      seeds: [0]                      # train.seed of each run of a trial; the objective is their mean
      objective: {c_index: 1.0}       # weighted sum of validation columns, maximised (see OBJECTIVE_TERMS)
      objective_epochs: 1             # the run's objective: mean over its last k validated epochs (1: final model)
      sampler: {name: tpe, seed: 0, n_startup_trials: 5}
      pruner: {name: median, n_startup_trials: 3, n_warmup_steps: 2}    # or successive_halving, none
      storage: null                   # default sqlite:///<out>/study.db; postgresql://user:pw@host/db to share
    space:
      optim.lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}
      model.depth: {type: int, low: 1, high: 3}
      loss.alpha_cens: {type: categorical, choices: [1.0, 5.0, 10.0]}

Each epoch's objective (the same weighted sum over that epoch's validation row) is reported to Optuna by
:class:`PruningCallback`, an engine callback; when the pruner says so the callback raises ``optuna.TrialPruned``
and the trial stops after that epoch's checkpoint. The trial's value is the mean over seeds of the objective of the
final model (``train.final``), or, with ``objective_epochs: k`` > 1, of the mean of the objective over each run's
last k validated epochs (rows of its ``metrics.csv``): a steadier target where the validation C-index swings from
epoch to epoch on a small validation set.

Trials live in ``<out>/trials/trial<NNNN>/seed<s>/`` (ordinary run folders). The study is stored in an RDB:
``sqlite:///<out>/study.db`` by default, so a killed study continues where it stopped (completed and pruned trials
are kept; a trial whose process died is marked failed once its heartbeat is ``grace_period`` seconds stale and
re-queued with the same parameters, resuming its run folders from their ``last.pt``). Several worker processes on
one machine can share the SQLite file; workers on several machines share a server database
(``--storage postgresql://...``).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from survival3d.errors import ConfigError

__all__ = ["StudySpec", "ParamSpec", "load_study_spec", "objective_value", "last_epochs_objective", "PruningCallback",
           "run_study", "trial_overrides", "write_study_outputs", "OBJECTIVE_TERMS"]

log = logging.getLogger(__name__)

#: Validation columns an objective may weight (higher is better for a positive weight; weight a ``min`` metric
#: such as ``val_loss`` negatively), plus ``c_index_gap`` = c_index − c_index_oracle.
OBJECTIVE_TERMS = ("c_index", "c_index_gap", "p_lesion", "p_distractor", "val_loss", "mae_uncensored", "mae_censored",
                   "p_max", "p_entropy", "pointing")

#: Overrides every trial gets on top of the study's (not written into the best config).
TRIAL_MECHANICS = ("logging.wandb=false", "logging.progress=false", "train.overwrite=true")

_STUDY_KEYS = {"name", "trials", "seeds", "objective", "objective_epochs", "sampler", "pruner", "storage",
               "heartbeat_interval", "grace_period"}


@dataclass
class ParamSpec:
    """One searched config key: ``float``/``int`` between ``low`` and ``high`` (``log`` scale or linear, optional
    ``step``), or ``categorical`` over ``choices`` (any YAML values; lists are passed to Optuna as JSON text)."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.key, [_optuna_choice(c) for c in self.choices])


def _optuna_choice(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


@dataclass
class StudySpec:
    """A parsed study file (see the module docstring)."""

    path: Path
    config: Path
    overrides: list[str]
    name: str
    trials: int
    seeds: list[int]
    objective: dict[str, float]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    storage: str | None
    heartbeat_interval: int
    grace_period: int
    space: list[ParamSpec]
    objective_epochs: int = 1


def _err(path: Path, field_: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: '{field_}' {msg}")


def _number(path: Path, key: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise _err(path, f"space.{key}.{name}", f"must be a finite number, got {value!r}.")
    return float(value)


def _parse_param(path: Path, key: str, raw: Any) -> ParamSpec:
    if not isinstance(raw, Mapping) or "type" not in raw:
        raise _err(path, f"space.{key}", "must be a mapping with a 'type' (float, int or categorical).")
    kind = raw["type"]
    allowed = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
               "categorical": {"type", "choices"}}
    if kind not in allowed:
        raise _err(path, f"space.{key}.type", f"must be float, int or categorical, got {kind!r}.")
    extra = set(raw) - allowed[kind]
    if extra:
        raise _err(path, f"space.{key}", f"has unknown fields {sorted(extra)} for type {kind} (allowed: {sorted(allowed[kind])}).")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _err(path, f"space.{key}.choices", "must be a non-empty list.")
        return ParamSpec(key, kind, choices=list(choices))
    for name in ("low", "high"):
        if name not in raw:
            raise _err(path, f"space.{key}.{name}", "is missing.")
    low, high = _number(path, key, "low", raw["low"]), _number(path, key, "high", raw["high"])
    log_ = raw.get("log", False)
    if not isinstance(log_, bool):
        raise _err(path, f"space.{key}.log", f"must be true or false, got {log_!r}.")
    step = None if raw.get("step") is None else _number(path, key, "step", raw["step"])
    if not low < high:
        raise _err(path, f"space.{key}", f"needs low < high, got low {low} and high {high}.")
    if log_ and low <= 0:
        raise _err(path, f"space.{key}.low", f"must be > 0 on a log scale, got {low}.")
    if log_ and step is not None:
        raise _err(path, f"space.{key}.step", "cannot be combined with log: true.")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise _err(path, f"space.{key}", f"int bounds must be whole numbers, got {low} and {high}.")
    return ParamSpec(key, kind, low=low, high=high, log=log_, step=step)


def _objective(path: Path, raw: Any) -> dict[str, float]:
    if isinstance(raw, str):
        raw = {raw: 1.0}
    if not isinstance(raw, Mapping) or not raw:
        raise _err(path, "study.objective", "must be a metric name or a mapping {metric: weight}.")
    out = {}
    for k, w in raw.items():
        if k not in OBJECTIVE_TERMS:
            from survival3d.registry import did_you_mean

            raise _err(path, f"study.objective.{k}", f"is not an objective term.{did_you_mean(str(k), OBJECTIVE_TERMS)} "
                                                     f"Valid: {', '.join(OBJECTIVE_TERMS)}.")
        out[str(k)] = _number(path, f"objective.{k}", "weight", w)
    return out


def load_study_spec(path: str | Path, *, overrides: Sequence[str] = ()) -> StudySpec:
    """Read and check a study file; ``overrides`` (``study.trials=8``-style, or config overrides) change it.

    ``study.<key>=value`` overrides go to the study section; any other ``key=value`` is added to ``overrides``
    (the experiment config every trial shares).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file '{path}' not found.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a study file must hold a mapping at top level.")
    unknown = set(data) - {"config", "overrides", "study", "space"}
    if unknown:
        raise _err(path, sorted(unknown)[0], "is not a study-file key (valid: config, overrides, study, space).")
    study = dict(data.get("study") or {})
    cfg_overrides = [str(o) for o in (data.get("overrides") or [])]
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' must look like key=value (study.trials=8 or train.epochs=4).")
        if key.startswith("study."):
            study[key[len("study."):]] = yaml.safe_load(raw)
        else:
            cfg_overrides.append(item)
    bad = set(study) - _STUDY_KEYS
    if bad:
        raise _err(path, f"study.{sorted(bad)[0]}", f"is not a study setting (valid: {', '.join(sorted(_STUDY_KEYS))}).")
    if "config" not in data:
        raise _err(path, "config", "is missing: name the experiment config every trial starts from.")
    from survival3d.config.loader import _resolve_path

    config = _resolve_path(str(data["config"]), path.resolve().parent)
    space_raw = data.get("space")
    if not isinstance(space_raw, Mapping) or not space_raw:
        raise _err(path, "space", "must map config keys to parameter ranges (at least one).")
    space = [_parse_param(path, str(k), v) for k, v in space_raw.items()]
    trials = study.get("trials", 20)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise _err(path, "study.trials", f"must be an integer >= 1, got {trials!r}.")
    seeds = study.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise _err(path, "study.seeds", f"must be a non-empty list of integers, got {seeds!r}.")
    sampler = study.get("sampler") or {"name": "tpe"}
    pruner = study.get("pruner") or {"name": "median"}
    for key, val, names in (("sampler", sampler, ("tpe", "random")), ("pruner", pruner, ("median", "successive_halving", "none"))):
        if not isinstance(val, Mapping) or val.get("name") not in names:
            raise _err(path, f"study.{key}.name", f"must be one of {', '.join(names)}, got {val!r}.")
    ints = {}
    for key, default, unit in (("heartbeat_interval", 30, " (seconds)"), ("grace_period", 90, " (seconds)"),
                               ("objective_epochs", 1, " (validated epochs)")):
        v = study.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _err(path, f"study.{key}", f"must be an integer >= 1{unit}, got {v!r}.")
        ints[key] = v
    if ints["grace_period"] <= ints["heartbeat_interval"]:
        raise _err(path, "study.grace_period", "must be longer than study.heartbeat_interval.")
    storage = study.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise _err(path, "study.storage", f"must be an RDB URL such as sqlite:///study.db or postgresql://..., got {storage!r}.")
    name = study.get("name", path.stem)
    return StudySpec(path=path, config=config, overrides=cfg_overrides, name=str(name), trials=trials, seeds=list(seeds),
                     objective=_objective(path, study.get("objective", "c_index")), sampler=dict(sampler),
                     pruner=dict(pruner), storage=storage, space=space, **ints)


def objective_value(metrics: Mapping[str, Any], weights: Mapping[str, float]) -> float:
    """The weighted sum of validation metrics (``c_index_gap`` = c_index − c_index_oracle); NaN when a weighted
    term is missing or not finite. k-fold results (``{"mean": ...}``) use the mean over folds."""

    def get(name: str) -> float:
        v = metrics.get(name)
        if isinstance(v, Mapping):
            v = v.get("mean")
        try:
            return float(v) if v is not None else float("nan")
        except (TypeError, ValueError):
            return float("nan")

    total = 0.0
    for name, w in weights.items():
        v = get("c_index") - get("c_index_oracle") if name == "c_index_gap" else get(name)
        if not math.isfinite(v):
            return float("nan")
        total += w * v
    return total


def last_epochs_objective(metrics_csv: str | Path, weights: Mapping[str, float], k: int) -> float:
    """Mean of :func:`objective_value` over the last ``k`` validated epochs of a run's ``metrics.csv`` (rows
    whose objective is finite; fewer when the run validated fewer epochs); NaN when there is none."""
    import csv

    with open(metrics_csv, newline="") as f:
        values = [objective_value(row, weights) for row in csv.DictReader(f)]
    values = [v for v in values if math.isfinite(v)][-k:]
    return float(sum(values) / len(values)) if values else float("nan")


class PruningCallback:
    """Engine callback: report each validated epoch's objective to the Optuna trial and stop a trial the pruner
    gives up on (raises ``optuna.TrialPruned`` after the epoch's checkpoint is written).

    Args:
        trial: the ``optuna.Trial``.
        weights: the objective's weights (:func:`objective_value`).
        offset: added to the epoch to make the reported step (seed k of a trial reports steps k·epochs + epoch).
    """

    def __init__(self, trial, weights: Mapping[str, float], offset: int = 0):
        self.trial = trial
        self.weights = dict(weights)
        self.offset = int(offset)
        self.reported: list[tuple[int, float]] = []

    def on_epoch_end(self, engine, epoch: int, row: Mapping[str, Any]) -> None:
        import optuna

        if not engine.last_metrics:  # an epoch without validation
            return
        value = objective_value(row, self.weights)
        if not math.isfinite(value):
            return
        step = self.offset + epoch + 1
        self.trial.report(value, step)
        self.reported.append((step, value))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (objective {value:.4f})")


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def trial_overrides(params: Mapping[str, Any]) -> list[str]:
    """``key=value`` overrides for sampled parameters (JSON-text choices become YAML lists/mappings again)."""
    return [f"{k}={_format_value(v)}" for k, v in params.items()]


def _make_sampler(spec: StudySpec, seed: int | None = None):
    """The study's sampler; ``seed`` replaces ``study.sampler.seed`` (see :func:`run_study`)."""
    import optuna

    kw = {k: v for k, v in spec.sampler.items() if k != "name"}
    if seed is not None:
        kw["seed"] = seed
    try:
        if spec.sampler["name"] == "random":
            return optuna.samplers.RandomSampler(**kw)
        return optuna.samplers.TPESampler(**kw)
    except TypeError as e:
        raise _err(spec.path, "study.sampler", f"has an invalid argument: {e}") from None


def _make_pruner(spec: StudySpec):
    import optuna

    kw = {k: v for k, v in spec.pruner.items() if k != "name"}
    name = spec.pruner["name"]
    try:
        if name == "none":
            return optuna.pruners.NopPruner()
        if name == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(**kw)
        return optuna.pruners.MedianPruner(**kw)
    except TypeError as e:
        raise _err(spec.path, "study.pruner", f"has an invalid argument: {e}") from None


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'study.db').resolve()}"


def open_study(spec: StudySpec, out_dir: Path, storage: str | None = None):
    """Create or load the study (``load_if_exists``) on an RDB storage with heartbeats and re-queueing of trials
    whose process died."""
    import optuna

    url = storage or spec.storage or default_storage(out_dir)
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    attempts = 6
    for attempt in range(attempts):  # workers starting together race to create the tables: the loser retries
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeats and the retry callback are marked experimental
                rdb = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_interval,
                    grace_period=spec.grace_period,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))
            break
        except (ImportError, ModuleNotFoundError) as e:
            raise ConfigError(f"storage {url}: the database driver is not installed ({e}).") from None
        except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many kinds; the user needs one line naming the URL
            if attempt + 1 == attempts:
                raise ConfigError(f"storage {url}: cannot open the study database ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0]}).") from None
            log.info("storage %s busy (%s); retrying", url, type(e).__name__)
            time.sleep(0.5 * (attempt + 1))
    return optuna.create_study(storage=rdb, study_name=spec.name, sampler=_make_sampler(spec), pruner=_make_pruner(spec),
                               direction="maximize", load_if_exists=True)


def _trial_dir(out_dir: Path, trial) -> Path:
    """The run folders of a trial; a re-queued trial reuses the folders of the trial it retries."""
    import optuna

    frozen = next((t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number), None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning
        first = None if frozen is None else optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return out_dir / "trials" / f"trial{(trial.number if first is None else first):04d}"


def make_objective(spec: StudySpec, out_dir: Path, *, components=None):
    """The Optuna objective: load the config with the trial's parameters, train one run per seed through
    :func:`run_experiment` with a :class:`PruningCallback`, return the mean objective over seeds."""
    from survival3d.config import ExperimentConfig, load_config
    from survival3d.engine.experiment import run_experiment
    from survival3d.engine.loop import NonFiniteLossError

    def objective(trial) -> float:
        import optuna

        params = {p.key: p.suggest(trial) for p in spec.space}
        base_dir = _trial_dir(out_dir, trial)
        values = []
        for k, seed in enumerate(spec.seeds):
            run = base_dir / f"seed{seed}"
            cfg = load_config(spec.config, [*spec.overrides, *trial_overrides(params), *TRIAL_MECHANICS,
                                            f"train.seed={seed}", f"out_dir={run.parent}", f"name={run.name}"],
                              schema=ExperimentConfig)
            epochs = int(cfg.train.epochs)
            done = run / "final_metrics.json"
            if done.is_file():  # finished before the process died: keep it
                result = json.loads(done.read_text())
            else:
                resume = (run / "checkpoints" / "last.pt").is_file()
                cb = PruningCallback(trial, spec.objective, offset=k * epochs)
                try:
                    result = run_experiment(cfg, resume=resume, components=components, callbacks=[cb])
                except NonFiniteLossError as e:  # diverged: a bad region of the space, stopped like a pruned trial
                    trial.set_user_attr("diverged", f"seed {seed}: {str(e).split(';')[0]}")
                    raise optuna.TrialPruned(f"seed {seed} diverged (non-finite loss)") from None
            value = objective_value(result, spec.objective)
            if spec.objective_epochs > 1:
                trial.set_user_attr(f"seed{seed}_objective_final", value)
                value = last_epochs_objective(run / "metrics.csv", spec.objective, spec.objective_epochs)
            for m in ("c_index", "c_index_oracle", "p_lesion", "pointing", "val_loss", "time"):
                v = result.get(m)
                v = v.get("mean") if isinstance(v, Mapping) else v
                if isinstance(v, (int, float)):
                    trial.set_user_attr(f"seed{seed}_{m}", float(v))
            trial.set_user_attr(f"seed{seed}_objective", value)
            if not math.isfinite(value):
                raise optuna.TrialPruned(f"seed {seed}: objective is not finite ({value})")
            values.append(value)
        trial.set_user_attr("run_dir", str(base_dir))
        return float(sum(values) / len(values))

    return objective


def _count(study, states) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def run_study(spec: StudySpec, out_dir: str | Path, *, storage: str | None = None, max_trials: int | None = None,
              components=None, write_outputs: bool = True) -> dict[str, Any]:
    """Run (or continue) the study until it has ``spec.trials`` finished (complete or pruned) trials, counting the
    ones other workers run; ``max_trials`` caps the trials this process starts. Returns a summary dict."""
    import optuna
    from optuna.trial import TrialState

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(spec, out_dir, storage)
    objective = make_objective(spec, out_dir, components=components)
    started = 0
    while max_trials is None or started < max_trials:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning
            optuna.storages.fail_stale_trials(study)  # trials of dead processes → FAIL (+ re-queued copy)
        finished = _count(study, (TrialState.COMPLETE, TrialState.PRUNED))
        running = _count(study, (TrialState.RUNNING,))
        if finished + running >= spec.trials:
            break
        if spec.sampler.get("seed") is not None:
            # a fixed seed would give every worker process the same random stream (the same start-up trials,
            # then the same TPE draws for the same history): seed each trial with seed + the trials already there
            study.sampler = _make_sampler(spec, seed=int(spec.sampler["seed"]) + len(study.get_trials(deepcopy=False)))
        study.optimize(objective, n_trials=1, catch=())
        started += 1
    summary = study_summary(study)
    summary["started_here"] = started
    if write_outputs:
        summary["files"] = {k: str(v) for k, v in write_study_outputs(study, spec, out_dir).items()}
    return summary


def study_summary(study) -> dict[str, Any]:
    from optuna.trial import TrialState

    states = {s.name.lower(): _count(study, (s,)) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                                              TrialState.RUNNING, TrialState.WAITING)}
    out: dict[str, Any] = {"study": study.study_name, **states}
    if states["complete"]:
        best = study.best_trial
        out.update(best_value=best.value, best_trial=best.number, best_params=best.params)
    return out


def best_config(study, spec: StudySpec):
    """The experiment config of the best trial (the study's config + shared overrides + the best parameters),
    ready for ``run.py train --config``; named ``<study>_best``."""
    from survival3d.config import ExperimentConfig, load_config

    params = study.best_trial.params
    return load_config(spec.config, [*spec.overrides, *trial_overrides(params), f"name={spec.name}_best"],
                       schema=ExperimentConfig)


def write_study_outputs(study, spec: StudySpec, out_dir: Path) -> dict[str, Path]:
    """``trials.csv`` (one row per trial: number, state, value, params, durations, per-seed metrics), and with a
    completed trial ``best.yaml`` and ``best.json``; with ≥ 2 completed trials ``importance.png``; always
    ``history.png`` and ``intermediate.png`` (the per-epoch objective of every trial: pruned ones stop early)."""
    from survival3d.config import save_config
    from survival3d.io import write_csv, write_json
    from survival3d.metrics.figures import save_figure

    files: dict[str, Path] = {}
    df = study.trials_dataframe(attrs=("number", "state", "value", "params", "datetime_start", "datetime_complete",
                                       "duration", "user_attrs"))
    if "duration" in df:
        df["duration_s"] = df["duration"].dt.total_seconds()
        df = df.drop(columns=["duration"])
    steps = {t.number: (max(t.intermediate_values) if t.intermediate_values else None) for t in study.trials}
    df["last_step"] = df["number"].map(steps)
    files["trials"] = write_csv(out_dir / "trials.csv", df)
    summary = study_summary(study)
    if summary.get("complete"):
        files["best"] = save_config(best_config(study, spec), out_dir / "best.yaml")
        write_json(out_dir / "best.json", summary)
        files["best_json"] = out_dir / "best.json"
    import optuna.visualization.matplotlib as vis

    plots = [("history", vis.plot_optimization_history), ("intermediate", vis.plot_intermediate_values)]
    if summary.get("complete", 0) >= 2 and len(spec.space) >= 1:
        plots.append(("importance", vis.plot_param_importances))
    for name, fn in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for the matplotlib backend
                ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            files[name] = save_figure(fig, out_dir / f"{name}.png")
        except (ValueError, RuntimeError, ImportError) as e:  # e.g. importance with parameters that never varied
            log.warning("%s.png not written (%s: %s)", name, type(e).__name__, e)
    return files
