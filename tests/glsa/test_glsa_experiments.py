import math

import pandas as pd
import pytest
import yaml
from scipy.stats import ttest_rel

from survival3d.cli import main
from survival3d.errors import ConfigError
from survival3d.glsa.experiments import expand_plan, load_plan, paired_p_value




def _plan(tmp_path, **extra):
    plan = {
        "name": "tiny",
        "output_dir": str(tmp_path / "out"),
        "seeds": [0, 1],
        "overrides": ["train.epochs=1", "data.max_samples=80", "model.width=8", "model.num_heads=2",
                      "train.gradcam_images=0"],
        "datasets": {"digits": {"config": "glsa/digits.yaml"}},
        "studies": {"cbam_impact": {"backbone": ["resnet18"], "attention": ["none", "cbam"], "baseline": {"attention": "none"}}},
        **extra,
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_plan_expansion_deduplicates_and_adds_baselines(tmp_path):
    path = _plan(tmp_path, studies={
        "fusion_ablation": {"backbone": ["resnet18"], "fusion": ["learnable_gate", "cross_attn"], "baseline": {"fusion": "original"}},
        "residual_ablation": {"backbone": ["resnet18"], "residual": ["original", "drop_path"], "baseline": {"residual": "original"}},
    })
    plan, _ = load_plan(path)
    runs = expand_plan(plan)
    names = {r.run_id for r in runs}
    assert len(names) == len(runs) == 2 * 4  # (gate, cross, original-baseline, drop_path) x 2 seeds
    assert "digits_resnet18_s1_original_original_cbam" in names
    r = next(r for r in runs if r.run_id == "digits_resnet18_s1_original_original_cbam")
    assert r.factors == {"dataset": "digits", "backbone": "resnet18", "attention": "cbam", "fusion": "original",
                         "residual": "original", "seed": 1}


def test_bad_plans(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'seeds'"):
        load_plan(_plan(tmp_path, seedz=[1]))
    with pytest.raises(ConfigError, match="unknown factor"):
        load_plan(_plan(tmp_path, studies={"s": {"baseline": {"optimizer": "sgd"}}}))
    with pytest.raises(ConfigError, match="metric"):
        load_plan(_plan(tmp_path, metric="auc"))


def test_paired_p_value_is_scipy_ttest_rel(rng):
    a = {s: float(v) for s, v in enumerate(rng.random(5))}
    b = {s: float(v) for s, v in enumerate(rng.random(5))}
    b[7] = 0.5  # unpaired seed ignored
    assert paired_p_value(a, b) == pytest.approx(ttest_rel(list(a.values()), [b[s] for s in a]).pvalue)
    assert math.isnan(paired_p_value({0: 0.5}, {0: 0.4}))
    assert math.isnan(paired_p_value({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5}))  # constant difference


@pytest.mark.slow
def test_glsa_experiments_cli_writes_tables_and_resumes(tmp_path, caplog):
    path = _plan(tmp_path)
    assert main(["glsa-experiments", "--plan", str(path)]) == 0
    out = tmp_path / "out"
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and set(results["attention"]) == {"none", "cbam"}
    md = (out / "tables" / "cbam_impact_digits.md").read_text()
    tex = (out / "tables" / "cbam_impact_digits.tex").read_text()
    assert "| resnet18 | cbam | original | original |" in md and "baseline" in md and "±" in md
    assert "\\begin{tabular}" in tex and "$\\pm$" in tex and "\\bottomrule" in tex
    cbam_row = next(line for line in md.splitlines() if "| cbam |" in line)
    p = cbam_row.split("|")[-3].strip()
    accs = results.sort_values("seed").groupby("attention")["balanced_accuracy"].apply(list)
    expected = paired_p_value(dict(enumerate(accs["cbam"])), dict(enumerate(accs["none"])))
    assert p == ("n/a" if math.isnan(expected) else (f"{expected:.3f}" if expected >= 0.001 else "<0.001"))
    assert "Impact of CBAM" in (out / "tables.md").read_text()
    # a second call trains nothing and keeps the finished runs
    stamp = (out / "runs" / "digits_resnet18_s0_original_original_cbam" / "results.json").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="survival3d"):
        assert main(["glsa-experiments", "--plan", str(path)]) == 0
    assert "4 finished, 0 to train" in caplog.text
    assert (out / "runs" / "digits_resnet18_s0_original_original_cbam" / "results.json").stat().st_mtime_ns == stamp


def test_cli_registers_the_glsa_commands(capsys):
    from survival3d.cli import COMMANDS, build_parser

    build_parser()
    assert {"glsa-train", "glsa-experiments"} <= set(COMMANDS.keys()) and "glsa" not in COMMANDS
    with pytest.raises(SystemExit) as e:
        main(["glsa-experiments", "--help"])
    assert e.value.code == 0 and "--plan" in capsys.readouterr().out


def test_cli_unknown_config_key_exits_2(tmp_path, capsys):
    assert main(["glsa-train", "--config", "configs/glsa/digits.yaml", "model.fusoin=learnable_gate"]) == 2
    assert "Did you mean 'model.fusion'" in capsys.readouterr().err
