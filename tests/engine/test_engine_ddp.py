"""Two gloo processes (DistributedDataParallel on CPU) train exactly like one process with twice the batch."""

import json
import os
import socket

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from lifelines.utils import concordance_index

import engine_standins as standins
from survival3d.config import ExperimentConfig, load_config
from survival3d.engine.checkpoint import load_checkpoint, load_trained
from survival3d.engine.experiment import run_experiment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, overrides):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from survival3d.engine.distributed import shutdown_distributed

    cfg = load_config(None, overrides, schema=ExperimentConfig)
    try:
        run_experiment(cfg, components=standins.components())
    finally:
        shutdown_distributed()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_gloo_matches_single_process(tmp_path):
    common = [f"out_dir={tmp_path}", "data.dummy.n=24", "data.dummy.size=16", "data.image_size=[16,16,16]",
              "cv.folds=3", "cv.fold=0", "train.epochs=2", "optim.warmup_epochs=0", "train.final=last",
              "model.drop_path=0.0", "train.device=cpu", *standins.TINY]
    # 16 training cases: one process with batch 8 sees the same batches as two processes with batch 4 each
    mp.spawn(_worker, args=(2, _free_port(), [*common, "name=ddp", "data.batch_size=4"]), nprocs=2, join=True)
    single = run_experiment(load_config(None, [*common, "name=single", "data.batch_size=8"], schema=ExperimentConfig),
                            components=standins.components())
    ddp_dir, single_dir = tmp_path / "ddp" / "fold0", tmp_path / "single" / "fold0"
    fm = json.loads((ddp_dir / "final_metrics.json").read_text())
    assert fm["world_size"] == 2
    pred = pd.read_csv(ddp_dir / "predictions.csv")
    split = json.loads((tmp_path / "ddp" / "splits.json").read_text())["splits"][0]
    assert len(split["train"]) == 16 and sorted(pred.id.astype(str)) == sorted(split["val"])  # gathered: all 8
    assert fm["c_index"] == pytest.approx(concordance_index(pred.time, pred.pred_time, pred.event), abs=1e-12)
    assert fm["c_index"] == pytest.approx(single["per_fold"][0]["c_index"], abs=1e-6)
    np.testing.assert_allclose(pred.pred_time, pd.read_csv(single_dir / "predictions.csv").pred_time, rtol=1e-4)

    # the DDP checkpoint is a plain model: it loads and predicts in one process
    assert not any(k.startswith("module.") for k in load_checkpoint(ddp_dir / "checkpoints/last.pt")["model"])
    tm = load_trained(ddp_dir, prefer="last", components=standins.components())
    again = tm.predict(tm.dataset(ids=split["val"]))
    assert concordance_index(again.time, again.pred_time, again.event) == pytest.approx(fm["c_index"], abs=1e-6)
