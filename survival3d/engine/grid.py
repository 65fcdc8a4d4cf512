"""Run a grid of experiments resumably: skip finished runs, train the rest, collect one result row per run.

The experiment plans of the sibling tasks (:mod:`survival3d.glsa.experiments`, :mod:`survival3d.flex.experiments`)
expand their plans into :class:`GridRun` s and hand them to :func:`run_grid`; the plan expansion, the training
function and the report stay with each task.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from survival3d.errors import Survival3DError

__all__ = ["GridRun", "run_grid"]

log = logging.getLogger(__name__)


@dataclass
class GridRun:
    """One run of a grid.

    Attributes:
        run_id: the run's folder name under the grid's output folder (unique within the grid).
        factors: the columns that describe the run in the results table (e.g. dataset, backbone, seed).
        cfg: the run's training config, passed to the training function.
    """

    run_id: str
    factors: dict[str, Any] = field(default_factory=dict)
    cfg: Any = None


def _result_exists(result_file: str) -> Callable[[Path, Any], bool]:
    return lambda run_dir, cfg: (run_dir / result_file).is_file()


def run_grid(
    runs: Sequence[GridRun],
    out_dir: str | Path,
    *,
    train: Callable[[Any, Path], dict[str, Any]],
    result_file: str,
    is_done: Callable[[Path, Any], bool] | None = None,
    keep_going: bool = False,
    progress: bool = False,
    desc: str = "grid",
) -> tuple[list[dict[str, Any]], list[str]]:
    """Train every unfinished run of ``runs`` under ``out_dir/<run_id>``; return the result rows and the failed ids.

    Args:
        runs: the grid, in order; run ids must be unique.
        out_dir: the folder holding one sub-folder per run.
        train: ``train(cfg, run_dir) -> result`` trains one run and returns the content of its result file.
        result_file: the JSON file (inside a run folder) a finished run leaves; a skipped run's result is read there.
        is_done: ``is_done(run_dir, cfg)``: whether a run is finished and skipped (default: its result file exists).
        keep_going: when a run fails with anything but a :class:`~survival3d.errors.Survival3DError` (a user error,
            which always stops the grid at once), log it, list it as failed and go on; otherwise re-raise.
        progress: show a progress bar over the runs.
        desc: the name of the grid in the log and on the progress bar.

    Returns:
        ``(rows, failed)``: one row ``{"run_id", **factors, **result}`` per finished run, in grid order (a result
        key named like a factor or ``run_id`` is dropped: the run's own values win), and the ids of the runs that
        failed (only with ``keep_going``).
    """
    out = Path(out_dir)
    ids = [r.run_id for r in runs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"run ids must be unique within a grid; repeated: {dupes}")
    is_done = is_done or _result_exists(result_file)
    done = {r.run_id for r in runs if is_done(out / r.run_id, r.cfg)}
    log.info("%s: %d runs, %d finished, %d to train", desc, len(runs), len(done), len(runs) - len(done))
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    n_todo, i = len(runs) - len(done), 0
    for run in tqdm(runs, desc=desc, disable=not progress):
        run_dir = out / run.run_id
        if run.run_id in done:
            log.info("%s: finished earlier, skipped", run.run_id)
            result = json.loads((run_dir / result_file).read_text())
        else:
            i += 1
            log.info("[%d/%d] %s: training", i, n_todo, run.run_id)
            try:
                result = train(run.cfg, run_dir)
            except Survival3DError:
                raise
            except Exception as e:  # noqa: BLE001 - one diverging/out-of-memory run must not end a long plan
                if not keep_going:
                    raise
                log.exception("run %s failed: %s", run.run_id, e)
                failed.append(run.run_id)
                continue
        row = {"run_id": run.run_id, **run.factors}
        row.update((k, v) for k, v in result.items() if k not in row)
        rows.append(row)
    return rows, failed
