"""Label efficiency of encoder pretraining on dummy3 (issue 19), CPU-sized; runs sequentially.

    PYTHONPATH=. python scripts/pretrain_label_efficiency.py --out runs/le --seeds 0 --sizes 25 50 100

1. ``run.py pretrain --config configs/pretrain_dummy3.yaml`` (300 unlabelled dummy3 volumes, data seed 7), and the
   same with ``model.vq_codes=64``;
2. for every labelled-set size N and seed: ``run.py train`` on dummy3 (data seed 0, 32^3, 80/20 split so that N cases
   train) from scratch and from the pretrained encoder (same epochs, lr, everything else); with VQ tokens at
   ``--vq-size`` only;
3. every model on the same fresh cases (dummy3, data seed 99, ``--n-test``): Harrell's C-index of -pred_time and the
   head's lesion mass (sum of the softmin p over cubelets that overlap the lesion mask, cases with a lesion).
Writes ``<out>/results.csv`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from survival3d.cli import main as cli
from survival3d.data.datasets import collate_cases
from survival3d.engine.checkpoint import load_trained
from survival3d.engine.inference import model_inputs
from survival3d.metrics.survival import harrell_c_index

COMMON = ["data.dummy.level=3", "data.dummy.size=32", "data.image_size=[32,32,32]", "model.patch_size=4",
          "model.window_size=4", "logging.wandb=false", "logging.progress=false", "train.heatmap=false",
          "data.val_frac=0.2", "optim.lr=1e-3", "train.overwrite=true"]


def evaluate(run: Path, n_test: int) -> dict:
    tm = load_trained(run)
    tm.cfg.data.dummy.seed = 99
    tm.cfg.data.dummy.n = n_test
    ds = tm.dataset()
    loader = torch.utils.data.DataLoader(ds, batch_size=16, collate_fn=collate_cases)
    times, events, preds, masses = [], [], [], []
    with torch.no_grad():
        for batch in loader:
            out = tm.model(batch["image"].to(tm.device), **model_inputs(batch, device=tm.device))
            times.append(batch["time"].numpy()); events.append(batch["event"].numpy()); preds.append(out.pred.numpy())
            lesion = F.avg_pool3d(batch["mask"], tm.model.patch_size) > 0
            has = batch["mask"].flatten(1).amax(1) > 0
            m = (out.p * lesion).flatten(1).sum(1)
            masses += m[has].tolist()
    t, e, p = map(np.concatenate, (times, events, preds))
    return {"c_index": harrell_c_index(t, -p, e), "lesion_mass": float(np.mean(masses)), "n_lesion": len(masses)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/le")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--vq-size", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    ap.add_argument("--n-test", type=int, default=120)
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    timings = {}
    for tag, extra in (("pre", []), ("pre_vq", ["model.vq_codes=64"])):
        if not (out / tag / "final_metrics.json").is_file():
            t0 = time.time()
            assert cli(["pretrain", "--config", "configs/pretrain_dummy3.yaml", f"out_dir={out}", f"name={tag}",
                        f"train.epochs={a.pretrain_epochs}", "logging.progress=false", "train.overwrite=true", *extra]) == 0
            timings[tag] = time.time() - t0
    rows = []
    for seed in a.seeds:
        for n in a.sizes:
            arms = [("scratch", []), ("pretrained", [f"model.init={out / 'pre'}"])]
            if n == a.vq_size:
                arms.append(("pretrained_vq", [f"model.init={out / 'pre_vq'}", "model.vq_codes=64"]))
            for arm, extra in arms:
                name = f"{arm}_n{n}_s{seed}"
                run = out / name
                if not (run / "final_metrics.json").is_file():
                    total = int(math.ceil(n / 0.8))
                    assert cli(["train", *COMMON, f"out_dir={out}", f"name={name}", f"data.dummy.n={total}",
                                f"train.seed={seed}", f"cv.seed={seed}", f"train.epochs={a.epochs}",
                                f"train.val_every={a.epochs}", *extra]) == 0
                fm = json.loads((run / "final_metrics.json").read_text())
                r = {"arm": arm, "n_labelled": fm["n_train"], "seed": seed, "val_c_index": fm["c_index"],
                     "train_time_s": fm["time"], **evaluate(run, a.n_test)}
                rows.append(r)
                print(r, flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "results.csv", index=False)
    for tag in ("pre", "pre_vq"):
        print(tag, json.loads((out / tag / "final_metrics.json").read_text()))
    print(df.to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
