import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import engine_standins as standins

ROOT = Path(__file__).parents[2]


def _run(*args, timeout=60):
    return subprocess.run([sys.executable, "run.py", "train", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["model.dpeth=3"], r"unknown config key 'model.dpeth'.*Did you mean 'model.depth'"),
        (["train.epochs=many"], r"invalid value for 'train.epochs'"),
        (["--resume", "/nonexistent/run"], r"no config.yaml there"),
        (["--config", "no_such_config.yaml"], r"config file 'no_such_config.yaml' not found"),
        (["--bogus"], r"unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args, pattern):
    proc = _run(*args)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and re.search(pattern, lines[0]), proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_default_job_reaches_the_oracle_c_index(tmp_path):
    if not (standins.REAL_MODEL and standins.REAL_LOSS and standins.REAL_DUMMY):
        pytest.skip("needs survival3d.models, survival3d.losses and survival3d.data.dummy")
    # the embedded default job (dummy1, 96 cases of 32^3, lr 1e-3), shortened for CI to 6 epochs
    proc = _run(f"out_dir={tmp_path}", "train.epochs=6", "logging.wandb=false", "logging.progress=false",
                timeout=230)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"validation C-index ([\d.]+) \(oracle C-index ([\d.]+)\)", proc.stdout)
    assert m, proc.stdout
    c, oracle = float(m.group(1)), float(m.group(2))
    fm = json.loads((tmp_path / "default" / "final_metrics.json").read_text())
    assert fm["c_index"] == pytest.approx(c, abs=1e-4) and fm["c_index_oracle"] == pytest.approx(oracle, abs=1e-4)
    assert c >= oracle - 0.05, f"C-index {c:.4f} vs oracle {oracle:.4f}"
    heat = re.search(r"heatmap: (\S+\.png)", proc.stdout)
    assert heat and Path(heat.group(1)).is_file()
