"""The one training loop. Every task — the 3D survival model, the GLSA classifier, FlexLayers — runs on it.

An :class:`Engine` owns what every training run needs: seeding, device placement, the optimiser and schedule
(from :mod:`survival3d.engine.optim`), bf16 autocast on CUDA (the task's step uses
:func:`survival3d.runtime.autocast`), gradient clipping, the non-finite-loss stop, validation every
``val_every`` epochs, best/last checkpoints with the RNG state, exact resume, early stopping, DDP, ``metrics.csv``
and wandb logging, progress bars and callbacks. A :class:`Task` builds its objects and defines one step and one
validation::

    class MyTask(Task):
        def setup(self, engine, state):          # datasets, loaders, model; restore extra state on resume
            self.module = MyNet().to(engine.device)
            self.train_loader = DataLoader(...)
        def training_step(self, module, batch):  # one batch: the loss and per-batch sums to average
            x, y = batch
            with autocast(x.device, self.amp):
                loss = F.cross_entropy(module(x), y)
            return {"loss": loss, "n": len(y)}
        def validate(self, engine, epoch):        # metrics of the current weights
            return {"accuracy": ...}
        def finish(self, engine):                # final outputs (files, results dict)
            return {...}

    Engine(MyTask(), EngineSettings(epochs=10, monitor="accuracy", mode="max"), run_dir="runs/x").fit()

The step's returned dict holds ``loss`` (the tensor to back-propagate, mean over the batch), ``n`` (the batch size)
and optionally per-batch *sums* (detached tensors or floats) that the engine accumulates on the device and reports
per epoch as ``train_<name>`` = sum / cases; ``loss`` itself is reported as ``train_loss``. The host is
synchronised only every ``log_every`` steps (progress bar, non-finite check) and once per epoch.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from survival3d.engine.checkpoint import (check_best_pair, load_checkpoint, load_weights_checked, rng_state, save_checkpoint,
                                         set_rng_state)
from survival3d.engine.distributed import DistInfo, all_reduce_sum, select_device
from survival3d.engine.inference import to_device
from survival3d.engine.optim import Schedule, build_optimizer, build_scheduler
from survival3d.errors import ConfigError, InputError
from survival3d.io import atomic_write, remove_stale_temps
from survival3d.runtime import seed_everything

__all__ = ["Engine", "EngineSettings", "Task", "NonFiniteLossError"]

log = logging.getLogger(__name__)


def _cpu_copy(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    return obj


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped and kept its last good checkpoint."""

    exit_code = 3


@dataclass
class EngineSettings:
    """How the engine trains (each task fills these from its own config section).

    Attributes:
        epochs: number of epochs (≥ 1).
        seed: the seed of every random stream; ``deterministic`` asks for deterministic kernels (``None``: leave
            the backend settings alone).
        device: ``train.device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        optimizer: name in :data:`survival3d.engine.optim.OPTIMIZERS` and its arguments (``lr``, ...).
        scheduler: name in :data:`survival3d.engine.optim.SCHEDULERS` and its arguments; ``total_steps`` and
            ``warmup_steps`` are filled in by the engine from ``warmup_epochs`` and the loader length when the
            schedule's interval is ``step`` (``epochs`` for ``epoch``), unless given.
        grad_clip: max global gradient norm (0 = off).
        val_every: validate every this many epochs (and after the last one).
        monitor, mode: the validation metric that picks ``best.pt`` and drives early stopping / plateau, and
            whether higher (``max``) or lower (``min``) is better.
        patience: stop after this many validations without improvement (0 = never).
        checkpoint_dir: where ``last.pt``/``best.pt`` go (default ``run_dir/checkpoints``); ``save_last`` writes
            ``last.pt`` after every epoch (needed to resume), ``save_best`` writes ``best.pt`` on improvement.
        metrics_columns: the columns of ``metrics.csv`` (``None``: no CSV).
        log_every: steps between host synchronisations (progress bar loss, non-finite check).
        progress: tqdm bars on the main process.
        wandb: ``{"mode": offline|online|disabled, "project": ..., "name": ..., "config": {...}}`` or ``None``.
    """

    epochs: int = 1
    seed: int = 0
    deterministic: bool | None = None
    device: str = "auto"
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "adamw", "lr": 1e-3})
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    warmup_epochs: float = 0.0
    grad_clip: float = 0.0
    val_every: int = 1
    monitor: str | None = None
    mode: str = "max"
    patience: int = 0
    checkpoint_dir: str | os.PathLike | None = None
    save_last: bool = True
    save_best: bool = True
    metrics_columns: Sequence[str] | None = None
    log_every: int = 20
    progress: bool = True
    wandb: dict[str, Any] | None = None


