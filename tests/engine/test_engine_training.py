import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from lifelines.utils import concordance_index

from survival3d.config import ExperimentConfig, load_config, save_config
from survival3d.engine.checkpoint import load_checkpoint, load_trained
from survival3d.engine.components import Components
from survival3d.data.datasets import load_cases
from survival3d.engine.experiment import run_experiment
from survival3d.engine.loop import NonFiniteLossError
from survival3d.engine.survival_task import beta_warmup_factor
from survival3d.engine.optim import warmup_cosine
from survival3d.errors import ConfigError
from survival3d.explain.callbacks import HeatmapCallback


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_outputs_and_c_index_recomputed_from_predictions(tiny_cfg, components):
    cfg = tiny_cfg("train.final=last")
    final = run_experiment(cfg, components=components, callbacks=[HeatmapCallback()])
    run = Path(cfg.out_dir) / cfg.name
    for name in ("config.yaml", "metrics.csv", "splits.json", "predictions.csv", "final_metrics.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    fm = json.loads((run / "final_metrics.json").read_text())
    pred = pd.read_csv(run / "predictions.csv")
    assert list(pred.columns) == ["id", "time", "event", "pred_time", "risk", "expected_time"]
    assert fm["c_index"] == pytest.approx(concordance_index(pred.time, pred.pred_time, pred.event), abs=1e-12)
    assert fm["c_index_oracle"] == pytest.approx(concordance_index(pred.time, pred.expected_time, pred.event), abs=1e-12)
    unc, cen = pred[pred.event == 1], pred[pred.event == 0]
    assert fm["mae_uncensored"] == pytest.approx((unc.pred_time - unc.time).abs().mean(), rel=1e-9)
    if len(cen):
        assert fm["mae_censored"] == pytest.approx(np.maximum(cen.time - cen.pred_time, 0).mean(), rel=1e-9, abs=1e-9)
    assert np.isfinite(fm["val_loss"]) and fm["epochs"] == 2 and fm["time"] > 0 and final["c_index"] == fm["c_index"]
    splits = json.loads((run / "splits.json").read_text())["splits"][0]
    assert pred.id.astype(str).tolist() == splits["val"]
    assert len(_rows(run / "metrics.csv")) == 2
    assert 0.0 <= float(_rows(run / "metrics.csv")[0]["data_wait_frac"]) < 1.0
    assert load_config(run / "config.yaml", schema=ExperimentConfig) == cfg

    # heatmap: NIfTI on the source affine, p upsampled from a 2x2x2 cubelet grid
    assert Path(fm["heatmap"]).is_file() and fm["heatmap"].endswith(".png")
    img = nib.load(fm["heatmap_nifti"])
    case_id = Path(fm["heatmap_nifti"]).name[: -len("_p.nii.gz")]
    cases = load_cases(cfg.data, generate_case=components.case_generator())
    source_affine = cases.records[cases.index[case_id]]["image"].affine.numpy()
    np.testing.assert_allclose(img.affine, source_affine, atol=1e-6)
    assert img.shape == (16, 16, 16) and float(img.get_fdata().sum()) == pytest.approx(8**3, rel=1e-4)

    # the checkpoint loads in one process and reproduces the predictions
    tm = load_trained(run, prefer="last", components=components)
    again = tm.predict(tm.dataset(ids=tm.split["val"]))
    np.testing.assert_allclose(again.pred_time.to_numpy(), pred.pred_time.to_numpy(), rtol=1e-5)
    assert not tm.model.training


_KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {testdir!r})
import engine_standins as standins
from survival3d.config import ExperimentConfig, load_config, save_config
from survival3d.engine.experiment import run_experiment


class KillMidEpoch:
    def on_step_end(self, trainer, epoch, step):
        if (epoch, step) == (1, 1):  # second epoch, second step: no checkpoint covers it
            os.kill(os.getpid(), signal.SIGKILL)


run_experiment(load_config({config!r}, schema=ExperimentConfig), components=standins.components(),
               callbacks=[KillMidEpoch()])
