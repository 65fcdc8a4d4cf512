"""Train variants of one config over several seeds and score each run on validation and on fresh cases.

The factor studies of docs/results.md (issue 18) and the head-map and real-anatomy seed tables are made with this
module. It only drives the CLI (``train / dummy / evaluate / explain`` in subprocesses), so every run goes through
the one training engine and every number can be re-read from the run folders it leaves behind.

    python -m survival3d.bench.study STUDY.yaml [--jobs 2] [--only VARIANT ...]

STUDY.yaml::

    config: ../dummy1.yaml             # relative to the study file's folder (or to the working directory)
    out: results_work/study_dummy1     # relative to the working directory: runs, fresh data, study.csv, summary.md
    seeds: [0, 1, 2]
    seed_keys: [train.seed]            # the config keys each seed is written to
    overrides: [train.epochs=15]       # for every variant
    variants:                          # name -> overrides (an empty list is the config as shipped)
      shipped: []
      var36: [loss.var_init=36]
    fresh: {level: 1, n: 100, size: 32, seed: 9001}   # optional: fresh cases for evaluate + explain
    explain_methods: head_grid         # scored on the fresh cases (localisation.csv of run.py explain); with a
                                       # comma-separated list the first method's scores are the table's
    explain_max_cases: 40              # optional: explain only the first N fresh cases

Outputs under ``out``: ``runs/<variant>_s<seed>/`` (run folders), ``eval/`` and ``explain/`` per run,
``study.csv`` (one row per run; rows of runs outside a call's ``--only``/``--seeds`` are kept) and ``summary.md``
(mean ± sample sd per variant). A run whose results exist is not trained again (resume by running the same
command), unless its saved ``config.yaml`` no longer matches what the variant gives (the shipped config was edited,
or the variant's overrides changed): that run is reported as FAILED with the keys that differ. ``--jobs`` runs that
many trainings at once, each on ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from survival3d.errors import ConfigError
from survival3d.io import FolderLock, write_csv, write_text

CLI = [sys.executable, "-m", "survival3d.cli"]
METRICS = ["val_c_index", "val_oracle", "val_gap", "val_p_lesion", "val_p_lesion_chance", "val_p_distractor",
           "val_p_distractor_chance", "val_pointing",
           "fresh_c_index",
           "fresh_oracle", "fresh_gap", "pointing_game", "energy_pg", "energy_pg_cubelet", "pointing_cubelet",
           "energy_distractor_cubelet",
           "chance_distractor_cubelet", "train_s"]


def _run(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, check=False, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[3]} exited {proc.returncode}; see {log}")


def _resolve(path: str, base: Path) -> Path:
    p = Path(path)
    if p.is_absolute():
        return p
    return (base / p) if (base / p).exists() else p.resolve()


# keys a study sets per run or that do not change what a run learns: not compared by ``stale_keys``
UNCOMPARED = ("name", "out_dir", "logging", "train.heatmap", "train.device", "train.overwrite")


def _flat(d: object, prefix: str = "") -> dict[str, object]:
    """A nested mapping as ``{"dotted.key": leaf}``."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def stale_keys(run: Path, config: Path, overrides: list[str]) -> list[str]:
    """``key: saved -> now`` for every key whose value in ``run/config.yaml`` differs from what the study's config
    and ``overrides`` give today (a shipped config edited after the run was trained, a variant whose overrides
    changed). Keys the run's config does not have (added to the schema later, at a default that keeps the old
    behaviour) and ``UNCOMPARED`` keys are not compared."""
    from omegaconf import OmegaConf

    from survival3d.config import ExperimentConfig, load_config

    try:
        saved = _flat(yaml.safe_load((run / "config.yaml").read_text()) or {})
    except (OSError, yaml.YAMLError) as e:
        raise RuntimeError(f"{run / 'config.yaml'}: cannot read the run's config ({type(e).__name__})") from None
    now = _flat(OmegaConf.to_container(load_config(config, overrides, schema=ExperimentConfig), resolve=True))
    return [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in sorted(saved.keys() & now.keys())
            if not k.startswith(UNCOMPARED) and saved[k] != now[k]]


