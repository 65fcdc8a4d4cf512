"""Fault injection (issue #16): each test breaks one thing a hostile but realistic user or machine breaks and checks
the promise of docs/reliability.md — one clear line, a non-zero exit, nothing half-written that looks valid, no run
folder that lies. Numbers in the test names are the issue's items.

Training runs here are tiny (real model and loss, 16^3 dummy volumes, 2-3 epochs, in process); the whole module runs
in well under 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from survival3d.cli import main
from survival3d.config import ExperimentConfig, load_config
from survival3d.errors import ConfigError, InputError
from survival3d.io import write_nifti

ROOT = Path(__file__).parents[2]
TINY = ["model.patch_size=8", "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.window_size=2",
        "head.hidden=[16]", "logging.wandb=false", "logging.progress=false", "data.num_workers=0", "train.heatmap=false"]
DATA = ["data.source=dummy", "data.dummy.level=1", "data.dummy.n=16", "data.dummy.size=16", "data.image_size=[16,16,16]",
        "data.batch_size=4", "data.val_frac=0.34", "optim.warmup_epochs=0"]


def _args(out: Path, name: str, *extra: str) -> list[str]:
    return [f"out_dir={out}", f"name={name}", *DATA, *TINY, *extra]


def _cfg(out: Path, name: str, *extra: str):
    return load_config(None, _args(out, name, *extra), schema=ExperimentConfig)


def _cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run the CLI in process; returns the exit code and the non-empty stderr lines that are not log records."""
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.strip() and " INFO " not in ln and " WARNING " not in ln]