"""


@pytest.mark.parametrize("extra", [[], ["train.flip_consistency_weight=0.1"]], ids=["plain", "flip_consistency"])
def test_resume_after_sigkill_reproduces_uninterrupted_run(tiny_cfg, components, tmp_path, extra):
    """Resume is exact, also with the flip-consistency term (its random flips come from the restored RNG)."""
    whole = tiny_cfg(*extra, name="whole")
    run_experiment(whole, components=components)
    broken = tiny_cfg(*extra, name="broken")
    save_config(broken, tmp_path / "broken.yaml")
    script = _KILL_SCRIPT.format(testdir=str(Path(__file__).parent), config=str(tmp_path / "broken.yaml"))
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    bdir = Path(broken.out_dir) / broken.name
    assert load_checkpoint(bdir / "checkpoints/last.pt")["epoch"] == 1
    assert not (bdir / "final_metrics.json").exists()
    with pytest.raises(ConfigError, match="already exists.*--resume"):
        run_experiment(broken, components=components)
    run_experiment(broken, resume=True, components=components)
    wdir = Path(whole.out_dir) / whole.name
    a, b = _rows(wdir / "metrics.csv"), _rows(bdir / "metrics.csv")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        for k in ("step", "lr", "train_loss", "val_loss", "c_index", "mae_uncensored", "mae_censored"):
            assert float(ra[k] or "nan") == pytest.approx(float(rb[k] or "nan"), rel=1e-6, abs=1e-9, nan_ok=True), k
    fa = json.loads((wdir / "final_metrics.json").read_text())
    fb = json.loads((bdir / "final_metrics.json").read_text())
    for k in ("c_index", "c_index_oracle", "mae_uncensored", "val_loss", "epochs", "best_epoch"):
        assert fa[k] == pytest.approx(fb[k], rel=1e-6), k
    pa, pb = pd.read_csv(wdir / "predictions.csv"), pd.read_csv(bdir / "predictions.csv")
    np.testing.assert_allclose(pa.pred_time, pb.pred_time, rtol=1e-6)


class _NaNAfter(torch.nn.Module):
    """Wraps a loss; its n-th training call (grad enabled) onwards returns NaN."""

    def __init__(self, inner, n):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, out, time, event):
        losses = self.inner(out, time, event)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls >= self.n:
                losses = {**losses, "loss": losses["loss"] * float("nan")}
        return losses


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tiny_cfg, components):
    cfg = tiny_cfg("train.epochs=3", "logging.log_every=1")
    steps_per_epoch = 4  # 16 training cases / batch 4
    nan_components = Components(build_model=components.build_model, generate_case=components.generate_case,
                                build_loss=lambda c: _NaNAfter(components.loss(c), steps_per_epoch + 2))
    with pytest.raises(NonFiniteLossError, match=r"NaN/inf in epoch 2 .*last good checkpoint is .*last.pt \(end of epoch 1\)"):
        run_experiment(cfg, components=nan_components)
    run = Path(cfg.out_dir) / cfg.name
    state = load_checkpoint(run / "checkpoints/last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (run / "final_metrics.json").exists()
    assert NonFiniteLossError.exit_code != 0


def test_kfold_writes_folds_and_aggregate(tiny_cfg, components):
    cfg = tiny_cfg("cv.folds=3", "train.epochs=1", "train.heatmap=false", "data.loader=thread")  # MONAI ThreadDataLoader
    agg = run_experiment(cfg, components=components)
    run = Path(cfg.out_dir) / cfg.name
    per = [json.loads((run / f"fold{k}" / "final_metrics.json").read_text()) for k in range(3)]
    cv = json.loads((run / "cv_metrics.json").read_text())
    vals = [p["c_index"] for p in per if p["c_index"] is not None]
    assert cv["c_index"]["mean"] == pytest.approx(np.mean(vals)) and cv["c_index"]["sd"] == pytest.approx(np.std(vals, ddof=1))
    assert cv["folds"] == 3 and agg["c_index"] == cv["c_index"]
    ids = [pd.read_csv(run / f"fold{k}" / "predictions.csv").id.astype(str).tolist() for k in range(3)]
    assert sorted(sum(ids, [])) == sorted(f for s in json.loads((run / "splits.json").read_text())["splits"] for f in s["val"])
    assert len(set(sum(ids, []))) == 24


def test_early_stopping_and_config_checks(tiny_cfg, components):
    # lr 1e-30 moves no float32 weight: nothing can improve, so training stops after patience=1 validation
    cfg = tiny_cfg("train.epochs=6", "train.patience=1", "optim.lr=1e-30", "train.early_stop_metric=val_loss",
                   "train.early_stop_mode=min", "train.heatmap=false")
    fm = run_experiment(cfg, components=components)
    assert fm["stopped_early"] and fm["epochs"] == 2 and fm["best_epoch"] == 1
    with pytest.raises(ConfigError, match="optim.lr must be a positive number, got 0.0"):
        run_experiment(tiny_cfg("optim.lr=0.0", name="lr0"), components=components)
    other = Path(cfg.out_dir) / "not_a_run"
    (other / "keep.txt").parent.mkdir(parents=True)
    (other / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not a run folder.*refusing"):
        run_experiment(tiny_cfg("train.overwrite=true", name="not_a_run"), components=components)
    assert (other / "keep.txt").read_text() == "precious"
    # a start killed while writing config.yaml leaves only its temporary file (seen in `tune` after kill -9):
    # the next start (as tune's retry does, with overwrite) clears it and runs
    killed = Path(cfg.out_dir) / "killed_mid_config"
    killed.mkdir()
    (killed / ".config.yaml.wofhqstu.tmp").write_text("")
    fm2 = run_experiment(tiny_cfg("train.overwrite=true", "train.epochs=1", "train.heatmap=false",
                                  name="killed_mid_config"), components=components)
    assert fm2["epochs"] == 1 and not list(killed.glob(".config.yaml.*.tmp"))
    with pytest.raises(ConfigError, match="early_stop_metric 'cindex'.*Did you mean 'c_index'"):
        run_experiment(tiny_cfg("train.early_stop_metric=cindex", name="x"), components=components)


def test_warmup_cosine_schedule():
    f = warmup_cosine(100, 10, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_beta_warmup_sets_the_heads_factor_each_epoch(tiny_cfg, components):
    """train.beta_warmup_epochs=W: the softmin head's training factor is start + (1 - start)·e/W in epoch e < W, then 1;
    bad values and a head without β are one-line config errors."""
    seen = []

    def build_model(cfg, spec):
        model = components.model(cfg, spec)
        set_scale = model.head.set_beta_scale
        model.head.set_beta_scale = lambda r: (seen.append(r), set_scale(r))
        return model

    recording = Components(build_model=build_model, build_loss=components.build_loss,
                           generate_case=components.generate_case)
    start = float(np.random.default_rng().uniform(0, 0.5))
    run_experiment(tiny_cfg("train.epochs=4", "train.beta_warmup_epochs=2", f"train.beta_warmup_start={start}",
                            "train.heatmap=false"), components=recording)
    assert seen == pytest.approx([start, start + (1 - start) / 2, 1.0, 1.0])
    assert beta_warmup_factor(3, 0, 0.0) == 1.0 and beta_warmup_factor(1, 4, 0.2) == pytest.approx(0.4)
    for bad, msg in (("train.beta_warmup_epochs=-1", "beta_warmup_epochs must be >= 0"),
                     ("train.beta_warmup_start=1.5", r"beta_warmup_start must be in \[0, 1\]")):
        with pytest.raises(ConfigError, match=msg):
            run_experiment(tiny_cfg(bad, name="bad"), components=components)
    with pytest.raises(ConfigError, match="needs a head with a softmin β; head.name='meanpool'"):
        run_experiment(tiny_cfg("train.beta_warmup_epochs=2", "head.name=meanpool", name="mp"), components=components)


def test_flip_consistency_term_and_config_checks(tiny_cfg, components):
    """train.flip_consistency_weight adds w * flip_consistency of a second, flipped pass to the training loss:
    0 for a model whose loc commutes with flips, the closed-form value for one that marks the neighbouring cubelet;
    the lung mask is flipped with the image; bad values are one-line config errors."""
    from survival3d.contracts import SurvivalOutput
    from survival3d.engine.survival_task import _ModelAndLoss

    class PoolModel(torch.nn.Module):  # loc = cubelet means of the image (+ a shift of one cubelet along W)
        def __init__(self, shift):
            super().__init__()
            self.shift = shift
            self.seen_lungs = []

        def forward(self, image, lung_mask=None, **_):
            self.seen_lungs.append(lung_mask)
            loc = torch.nn.functional.avg_pool3d(image, 2).roll(self.shift, dims=-1)
            valid = torch.ones_like(loc, dtype=torch.bool)
            return SurvivalOutput(pred=loc.flatten(1).mean(1), risk=-loc.flatten(1).mean(1), loc=loc, valid=valid)

    class Zero(torch.nn.Module):
        def forward(self, out, time, event):
            return {"loss": out.pred.sum() * 0}

    rng = np.random.default_rng()
    image = torch.tensor(rng.normal(size=(3, 1, 4, 6, 8)), dtype=torch.float32)
    lung = torch.tensor(rng.random((3, 1, 4, 6, 8)) < 0.5)
    batch = {"image": image, "lung_mask": lung, "time": torch.ones(3), "event": torch.ones(3)}
    equivariant = _ModelAndLoss(PoolModel(0), Zero(), amp=False, flip_weight=0.5)
    assert float(equivariant(batch)["loss"]) == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(equivariant.model.seen_lungs[0], lung)
    flipped_lung = equivariant.model.seen_lungs[1]
    assert any(torch.equal(flipped_lung, lung.flip(d)) for d in
               ([2], [3], [4], [2, 3], [2, 4], [3, 4], [2, 3, 4]))
    torch.manual_seed(int(rng.integers(1 << 30)))
    state = torch.get_rng_state()
    code = int(torch.randint(1, 8, ()))
    dims = [2 + a for a in range(3) if code >> a & 1]
    torch.set_rng_state(state)
    shifted = _ModelAndLoss(PoolModel(1), Zero(), amp=False, flip_weight=0.5)
    loss = float(shifted(batch)["loss"])
    pooled = torch.nn.functional.avg_pool3d(image, 2).double()
    a = pooled.roll(1, dims=-1)
    b = pooled.flip(dims).roll(1, dims=-1).flip(dims)
    assert loss == pytest.approx(0.5 * float((a - b).square().flatten(1).mean(1).mean()), rel=1e-5)
    assert (loss > 1e-3) == (4 in dims)  # only a flip along W turns the W shift around

    run_experiment(tiny_cfg("train.flip_consistency_weight=0.1", "train.heatmap=false", name="ok"), components=components)
    for bad, msg in (("train.flip_consistency_weight=-1", "flip_consistency_weight must be a finite number >= 0"),
                     ("data.image_size=[18,16,16]", r"needs data.image_size \[18, 16, 16\] to be a multiple")):
        with pytest.raises(ConfigError, match=msg):
            run_experiment(tiny_cfg("train.flip_consistency_weight=0.1", bad, name="bad"), components=components)
