"""A tiny plan through `run.py flex-experiments`: table, plots, resume, and one-line config errors.

The commands run in-process through :func:`survival3d.cli.main` (what ``run.py`` calls): a subprocess would
spend most of the test importing torch and MONAI again.
"""

import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml

from survival3d.cli import main
from survival3d.flex.config import load_flex_config
from survival3d.flex.experiments import expand_grid, spec_label

ROOT = Path(__file__).resolve().parents[2]


def _cli(capsys, *args):
    """Run a command in-process; returns (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _tiny_plan(tmp_path: Path) -> Path:
    plan = {
        "base": str(ROOT / "configs" / "flex" / "base.yaml"),
        "data": {"limit_train": 160, "limit_val": 40},
        "model": {"channels": [4, 8]},
        "train": {"epochs": 1},
        "attack": {"eps_steps": 2, "pgd_steps": 2},
        "grid": {"logits": ["threshold", {"name": "spatial_attention", "n_blocks": 2}, "channelwise_maxpool"],
                 "masking": [{"name": "sharp_sigmoid", "k": 5.0}, "ste"], "seeds": [0, 1]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_grid_expansion_labels_and_joint_runs_once(tmp_path):
    runs = expand_grid(load_flex_config(_tiny_plan(tmp_path)))
    # 2 learned methods × 2 masks × 2 seeds + channelwise_maxpool × 2 seeds
    assert len(runs) == 10 and len({r.run_id for r in runs}) == 10
    joint = [r for r in runs if r.factors["logits"] == "channelwise_maxpool"]
    assert len(joint) == 2 and {r.factors["masking"] for r in joint} == {"-"}
    r = next(r for r in runs if r.factors["logits"].startswith("spatial_attention"))
    assert r.factors["logits"] == "spatial_attention(n_blocks=2)" and r.cfg.model.logits.n_blocks == 2
    assert set(r.factors) == {"dataset", "logits", "masking", "seed"}
    assert spec_label({"name": "sharp_sigmoid", "k": 5.0}) == "sharp_sigmoid(k=5)"
    assert {tuple(r.cfg.grid.seeds) for r in runs} == {(0,), (1,)}


@pytest.mark.timeout(150)
def test_tiny_plan_writes_table_and_resumes(tmp_path, capsys, caplog):
    plan, out = _tiny_plan(tmp_path), tmp_path / "out"
    code, _, err = _cli(capsys, "flex-experiments", "--plan", plan, "--out", out, "--quiet", "grid.seeds=[0]")
    assert code == 0, err
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 5
    assert set(table.logits) == {"threshold", "spatial_attention(n_blocks=2)", "channelwise_maxpool"}
    for col in ("val_acc", "fgsm_auc", "pgd_auc", "params", "train_time_s", "conv_ratio"):
        assert table[col].notna().all(), col
    assert table.val_acc.between(0, 1).all() and (table.pgd_auc <= table.val_acc + 1e-9).all()
    md = (out / "results.md").read_text()
    assert md.count("\n| digits |") == 5 and "FGSM AUC" in md and "PGD AUC" in md
    for png in ("robust_accuracy.png", "conv_ratio.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    assert len(stamps) == 5
    # resume: same plan, nothing re-trained; a changed override re-runs only what changed
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="survival3d"):  # the skip is logged by survival3d.engine.grid
        code, _, _ = _cli(capsys, "flex-experiments", "--plan", plan, "--out", out, "--quiet", "grid.seeds=[0]")
    assert code == 0 and sum("skipped" in m for m in caplog.messages) == 5
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")} == stamps


def test_list_and_config_errors(tmp_path, capsys):
    plan, o = _tiny_plan(tmp_path), tmp_path / "o"
    code, out, _ = _cli(capsys, "flex-experiments", "--plan", plan, "--out", o, "--list")
    assert code == 0 and len(out.split()) == 10
    code, _, err = _cli(capsys, "flex-experiments", "--plan", plan, "--out", o, "--list", "grid.logits=[treshold]")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Did you mean 'threshold'" in err
    code, _, err = _cli(capsys, "flex-experiments", "--plan", plan, "--out", o, "model.chanels=[4]")
    assert code == 2 and "Did you mean 'channels'" in err
    code, _, err = _cli(capsys, "flex-train", "--out", o, "data.name=cifar10", f"data.root={tmp_path}")
    assert code == 1 and "cifar-10-batches-py" in err and "data.root" in err
    assert not (o / "result.json").exists()
    code, out, _ = _cli(capsys, "--help")
    assert code == 0 and "flex-experiments" in out and "flex-train" in out
    code, _, err = _cli(capsys, "flex", "--help")
    assert code == 2 and "invalid choice" in err  # the placeholder name is gone