def _train(out: Path, name: str, *extra: str, resume: bool = False):
    from survival3d.engine.experiment import run_experiment

    return run_experiment(_cfg(out, name, *extra), resume=resume)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 3-epoch run with train.final=best (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("runs")
    _train(out, "done", "train.epochs=3", "train.final=best")
    return out / "done"


@pytest.fixture(scope="module")
def manifest_data(tmp_path_factory):
    """A small dummy1 dataset on disk (8 cases of 16^3) and its manifest."""
    from survival3d.data.dummy import write_dummy_dataset

    out = tmp_path_factory.mktemp("dummy")
    return write_dummy_dataset(out, "dummy1", n=8, size=16, progress=False)


# ---------------------------------------------------------------------------------------------- 1: concurrency
def test_1_two_trains_racing_on_one_name_one_wins(tmp_path):
    cmd = [sys.executable, "run.py", "train", *_args(tmp_path, "race", "train.epochs=1", "train.overwrite=false")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=150), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    loser = next(err for c, err in results if c == 2)
    lines = [ln for ln in loser.splitlines() if ln.strip() and " INFO " not in ln]
    assert len(lines) == 1 and ("in use by another train process" in lines[0] or "already exists" in lines[0]), loser
    rows = pd.read_csv(tmp_path / "race" / "metrics.csv")
    assert rows["epoch"].tolist() == [1]  # one run's epochs, once


def test_1_train_into_a_locked_run_folder_is_refused_in_one_line(tmp_path, capsys):
    from survival3d.io import FolderLock

    holder = FolderLock(tmp_path / "busy")
    assert holder.acquire()
    try:
        for extra in ([], ["train.overwrite=true"]):
            code, err = _cli(capsys, "train", *_args(tmp_path, "busy", "train.epochs=1", *extra))
            assert code == 2 and len(err) == 1 and f"in use by another train process (pid {os.getpid()})" in err[0], err
        code, err = _cli(capsys, "train", "--resume", str(tmp_path / "busy"))
        assert code != 0 and len(err) == 1, err
    finally:
        holder.release()
    assert [p.name for p in (tmp_path / "busy").iterdir()] == [FolderLock.NAME]  # nothing written by the refused runs


def test_1_lock_of_a_killed_process_is_not_stale(tmp_path):
    code = ("import sys, time; from survival3d.io import FolderLock; l = FolderLock(sys.argv[1]); "
            "assert l.acquire(); print('locked', flush=True); time.sleep(120)")
    from survival3d.io import FolderLock

    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r")], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout.readline().strip() == "locked"
        held = FolderLock(tmp_path / "r")
        assert not held.acquire() and held.holder() == str(child.pid)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    lock = FolderLock(tmp_path / "r")
    assert lock.acquire()  # the kernel dropped the dead process's lock
    lock.release()


# ---------------------------------------------------------------------------------------------- 2-4: volumes
def _volume_cases(tmp: Path) -> dict[str, tuple[str, str]]:
    """name -> (the file to put in a column, the column): each one a broken volume."""
    import gzip

    aff = np.diag([1.5, 1.5, 1.5, 1.0])
    write_nifti(tmp / "ok.nii.gz", np.random.default_rng().uniform(-1000, 500, (8, 8, 8)).astype(np.float32), aff)
    raw = gzip.decompress((tmp / "ok.nii.gz").read_bytes())
    (tmp / "short.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))  # gzip-valid, data cut short (exit 134)
    (tmp / "trunc.nii.gz").write_bytes((tmp / "ok.nii.gz").read_bytes()[:150])
    (tmp / "text.nii.gz").write_text("id,image\n")
    (tmp / "short.nii").write_bytes(raw[: len(raw) - 100])
    write_nifti(tmp / "flat.nii.gz", np.zeros((8, 8), np.float32), aff)
    write_nifti(tmp / "point.nii.gz", np.zeros((1, 1, 1), np.float32), aff)
    write_nifti(tmp / "4d.nii.gz", np.zeros((8, 8, 8, 3), np.float32), aff)
    nan = np.zeros((8, 8, 8), np.float32)
    nan[np.random.default_rng().integers(0, 8, 3).tolist()] = np.nan
    write_nifti(tmp / "nan.nii.gz", nan, aff)
    write_nifti(tmp / "mask_shape.nii.gz", np.ones((8, 8, 6), np.uint8), aff)
    write_nifti(tmp / "mask_affine.nii.gz", np.ones((8, 8, 8), np.uint8), np.diag([3.0, 3.0, 3.0, 1.0]))
    return {"short_gzip": ("short.nii.gz", "image"), "truncated": ("trunc.nii.gz", "image"),
            "text": ("text.nii.gz", "image"), "short_nii": ("short.nii", "image"), "2d": ("flat.nii.gz", "image"),
            "1cube": ("point.nii.gz", "image"), "4d": ("4d.nii.gz", "image"), "nan": ("nan.nii.gz", "image"),
            "nan_mask": ("nan.nii.gz", "mask"), "mask_shape": ("mask_shape.nii.gz", "mask"),
            "lung_shape": ("mask_shape.nii.gz", "lung_mask"), "mask_affine": ("mask_affine.nii.gz", "mask")}


@pytest.mark.parametrize("case", ["short_gzip", "truncated", "text", "short_nii", "2d", "1cube", "4d", "nan", "nan_mask",
                                  "mask_shape", "lung_shape", "mask_affine"])
def test_2_3_4_bad_volumes_are_named_when_the_manifest_is_loaded(tmp_path, case):
    from survival3d.data.datasets import manifest_cases

    bad, column = _volume_cases(tmp_path)[case]
    rows = [{"id": f"c{i}", "image": "ok.nii.gz", "mask": "ok.nii.gz", "lung_mask": "ok.nii.gz", "time": 5.0 + i,
             "event": i % 2} for i in range(4)]
    rows[2][column] = bad
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(InputError) as e:
        manifest_cases(str(tmp_path / "manifest.csv"))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and str(tmp_path / bad) in msg and f"[{column}]" in msg, msg


def test_2_short_gzip_nifti_exits_1_in_one_line_not_134(tmp_path, capsys):
    _volume_cases(tmp_path)
    rows = [{"id": f"c{i}", "image": "short.nii.gz" if i == 3 else "ok.nii.gz", "time": 5.0 + i, "event": 1} for i in range(6)]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    code, err = _cli(capsys, "train", *_args(tmp_path / "runs", "x"), "data.source=manifest",
                     f"data.manifest={tmp_path / 'm.csv'}")
    assert code == 1 and len(err) == 1 and "short.nii.gz [image]" in err[0], err
    assert not (tmp_path / "runs" / "x").exists()  # 9: the failed start left nothing behind


def test_11_all_zero_lung_mask_warns_naming_the_file(tmp_path, caplog):
    from survival3d.data.datasets import manifest_cases

    _volume_cases(tmp_path)
    write_nifti(tmp_path / "zero.nii.gz", np.zeros((8, 8, 8), np.uint8), np.diag([1.5, 1.5, 1.5, 1.0]))
    rows = [{"id": f"c{i}", "image": "ok.nii.gz", "lung_mask": "zero.nii.gz" if i == 1 else "ok.nii.gz",
             "time": 3.0, "event": 1} for i in range(3)]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    with caplog.at_level(logging.WARNING):
        manifest_cases(str(tmp_path / "m.csv"))
    hits = [r.getMessage() for r in caplog.records if "all zero" in r.getMessage()]
    assert len(hits) == 1 and "zero.nii.gz [lung_mask]" in hits[0] and "c1" in hits[0]


# ---------------------------------------------------------------------------------------------- 5: best/last
def test_5_kill_between_last_and_best_resumes_exactly(tmp_path, monkeypatch):
    import survival3d.engine.loop as loop

    writes: list[tuple[str, int]] = []
    real = loop.save_checkpoint

    def record(path, **state):
        writes.append((Path(path).name, int(state["epoch"])))
        return real(path, **state)

    monkeypatch.setattr(loop, "save_checkpoint", record)
    ref = _train(tmp_path, "ref", "train.epochs=3", "train.final=best")
    last_best = max(i for i, (name, _) in enumerate(writes) if name == "best.pt")  # the run's last best.pt write
    kill_epoch = writes[last_best][1]

    class Killed(BaseException):
        pass

    def kill_before_best(path, **state):
        if Path(path).name == "best.pt" and int(state["epoch"]) == kill_epoch:
            raise Killed  # the process dies after last.pt, before best.pt
        return real(path, **state)

    monkeypatch.setattr(loop, "save_checkpoint", kill_before_best)
    with pytest.raises(Killed):
        _train(tmp_path, "cut", "train.epochs=3", "train.final=best")
    monkeypatch.setattr(loop, "save_checkpoint", real)
    run = tmp_path / "cut"
    # evaluate/explain on the interrupted folder use the checkpoint that holds the best epoch, never the stale best.pt
    from survival3d.engine.checkpoint import find_checkpoint, load_checkpoint

    chosen = load_checkpoint(find_checkpoint(run))
    assert chosen["epoch"] == kill_epoch == chosen["early_stop"]["best_epoch"]
    got = _train(tmp_path, "cut", "train.epochs=3", "train.final=best", resume=True)
    assert got["best_epoch"] == ref["best_epoch"] and got["c_index"] == pytest.approx(ref["c_index"], abs=1e-12)
    pd.testing.assert_frame_equal(pd.read_csv(run / "predictions.csv"), pd.read_csv(tmp_path / "ref" / "predictions.csv"))
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == ref["best_epoch"]


def test_5_unrecoverable_best_is_an_error_not_a_stale_model(trained, tmp_path):
    from survival3d.engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    best["epoch"] = -7  # best.pt of another epoch than last.pt records
    save_checkpoint(run / "checkpoints" / "best.pt", **best)
    if last["early_stop"]["best_epoch"] == last["epoch"]:
        assert find_checkpoint(run) == run / "checkpoints" / "last.pt"
    else:
        with pytest.raises(InputError, match="holds epoch -7"):
            find_checkpoint(run)


# ---------------------------------------------------------------------------------------------- 6: config errors
@pytest.mark.parametrize("override, key", [
    ("optim.lr=-0.001", "optim.lr"), ("optim.lr=nan", "optim.lr"), ("optim.lr=0", "optim.lr"),
    ("model.patch_size=0", "model.patch_size"), ("model.num_heads=5", "model.num_heads"),
    ("data.image_size=[2,2,2]", "data.image_size"),
])
def test_6_config_errors_are_one_line_before_any_folder(tmp_path, capsys, override, key):
    code, err = _cli(capsys, "train", *_args(tmp_path, "bad"), override)
    assert code == 2 and len(err) == 1 and key in err[0], err
    assert not (tmp_path / "bad").exists()


def test_6_resume_with_another_configs_checkpoint_is_one_line(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    config = (run / "config.yaml").read_bytes()
    code, err = _cli(capsys, "train", "--resume", str(run), "model.embed_dim=24", "train.epochs=4")
    assert code == 1 and len(err) == 1 and "does not fit the model" in err[0] and "last.pt" in err[0], err
    assert (run / "config.yaml").read_bytes() == config  # 9: the failed resume did not keep its bad overrides


# ---------------------------------------------------------------------------------------------- 7-8: environment
def test_7_disk_full_during_a_checkpoint_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    import survival3d.engine.checkpoint as ck

    def full(state, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(ck.torch, "save", full)
    monkeypatch.setattr(ck.shutil if hasattr(ck, "shutil") else shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    code, err = _cli(capsys, "train", *_args(tmp_path, "full", "train.epochs=1"))
    assert code == 74 and len(err) == 1, err
    assert "last.pt" in err[0] and "no space left" in err[0] and "inline_container" not in err[0], err
    assert not list((tmp_path).rglob("*.tmp*"))  # no temporary file left behind


def test_7_output_path_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = _cli(capsys, "train", *_args(tmp_path / "file", "r"))
    assert code == 74 and len(err) == 1 and str(tmp_path / "file") in err[0] and "ENOTDIR" in err[0], err


@pytest.mark.parametrize("err_no", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_7_dummy_leaves_no_truncated_image(tmp_path, capsys, monkeypatch, err_no):
    import nibabel as nib

    real = nib.save
    calls = {"n": 0}

    def failing(img, filename):
        calls["n"] += 1
        if calls["n"] == 3:
            Path(filename).write_bytes(b"\x1f\x8b half an image")
            raise OSError(err_no, os.strerror(err_no), str(filename))
        return real(img, filename)

    monkeypatch.setattr(nib, "save", failing)
    code, err = _cli(capsys, "dummy", "--level", "1", "--n", "4", "--size", "16", "--out", str(tmp_path / "d"),
                     "--no-progress")
    assert code == 74 and len(err) == 1 and errno.errorcode[err_no] in err[0], err
    assert not (tmp_path / "d" / "manifest.csv").exists()
    files = [p for p in (tmp_path / "d").rglob("*") if p.is_file()]
    assert not [p for p in files if ".tmp" in p.name]
    for p in files:
        if p.name.endswith(".nii.gz"):
            nib.load(p).get_fdata()  # every image under its final name is complete


def test_8_failed_evaluate_leaves_the_previous_output_untouched(trained, manifest_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    code, err = _cli(capsys, "evaluate", "--checkpoint", str(trained), "--data", str(manifest_data), "--out", str(out))
    assert code == 0, err
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    import survival3d.metrics.figures as figures

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "figures" / "calibration.png"))

    monkeypatch.setattr(figures, "plot_km_by_risk_tertile", full)
    code, err = _cli(capsys, "evaluate", "--checkpoint", str(trained), "--data", str(manifest_data), "--out", str(out),
                     "--horizons", "20,40")
    assert code == 74 and len(err) == 1 and "no space left" in err[0], err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the old output, whole and alone
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]  # no temporary folder left


def test_8_evaluate_refuses_to_replace_a_folder_that_is_not_its_output(trained, manifest_data, tmp_path, capsys):
    code, err = _cli(capsys, "evaluate", "--checkpoint", str(trained), "--data", str(manifest_data), "--out", str(trained))
    assert code == 2 and len(err) == 1 and "not an earlier output" in err[0], err
    assert (trained / "checkpoints" / "last.pt").is_file()


def test_8_one_row_manifest_is_one_line(trained, manifest_data, tmp_path, capsys):
    df = pd.read_csv(manifest_data).head(1)
    df["image"] = [str(manifest_data.parent / p) for p in df["image"]]
    for col in ("mask", "lung_mask", "distractor_mask"):
        if col in df.columns:
            df[col] = [str(manifest_data.parent / p) if isinstance(p, str) else p for p in df[col]]
    df.to_csv(tmp_path / "one.csv", index=False)
    code, err = _cli(capsys, "evaluate", "--checkpoint", str(trained), "--data", str(tmp_path / "one.csv"), "--out",
                     str(tmp_path / "o"))
    assert code == 1 and len(err) == 1 and "1 case(s)" in err[0], err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- 9-11: run lifecycle
def test_9_failed_start_does_not_block_the_name(tmp_path):
    from survival3d.engine.components import Components
    from survival3d.engine.experiment import run_experiment
    from survival3d.io import FolderLock

    def broken_loss(loss_cfg):
        raise ConfigError("loss.name: a loss that fails after the run folder exists")

    cfg = _cfg(tmp_path, "again", "train.epochs=1")
    with pytest.raises(ConfigError):
        run_experiment(cfg, components=Components(build_loss=broken_loss))
    assert not (tmp_path / "again").exists()
    # a start killed before its first checkpoint (config.yaml, no checkpoint, no lock holder) is cleared too
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "config.yaml").write_text("name: stale\n")
    (tmp_path / "again" / FolderLock.NAME).write_text("999999\n")
    res = run_experiment(cfg)
    assert res["epochs"] == 1 and "stale" not in (tmp_path / "again" / "config.yaml").read_text()


def test_10_resume_without_last_is_an_error_not_a_restart(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "checkpoints" / "last.pt").unlink()
    metrics = (run / "metrics.csv").read_bytes()
    code, err = _cli(capsys, "train", "--resume", str(run))
    assert code == 1 and len(err) == 1 and "last.pt" in err[0] and "nothing to resume" in err[0], err
    assert (run / "metrics.csv").read_bytes() == metrics and (run / "checkpoints" / "best.pt").is_file()


def test_11_resume_with_fewer_epochs_than_trained_is_one_line(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    code, err = _cli(capsys, "train", "--resume", str(run), "train.epochs=2")
    assert code == 2 and len(err) == 1 and "train.epochs=2" in err[0] and "3 epochs" in err[0], err


def test_11_resume_of_a_finished_run_says_so(trained, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = json.loads((run / "final_metrics.json").read_text())
    with caplog.at_level(logging.WARNING):
        res = _train(tmp_path, "run", "train.epochs=3", "train.final=best", resume=True)
    assert any("already complete" in r.getMessage() for r in caplog.records)
    assert res["epochs"] == 3 and res["c_index"] == pytest.approx(before["c_index"], abs=1e-12)


def test_11_temp_files_of_killed_checkpoint_writes_are_cleaned(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    stale = [run / "checkpoints" / ".last.pt.k1ll3d.tmp", run / "checkpoints" / ".best.pt.x9.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    _train(tmp_path, "run", "train.epochs=3", "train.final=best", resume=True)
    assert not any(p.exists() for p in stale)


def test_11_times_above_tmax_are_warned(caplog):
    from survival3d.time_grid import TimeGrid

    rng = np.random.default_rng()
    times = rng.uniform(1, 50, 20)
    k = int(rng.integers(1, 5))
    times[:k] = rng.uniform(60, 90, k)
    with caplog.at_level(logging.WARNING):
        counts = TimeGrid(tmax=55).check(times, np.ones(20, int), what="training", source="s")
    assert counts["events_clipped"] == k
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"{k} of 20 training times (s)" in msg and f"{times.max():.4g}" in msg


def test_11_checkpoint_rejection_message_is_complete_and_safe(tmp_path):
    import datetime

    from survival3d.engine.checkpoint import load_checkpoint

    torch.save({"model": {}, "payload": datetime.datetime.now()}, tmp_path / "evil.pt")
    with pytest.raises(InputError) as e:
        load_checkpoint(tmp_path / "evil.pt")
    msg = str(e.value)
    assert "weights_only=False" not in msg and "add_safe_globals" not in msg and msg.endswith(".")
    assert len(msg.splitlines()) == 1 and "datetime" in msg and str(tmp_path / "evil.pt") in msg