def _score(run: Path, ev: Path | None, ex: Path | None, method: str) -> dict:
    hist = pd.read_csv(run / "metrics.csv")
    last = hist.dropna(subset=["c_index"]).iloc[-1]
    row = {
        "val_c_index": float(last["c_index"]),
        "val_oracle": float(last.get("c_index_oracle", np.nan)),
        "val_p_lesion": float(last.get("p_lesion", np.nan)),
        "val_p_lesion_chance": float(last.get("p_lesion_chance", np.nan)),
        "val_p_distractor": float(last.get("p_distractor", np.nan)),
        "val_p_distractor_chance": float(last.get("p_distractor_chance", np.nan)),
        "val_pointing": float(last.get("pointing", np.nan)),
        "train_s": float(hist["epoch_time_s"].sum()),
        "epochs": int(last["epoch"]),
    }
    row["val_gap"] = row["val_c_index"] - row["val_oracle"]
    if ev is not None:
        m = json.loads((ev / "metrics.json").read_text())
        row.update(fresh_c_index=m["c_index"], fresh_oracle=m.get("c_index_oracle", np.nan))
        row["fresh_gap"] = row["fresh_c_index"] - row["fresh_oracle"]
    if ex is not None:
        loc = pd.read_csv(ex / "localisation.csv")
        loc = loc[loc["method"] == method.split(",")[0]]
        lesion = loc[loc["pointing_game"].notna()]
        for k in ("pointing_game", "energy_pg", "energy_pg_cubelet", "pointing_cubelet"):
            if k in lesion:  # pointing_cubelet: localisation.csv files written before session 17 lack it
                row[k] = float(lesion[k].mean())
        row["lesion_cases"] = len(lesion)
        for k in ("energy_distractor_cubelet", "chance_distractor_cubelet"):  # over the cases with a distractor
            if k in loc:
                row[k] = float(loc[k].mean())
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m survival3d.bench.study", description=__doc__.split("\n")[0])
    ap.add_argument("study")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="variants to run (default: all)")
    ap.add_argument("--seeds", nargs="*", type=int, help="seeds to run (default: the study's)")
    args = ap.parse_args(argv)
    study_file = Path(args.study).resolve()
    try:
        spec = yaml.safe_load(study_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        ap.error(f"{study_file}: cannot read the study file ({type(e).__name__}: {str(e).splitlines()[0]})")
    missing = [k for k in ("config", "out", "variants") if not isinstance(spec, dict) or k not in spec]
    if missing:
        ap.error(f"{study_file}: missing field(s) {', '.join(missing)}")
    config = _resolve(spec["config"], study_file.parent)
    out = Path(spec["out"]).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    seeds = args.seeds if args.seeds else spec.get("seeds", [0])
    seed_keys = spec.get("seed_keys", ["train.seed"])
    common = list(spec.get("overrides", []))
    variants = {k: list(v or []) for k, v in spec["variants"].items()}
    if args.only:
        unknown = sorted(set(args.only) - set(variants))
        if unknown:
            ap.error(f"{study_file}: no variant(s) {unknown}")
        variants = {k: variants[k] for k in args.only}
    fresh = spec.get("fresh")
    method = spec.get("explain_methods", "head_grid")
    fresh_manifest = make_fresh(out, fresh) if fresh else None

    def one(variant: str, seed: int) -> dict:
        name = f"{variant}_s{seed}"
        run = out / "runs" / name
        log = out / "logs" / f"{name}.log"
        t0 = time.time()
        overrides = [*common, *variants[variant], *(f"{k}={seed}" for k in seed_keys)]
        if (run / "config.yaml").exists():
            # a run left by an earlier call is reused only if it is still the run this variant asks for
            changed = stale_keys(run, config, overrides)
            if changed:
                raise RuntimeError(f"{run} was trained with a different config ({'; '.join(changed)}): pin the old "
                                   "value in the variant's overrides or delete the run folder to retrain it")
        if not (run / "final_metrics.json").exists():
            cmd = [*CLI, "train", "--config", str(config), f"out_dir={out / 'runs'}", f"name={name}",
                   "train.heatmap=false", "logging.wandb=false", *overrides]
            # interrupted: continue exactly from the last epoch (a start stopped before its first checkpoint is
            # cleared by train itself, docs/reliability.md)
            if (run / "checkpoints" / "last.pt").exists():
                cmd = [*CLI, "train", "--resume", str(run)]
            _run(cmd, log)
        ev = ex = None
        if fresh_manifest is not None:
            ev = out / "eval" / name
            if not (ev / "metrics.json").exists():
                _run([*CLI, "evaluate", "--checkpoint", str(run), "--data", str(fresh_manifest), "--out",
                      str(ev), "--no-figures"], log)
            ex = out / "explain" / name if method else None
            if ex is not None and not (ex / "localisation.csv").exists():
                limit = ["--max-cases", str(spec["explain_max_cases"])] if spec.get("explain_max_cases") else []
                _run([*CLI, "explain", "--checkpoint", str(run), "--data", str(fresh_manifest), "--out",
                      str(ex), "--methods", method, "--no-views", *limit], log)
        row = {"variant": variant, "seed": seed, **_score(run, ev, ex, method)}
        print(f"{name}: " + ", ".join(f"{k} {row[k]:.3f}" for k in METRICS if k in row and k != "train_s")
              + f"  ({time.time() - t0:.0f} s)", flush=True)
        return row

    tasks = [(v, s) for v in variants for s in seeds]

    def safe(task: tuple[str, int]) -> dict | None:
        try:
            return one(*task)
        except (RuntimeError, ConfigError) as exc:  # one failed run does not stop the study; reported, left out
            print(f"{task[0]}_s{task[1]}: FAILED: {exc}", flush=True)
            return None

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = [r for r in pool.map(safe, tasks) if r is not None]
    if not rows:
        print("no run finished", file=sys.stderr)
        return 1
    table = merge_rows(out, pd.DataFrame(rows), list(spec["variants"]))
    print("\n".join(summary_lines(table)))
    print(f"wrote {out / 'study.csv'} and {out / 'summary.md'}")
    return 0


def summary_lines(table: pd.DataFrame) -> list[str]:
    """``summary.md``: mean ± sample sd of every metric per variant."""
    cols = [c for c in METRICS if c in table and table[c].notna().any()]
    lines = ["| variant | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for v, g in table.groupby("variant", sort=False):
        cells = [f"{g[c].mean():.3f} ± {g[c].std(ddof=1):.3f}" if len(g) > 1 else f"{g[c].mean():.3f}"
                 for c in cols]
        lines.append(f"| {v} | {len(g)} | " + " | ".join(cells) + " |")
    return lines


@contextmanager
def _waiting_for_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` for the block, waiting while another study process holds it."""
    lock = FolderLock(out)
    while not lock.acquire():
        time.sleep(0.2)
    try:
        yield
    finally:
        lock.release()


def make_fresh(out: Path, fresh: dict) -> Path:
    """Generate the study's fresh cases (``run.py dummy`` into ``out/fresh``) unless they exist; under ``out/.lock``,
    so that two study processes started together generate them once (the second waits, then finds the manifest)
    instead of one overwriting the files the other is reading."""
    manifest = out / "fresh" / "manifest.csv"
    with _waiting_for_lock(out):
        if not manifest.exists():
            _run([*CLI, "dummy", "--level", str(fresh["level"]), "--n", str(fresh["n"]), "--size",
                  str(fresh["size"]), "--seed", str(fresh["seed"]), "--out", str(manifest.parent), "--overwrite",
                  "--no-progress"], out / "logs" / "fresh.log")
    return manifest


def merge_rows(out: Path, table: pd.DataFrame, variant_order: list[str]) -> pd.DataFrame:
    """Merge this call's rows into ``out/study.csv`` (rows of other variants and seeds are kept) and rewrite
    ``summary.md``, both atomically and under ``out/.lock``: two study processes on one folder (say two variants at
    once) each add their rows instead of the last writer dropping the other's."""
    with _waiting_for_lock(out):
        csv = out / "study.csv"
        if csv.exists():
            old = pd.read_csv(csv)
            done = set(zip(table["variant"], table["seed"]))
            keep = [(v, s) not in done for v, s in zip(old["variant"], old["seed"])]
            table = pd.concat([old[keep], table], ignore_index=True)
        order = {v: i for i, v in enumerate(variant_order)}
        table = table.sort_values(["variant", "seed"], key=lambda c: c.map(lambda v: order.get(v, len(order)))
                                  if c.name == "variant" else c, kind="stable").reset_index(drop=True)
        write_csv(csv, table)
        write_text(out / "summary.md", "\n".join(summary_lines(table)) + "\n")
    return table


if __name__ == "__main__":
    sys.exit(main())