class Task:
    """What a task plugs into the :class:`Engine` (override the methods; see the module docstring).

    Attributes set by :meth:`setup`:
        module: the ``nn.Module`` that holds every trained parameter (the engine puts it in DDP);
        train_loader: an iterable of batches with ``len``; ``train_sampler`` (optional) gets ``set_epoch``.
    """

    module: torch.nn.Module
    train_loader: Any
    train_sampler: Any = None

    def setup(self, engine: "Engine", state: dict[str, Any] | None) -> None:
        """Build datasets, loaders and the model on ``engine.device``; ``state`` is the checkpoint on resume."""
        raise NotImplementedError

    def param_groups(self, engine: "Engine") -> list:
        """The optimiser's parameters or parameter groups (default: every trainable parameter of ``module``)."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def on_epoch_start(self, engine: "Engine", epoch: int) -> None:
        """Called before each training epoch (0-based), after ``train_sampler.set_epoch``."""

    def training_step(self, module: torch.nn.Module, batch: Any) -> dict[str, Any]:
        """One batch on the device: ``{"loss": tensor, "n": batch size, <name>: per-batch sum, ...}``."""
        raise NotImplementedError

    def validate(self, engine: "Engine", epoch: int) -> dict[str, float]:
        """Validation metrics of the current weights (every rank calls it; gather inside if needed)."""
        return {}

    def on_epoch_end(self, engine: "Engine", epoch: int, row: dict[str, Any]) -> None:
        """Called after each epoch (0-based) with its logged row (training and validation values)."""

    def state_dict(self) -> dict[str, Any]:
        """Task state saved beside the engine's in every checkpoint (plain types and tensors only)."""
        return {}

    def weights(self) -> dict[str, Any]:
        """The trained weights as checkpoint entries (default ``{"module": module.state_dict()}``)."""
        return {"module": self.module.state_dict()}

    def load_weights(self, state: dict[str, Any]) -> None:
        """Load what :meth:`weights` wrote (from a checkpoint or the engine's in-memory best copy)."""
        self.module.load_state_dict(state["module"])

    def finish(self, engine: "Engine") -> dict[str, Any]:
        """After training: final outputs; the engine returns what this returns."""
        return {}


