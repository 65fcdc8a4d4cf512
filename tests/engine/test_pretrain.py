"""run.py pretrain on the one engine, and fine-tuning from its encoder (model.init, layer decay, frozen warm-up)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from survival3d.cli import main
from survival3d.config import ExperimentConfig, load_config
from survival3d.engine.checkpoint import load_checkpoint
from survival3d.engine.loop import Engine, EngineSettings, Task
from survival3d.engine.pretrain_task import run_pretraining
from survival3d.io import write_nifti
from survival3d.models.pretrain import MaskedCubeletAutoencoder

TINY = ["model.patch_size=4", "model.embed_dim=12", "model.depth=2", "model.num_heads=2", "model.window_size=2",
        "pretrain.decoder_dim=12", "pretrain.decoder_heads=2", "head.hidden=[8]", "logging.wandb=false",
        "logging.progress=false", "data.num_workers=0", "optim.warmup_epochs=0"]


def _cfg(tmp_path, *overrides, name="pre"):
    base = [f"out_dir={tmp_path / 'runs'}", f"name={name}", "data.source=dummy", "data.dummy.level=3",
            "data.dummy.n=12", "data.dummy.size=25", "data.image_size=[16,16,16]", "data.batch_size=4",
            "data.val_frac=0.34", "train.epochs=2", *TINY]
    return load_config(None, [*base, *overrides], schema=ExperimentConfig)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class _Crash(RuntimeError):
    pass


class _CrashAfter:
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, engine, epoch, row):
        if epoch == self.epoch:
            raise _Crash  # after the epoch's checkpoint: what a kill at the epoch boundary leaves


def test_pretrain_vq_logs_usage_and_perplexity_and_writes_figure(tmp_path):
    cfg = _cfg(tmp_path, "model.vq_codes=16")
    final = run_pretraining(cfg)
    run = Path(cfg.out_dir) / cfg.name
    rows = _rows(run / "metrics.csv")
    assert len(rows) == 2
    for r in rows:
        assert float(r["codebook_usage"]) * 16 > 1  # more than one code in use
        assert 1.0 < float(r["perplexity"]) <= 16.0
        assert float(r["train_vq"]) > 0 and np.isfinite(float(r["val_recon"]))
    assert (run / "reconstruction.png").stat().st_size > 10_000
    assert final["volumes_per_s"] > 0
    ck = load_checkpoint(run / "checkpoints/last.pt")
    assert ck["kind"] == "pretrain" and "quantizer.codebook" in ck["model"]
    assert json.loads((run / "final_metrics.json").read_text())["epochs"] == 2


def test_pretrain_resume_equals_uninterrupted_run(tmp_path):
    whole = _cfg(tmp_path, "train.epochs=3", "model.vq_codes=8", "pretrain.figure=false", name="whole")
    run_pretraining(whole)
    broken = _cfg(tmp_path, "train.epochs=3", "model.vq_codes=8", "pretrain.figure=false", name="broken")
    with pytest.raises(_Crash):
        run_pretraining(broken, callbacks=[_CrashAfter(1)])
    bdir = Path(broken.out_dir) / broken.name
    assert load_checkpoint(bdir / "checkpoints/last.pt")["epoch"] == 2
    run_pretraining(broken, resume=True)
    wdir = Path(whole.out_dir) / whole.name
    a, b = _rows(wdir / "metrics.csv"), _rows(bdir / "metrics.csv")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        for k in ("step", "lr", "train_loss", "train_recon", "train_vq", "val_loss", "codebook_usage", "perplexity"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-6, abs=1e-9), k
    wa = load_checkpoint(wdir / "checkpoints/last.pt")["model"]
    wb = load_checkpoint(bdir / "checkpoints/last.pt")["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-7, msg=k)


class _ConstantTask(Task):
    """Reconstruct a constant volume (raw targets) with the autoencoder, on the engine."""

    def setup(self, engine, state):
        torch.manual_seed(0)
        self.model = MaskedCubeletAutoencoder(patch_size=4, embed_dim=12, depth=1, num_heads=2, window_size=2,
                                              decoder_dim=12, decoder_heads=2, mask_ratio=0.6, norm_target=False)
        self.module = self.model
        self.train_loader = [torch.full((2, 1, 16, 16, 16), 0.7)] * 10

    def training_step(self, module, batch):
        out = module(batch)
        return {"loss": out["loss"], "n": batch.shape[0]}


def test_constant_volume_reconstruction_learnable_to_near_zero(tmp_path):
    task = _ConstantTask()
    settings = EngineSettings(epochs=40, optimizer={"name": "adamw", "lr": 3e-3}, progress=False,
                              metrics_columns=("epoch", "train_loss"), save_last=False, save_best=False)
    Engine(task, settings, tmp_path / "const").fit()
    rows = _rows(tmp_path / "const/metrics.csv")
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    with torch.no_grad():
        out = task.model(torch.full((3, 1, 16, 16, 16), 0.7))
    assert first > 0.05  # a 0.7 target from outputs near 0 at the start
    assert float(out["recon"]) < 5e-4 and last < 5e-4  # measured: 0.44 -> 1.1e-4 after 400 steps


def _nifti_manifest(tmp_path, n=6, with_labels=False):
    rng = np.random.default_rng(0)
    lines = ["id,image" + (",time,event" if with_labels else "")]
    for i in range(n):
        vol = rng.normal(-600, 200, (18, 18, 18)).astype(np.float32)
        write_nifti(tmp_path / f"img{i}.nii.gz", vol, np.diag([1.5, 1.5, 1.5, 1.0]))
        lines.append(f"c{i},img{i}.nii.gz" + (f",{10 + i},1" if with_labels else ""))
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.csv"


def test_pretrain_cli_on_manifest_without_survival_columns(tmp_path, capsys):
    m = _nifti_manifest(tmp_path)
    args = ["pretrain", f"data.manifest={m}", "data.source=manifest", f"out_dir={tmp_path / 'runs'}", "name=man",
            "data.image_size=[16,16,16]", "data.batch_size=2", "data.val_frac=0.34", "train.epochs=1", *TINY]
    assert main(args) == 0
    assert "validation reconstruction loss" in capsys.readouterr().out
    assert len(_rows(tmp_path / "runs/man/metrics.csv")) == 1
    (tmp_path / "bad.csv").write_text("id,img\nc0,img0.nii.gz\n")
    code = main([*args[:1], f"data.manifest={tmp_path / 'bad.csv'}", *args[2:], "name=bad"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "bad.csv" in err and "'image'" in err


def test_finetune_loads_encoder_freezes_it_and_reports_mismatch(tmp_path, capsys):
    pre = _cfg(tmp_path, "train.epochs=1", "pretrain.figure=false", name="pre")
    run_pretraining(pre)
    pre_w = load_checkpoint(tmp_path / "runs/pre/checkpoints/last.pt")["model"]
    common = [f"out_dir={tmp_path / 'runs'}", "data.dummy.level=3", "data.dummy.n=12", "data.dummy.size=25",
              "data.image_size=[16,16,16]", "data.batch_size=4", "data.val_frac=0.34", "train.heatmap=false",
              "train.epochs=1", *TINY]
    assert main(["train", *common, "name=ft", f"model.init={tmp_path / 'runs/pre'}", "train.freeze_encoder_epochs=1",
                 "optim.layer_decay=0.5"]) == 0
    ft_w = load_checkpoint(tmp_path / "runs/ft/checkpoints/last.pt")["model"]
    enc = [k for k in pre_w if k.startswith(("embed.", "transformer."))]
    assert enc
    for k in enc:  # loaded, then frozen for the only epoch
        assert torch.equal(ft_w[k], pre_w[k]), k
    scratch = load_checkpoint(tmp_path / "runs/pre/checkpoints/last.pt")
    assert scratch["model"]["embed.stem.0.weight"].shape == ft_w["embed.stem.0.weight"].shape
    capsys.readouterr()
    code = main(["train", *common, "name=bad", f"model.init={tmp_path / 'runs/pre'}", "model.embed_dim=18"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "last.pt" in err and "'embed.stem.0.weight'" in err and "(12, 1, 4, 4, 4)" in err


def test_layer_decay_groups_reach_the_optimiser(tmp_path):
    from survival3d.data.datasets import load_cases
    from survival3d.engine.experiment import make_splits
    from survival3d.engine.survival_task import SurvivalTask

    cfg = _cfg(tmp_path, "optim.layer_decay=0.5", "optim.lr=1e-3", name="ld")
    cases = load_cases(cfg.data)
    task = SurvivalTask(cfg, cases, make_splits(cfg, cases)[0])
    eng = Engine(task, EngineSettings(epochs=1, optimizer={"name": "adamw", "lr": 1e-3}, progress=False), tmp_path / "x")
    eng._setup(None)
    lr_of = {id(p): g["lr"] for g in eng.optimizer.param_groups for p in g["params"]}
    named = dict(task.model.named_parameters())
    assert lr_of[id(named["embed.stem.0.weight"])] == pytest.approx(1e-3 * 0.5 ** 3)
    assert lr_of[id(named["transformer.blocks.1.attn.qkv.weight"])] == pytest.approx(1e-3 * 0.5)
    head = [n for n in named if n.startswith("head.")][0]
    assert lr_of[id(named[head])] == pytest.approx(1e-3)