class Engine:
    """Train one :class:`Task` into one run folder.

    Args:
        task: the task.
        settings: the loop's settings.
        run_dir: the run's folder (``metrics.csv``, checkpoints, wandb).
        dist: the process-group position (single process by default).
        callbacks: objects with optional ``on_step_end(engine, epoch, step)``, ``on_epoch_end(engine, epoch, row)``
            and ``on_fit_end(engine, results)`` hooks, and hooks a task asks for through :meth:`collect` (the
            survival task: ``on_final_model(engine) -> dict``).
    """

    def __init__(self, task: Task, settings: EngineSettings, run_dir: str | os.PathLike, *, dist: DistInfo | None = None,
                 callbacks: Sequence[Any] = ()):
        self.task = task
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.dist = dist or DistInfo()
        self.callbacks = list(callbacks)
        self.ckpt_dir = Path(settings.checkpoint_dir) if settings.checkpoint_dir is not None else self.run_dir / "checkpoints"
        s = settings
        for key, val in (("epochs", s.epochs), ("val_every", s.val_every), ("log_every", s.log_every)):
            if int(val) < 1:
                raise ConfigError(f"{key} must be >= 1, got {val}.")
        if s.mode not in ("max", "min"):
            raise ConfigError(f"the monitor mode must be 'max' or 'min', got '{s.mode}'.")
        if not math.isfinite(float(s.grad_clip)) or float(s.grad_clip) < 0:
            raise ConfigError(f"optim.grad_clip must be >= 0, got {s.grad_clip}.")

    # ------------------------------------------------------------------ set-up
    def _setup(self, state: dict[str, Any] | None) -> None:
        s = self.settings
        self.device = select_device(s.device, self.dist)
        seed_everything(int(s.seed), s.deterministic)
        self.task.setup(self, state)
        module = self.task.module
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DDP(module, device_ids=ids, find_unused_parameters=bool(getattr(self.task, "ddp_find_unused", False)))
        self.train_module = module

        steps = len(self.task.train_loader)
        self.steps_per_epoch = steps
        opt = dict(s.optimizer)
        opt["fused"] = bool(opt.get("fused")) and self.device.type == "cuda"  # fused kernels exist on CUDA only
        self.optimizer = build_optimizer(opt.pop("name"), self.task.param_groups(self), **opt)
        sch = dict(s.scheduler)
        name = sch.pop("name")
        interval = sch.get("interval", "epoch" if name == "plateau" else "step")
        per = steps if interval == "step" else 1
        sch.setdefault("total_steps", per * int(s.epochs))
        sch.setdefault("warmup_steps", int(round(float(s.warmup_epochs) * per)))
        if name == "plateau":
            sch.setdefault("mode", s.mode)
        self.schedule: Schedule = build_scheduler(name, self.optimizer, **sch)
        self.params = [p for p in self.task.module.parameters() if p.requires_grad]  # clipped together

        self.epoch = 0  # next epoch to run (0-based) = epochs done
        self.step = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_validations = 0
        self.stopped_early = False
        self.elapsed = 0.0
        self.best_weights: dict[str, Any] | None = None
        self.last_metrics: dict[str, float] = {}
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------ state
    def state(self, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """The checkpoint: the task's module and state, optimiser, schedule, RNG, counters, early-stop state."""
        return {
            **self.task.state_dict(),
            **self.task.weights(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            "early_stop": {"best": self.best, "best_epoch": self.best_epoch, "bad_validations": self.bad_validations,
                           "stopped": self.stopped_early},
            "elapsed": self.elapsed,
            "metrics": metrics or {},
            "world_size": self.dist.world_size,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        load_weights_checked(self.task.load_weights, state, self.ckpt_dir / "last.pt")
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        es = state["early_stop"]
        self.best, self.best_epoch = es["best"], es["best_epoch"]
        self.bad_validations, self.stopped_early = int(es["bad_validations"]), bool(es["stopped"])
        self.elapsed = float(state.get("elapsed", 0.0))
        set_rng_state(state["rng"])
        log.info("resumed %s at epoch %d (step %d)", self.run_dir, self.epoch, self.step)

    # ------------------------------------------------------------------ logging
    def _init_wandb(self) -> None:
        self.wandb_run = None
        w = self.settings.wandb
        if not self.dist.is_main or not w or w.get("mode", "offline") == "disabled":
            return
        os.environ["WANDB_DIR"] = str(self.run_dir)
        os.environ["WANDB_MODE"] = str(w.get("mode", "offline"))  # also for wandb's service process
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb
        except ImportError:
            log.warning("wandb is not installed (pip install 'survival3d[wandb]'): wandb logging is off, metrics.csv "
                        "still has every epoch")
            return
        try:
            id_file = self.run_dir / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.is_file() else None
            self.wandb_run = wandb.init(project=w.get("project"), name=w.get("name"), dir=str(self.run_dir),
                                        mode=w.get("mode", "offline"), id=run_id, resume="allow" if run_id else None,
                                        config=w.get("config"), reinit="finish_previous")
            id_file.write_text(self.wandb_run.id)
        except Exception as e:  # noqa: BLE001 - a tracking failure must never stop training
            log.warning("wandb disabled (%s: %s)", type(e).__name__, e)
            self.wandb_run = None

    def _csv_prepare(self) -> None:
        """Keep only rows up to the resumed epoch (a crash may have logged an epoch it never checkpointed)."""
        cols = self.settings.metrics_columns
        path = self.run_dir / "metrics.csv"
        if not cols or not path.is_file():
            return
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= self.epoch]
        with atomic_write(path, newline="") as f:  # a kill while rewriting must not lose the logged epochs
            w = csv.DictWriter(f, fieldnames=list(cols), extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def _log_row(self, row: dict[str, Any]) -> None:
        cols = self.settings.metrics_columns
        if cols:
            path = self.run_dir / "metrics.csv"
            new = not path.is_file()
            with open(path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(cols), extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow({k: ("" if row.get(k) is None or (isinstance(row.get(k), float) and math.isnan(row[k])) else row[k])
                            for k in cols})
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if v is not None and k != "step"}, step=row["step"])

    def progress(self, iterable, **kw):
        """``iterable`` wrapped in a tqdm bar on the main process when progress bars are on (``None``: a manual
        bar, or ``None`` when bars are off)."""
        if not (self.settings.progress and self.dist.is_main):
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, dynamic_ncols=True, leave=False, disable=None, **kw)  # None: no bar when not a TTY (logs)

    # ------------------------------------------------------------------ loops
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        task = self.task
        if getattr(task, "train_sampler", None) is not None and hasattr(task.train_sampler, "set_epoch"):
            task.train_sampler.set_epoch(epoch)
        task.on_epoch_start(self, epoch)
        self.train_module.train()
        dev = self.device
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        nonfinite = torch.zeros((), device=dev, dtype=torch.bool)
        n_steps = len(task.train_loader)
        bar = self.progress(None, total=n_steps, desc=f"epoch {epoch + 1}/{self.settings.epochs}", unit="step")
        every = int(self.settings.log_every)
        clip = float(self.settings.grad_clip)
        per_step = self.schedule.interval == "step"
        wait = 0.0
        t_start = time.perf_counter()
        it = iter(task.train_loader)
        i = -1
        while True:  # to the loader's end: samplers draw their last random numbers only when exhausted
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            i += 1
            batch = to_device(batch, dev)
            wait += time.perf_counter() - t0
            out = task.training_step(self.train_module, batch)
            loss = out["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.optimizer.step()
            if per_step:
                self.schedule.step()
            self.step += 1
            n = int(out["n"])
            seen += n  # host-side count: no host-to-device copy per step
            for key, val in (("loss", loss.detach().double() * n), *((k, v) for k, v in out.items() if k not in ("loss", "n"))):
                val = val.detach().double() if torch.is_tensor(val) else torch.tensor(float(val), dtype=torch.float64, device=dev)
                sums[key] = sums[key] + val if key in sums else val
            nonfinite |= ~torch.isfinite(loss.detach())
            for cb in self.callbacks:
                if hasattr(cb, "on_step_end"):
                    cb.on_step_end(self, epoch, i)
            if bar is not None:
                bar.update(1)
            if (i + 1) % every == 0 or i + 1 == n_steps:
                flag = all_reduce_sum(nonfinite.to(torch.float32).clone(), self.dist)  # the only host syncs of the loop
                if bool(flag > 0):
                    self._fail_nonfinite(epoch, i)
                if bar is not None:
                    bar.set_postfix(loss=f"{float(sums['loss']) / max(seen, 1):.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        if bar is not None:
            bar.close()
        keys = list(sums)
        totals = torch.stack([sums[k] for k in keys] + [torch.tensor(float(seen), device=dev, dtype=torch.float64)])
        all_reduce_sum(totals, self.dist)
        a = totals.cpu().numpy()
        epoch_time = time.perf_counter() - t_start
        row = {f"train_{k}": float(a[j] / a[-1]) for j, k in enumerate(keys)}
        row.update(data_wait_frac=wait / epoch_time if epoch_time > 0 else 0.0, epoch_time_s=epoch_time)
        return row

    def _fail_nonfinite(self, epoch: int, i: int):
        last = self.ckpt_dir / "last.pt"
        kept = (f"the last good checkpoint is {last} (end of epoch {self.epoch})" if self.settings.save_last and last.is_file()
                else "no checkpoint was written yet" if self.settings.save_last else "no checkpoint is kept")
        raise NonFiniteLossError(
            f"training loss became NaN/inf in epoch {epoch + 1} (by step {i + 1} of the epoch, global step {self.step}); "
            f"run stopped, {kept}. Try a lower optim.lr, optim.grad_clip, or check the data.")

    def _improved(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.settings.mode == "max" else value < self.best

    # ------------------------------------------------------------------ main
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train (or continue from ``last.pt`` when ``resume``), then return :meth:`Task.finish`'s results."""
        s = self.settings
        state = None
        last = self.ckpt_dir / "last.pt"
        if self.dist.is_main:
            for name in ("last.pt", "best.pt"):  # left by a checkpoint write that was killed
                for p in remove_stale_temps(self.ckpt_dir, name):
                    log.info("removed %s (an interrupted checkpoint write)", p)
        if resume and last.is_file():
            state = load_checkpoint(last)
            done = int(state.get("epoch", 0))
            if done > int(s.epochs):
                raise ConfigError(f"train.epochs={s.epochs} but {last} has already trained {done} epochs; resume with "
                                  f"train.epochs >= {done}.")
            stopped = bool((state.get("early_stop") or {}).get("stopped"))
            if done == int(s.epochs) or stopped:
                log.warning("%s was already complete (%d of %d epochs%s): nothing to train; reporting its final model",
                            self.run_dir, done, int(s.epochs), ", stopped early" if stopped else "")
            if self.dist.is_main and s.save_best:
                check_best_pair(self.ckpt_dir, state, repair=True)
        elif resume and self.run_dir.joinpath("metrics.csv").is_file():
            raise InputError("missing: nothing to resume (restarting would overwrite metrics.csv and best.pt).", path=last)
        if self.dist.is_main and (s.metrics_columns or s.save_last or s.save_best or s.wandb):
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._init_wandb()  # before seeding: wandb must not shift the random streams
        try:
            self._setup(state)
            if self.dist.is_main:
                self._csv_prepare()
            epochs = int(s.epochs)
            while self.epoch < epochs and not self.stopped_early:
                self._run_epoch(epochs)
            results = self.task.finish(self)
            for cb in self.callbacks:
                if hasattr(cb, "on_fit_end"):
                    cb.on_fit_end(self, results)
            return results
        finally:
            if getattr(self, "wandb_run", None) is not None:
                self.wandb_run.finish()
                self.wandb_run = None

    def _run_epoch(self, epochs: int) -> None:
        s = self.settings
        t0 = time.perf_counter()
        epoch = self.epoch
        row: dict[str, Any] = {"epoch": epoch + 1, **self._train_epoch(epoch)}
        lr = self.optimizer.param_groups[0]["lr"]  # the rate of the epoch's last step
        metrics: dict[str, float] = {}
        if (epoch + 1) % int(s.val_every) == 0 or epoch + 1 == epochs:
            metrics = self.task.validate(self, epoch)
            row.update(metrics)
        row.update(step=self.step, lr=lr)
        self.epoch = epoch + 1
        self.last_metrics = metrics
        score = metrics.get(s.monitor) if s.monitor else None
        improved = bool(metrics) and s.monitor is not None and self._improved(score)
        if improved:
            self.best, self.best_epoch, self.bad_validations = float(score), self.epoch, 0
            self.best_weights = _cpu_copy(self.task.weights())
        elif metrics and s.monitor is not None:
            self.bad_validations += 1
            if int(s.patience) > 0 and self.bad_validations >= int(s.patience):
                self.stopped_early = True
                log.info("early stopping after epoch %d: %s did not improve for %d validations (best %.4f at epoch %s)",
                         self.epoch, s.monitor, self.bad_validations, self.best if self.best is not None else float("nan"),
                         self.best_epoch)
        if metrics and self.schedule.interval == "epoch":
            self.schedule.step(score)
        self.elapsed += time.perf_counter() - t0
        if self.dist.is_main:
            self._log_row(row)
            if s.save_last or (improved and s.save_best):
                # last.pt first: it records best_epoch, so a kill before best.pt is written leaves a pair that
                # check_best_pair recognises (best_epoch == last epoch) and repairs from last.pt on resume/evaluate
                state = self.state(metrics)
                if s.save_last:
                    save_checkpoint(self.ckpt_dir / "last.pt", **state)
                if improved and s.save_best:
                    save_checkpoint(self.ckpt_dir / "best.pt", **state)
        log.info("epoch %d/%d  loss %.4f  %s  data-wait %.1f%%", self.epoch, epochs, row["train_loss"],
                 "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None
                           and math.isfinite(v)), 100 * row["data_wait_frac"])
        self.task.on_epoch_end(self, epoch, row)
        for cb in self.callbacks:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(self, epoch, row)

    def collect(self, hook: str) -> dict[str, Any]:
        """Call ``hook(engine)`` on every callback that has it and merge the dicts they return (a task asks for
        extra results this way, e.g. a closing heatmap). A failing callback is logged and skipped: an add-on must
        not lose the run's results."""
        merged: dict[str, Any] = {}
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is None:
                continue
            try:
                out = fn(self)
            except Exception as e:  # noqa: BLE001 - see the docstring
                log.warning("%s.%s failed (%s: %s)", type(cb).__name__, hook, type(e).__name__, e)
                continue
            merged.update(out or {})
        return merged

    def use_final_weights(self, final: str) -> str:
        """Load the weights the run reports (``best`` or ``last``) into the task's module; returns which."""
        if final == "best" and self.best_epoch is not None and self.best_epoch != self.epoch:
            weights = self.best_weights
            if weights is None:  # resumed after the best epoch: read it back
                path = self.ckpt_dir / "best.pt"
                weights = load_checkpoint(path, map_location=self.device)
                if int(weights.get("epoch", -1)) != int(self.best_epoch):
                    raise InputError(f"holds epoch {weights.get('epoch')} but the run's best epoch is {self.best_epoch}; "
                                     f"the best weights are lost (train.final=last still works).", path=path, field="epoch")
            self.task.load_weights(weights)
            return "best"
        return "best" if final == "best" and self.best_epoch == self.epoch else "last"
