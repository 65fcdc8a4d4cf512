"""`run.py bench` on CPU at a tiny size: valid JSON with both models and the ratios; OOM and compile fallbacks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from survival3d.bench.contenders import SurvivalContender
from survival3d.bench.runner import BASELINE, PROJECT, format_markdown, run_bench
from survival3d.cli import main

TINY = ["--size", "16", "--batch", "1", "--steps", "1", "--warmup", "1", "--device", "cpu", "--no-progress"]
FAST_MONAI = {BASELINE: {"embed_dim": 12}}  # SwinUNETR widths / 4: these tests check plumbing, not speed


def test_bench_cli_cpu_emits_json_with_both_models_and_ratios(survival_builders, tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    assert main(["bench", *TINY, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["environment"]["device"] == "cpu" and report["settings"]["dtype"] == "fp32"
    (entry,) = report["results"]
    assert entry["size"] == 16 and set(entry["models"]) == {PROJECT, BASELINE}
    for name, rec in entry["models"].items():
        assert rec["status"] == "ok" and rec["batch"] == 1 and rec["params"] > 0, name
        for mode in ("train", "infer"):
            m = rec[mode]
            assert m["status"] == "ok" and len(m["times_s"]) == 1, (name, mode)
            assert m["median_s"] > 0 and math.isclose(m["volumes_per_s"], 1 / m["median_s"], rel_tol=1e-9)
            assert m["flops"] > 0 and math.isclose(m["tflops_per_s"], m["flops"] / m["median_s"] / 1e12, rel_tol=1e-9)
            assert m["compiled"] is False
        assert math.isfinite(rec["train"]["final_loss"])
    ours, monai = entry["models"][PROJECT], entry["models"][BASELINE]
    for mode in ("train", "infer"):
        r = entry["ratios"][mode]
        assert math.isclose(r["volumes_per_s"], ours[mode]["volumes_per_s"] / monai[mode]["volumes_per_s"], rel_tol=1e-9)
        assert math.isclose(r["tflops_per_s"], ours[mode]["tflops_per_s"] / monai[mode]["tflops_per_s"], rel_tol=1e-9)
        if ours[mode]["peak_mem_bytes"] is not None and monai[mode]["peak_mem_bytes"]:
            assert math.isclose(r["peak_mem_bytes"], ours[mode]["peak_mem_bytes"] / monai[mode]["peak_mem_bytes"])
    assert ours["config"]["covariates"]["num_numeric"] >= 1 and ours["config"]["covariates"]["cardinalities"]
    assert monai["config"]["embed_dim"] == 48 and monai["config"]["window_size"] == [7, 7, 7]
    table = capsys.readouterr().out
    assert f"| 16³ | {PROJECT} | 1 |" in table and f"| 16³ | {BASELINE} | 1 |" in table and "Ratios" in table


def test_bench_overrides_reach_the_project_model(survival_builders, tmp_path):
    out = tmp_path / "b.json"
    args = ["bench", *TINY, "--models", PROJECT, "--modes", "infer", "--no-flops", "--json", str(out)]
    assert main([*args, "model.embed_dim=24", "head.beta_init=3.0"]) == 0
    rec = json.loads(out.read_text())["results"][0]["models"][PROJECT]
    assert rec["config"]["model"]["embed_dim"] == 24 and rec["config"]["head"]["beta_init"] == 3.0
    assert "train" not in rec and rec["infer"]["status"] == "ok" and "flops" not in rec["infer"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "monai_swinvt"], "did you mean"),
        (["model.dpeth=4"], "unknown config key"),
        (["--sizes", "12,x"], "comma-separated"),
        (["--modes", "train,fit"], "--modes"),
        (["--batch", "0"], "positive integer"),
    ],
)
def test_bench_bad_arguments_exit_2_with_one_line(capsys, tmp_path, args, message):
    out = tmp_path / "never.json"
    try:
        rc = main(["bench", *TINY, "--json", str(out), *args])
    except SystemExit as e:  # argparse rejects malformed values itself
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.lower() in err.lower()
    assert not out.exists()


def _oom(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")


def test_oom_in_one_model_is_reported_not_raised(survival_builders, monkeypatch):
    monkeypatch.setattr(SurvivalContender, "loss", _oom)
    report = run_bench(
        [16], 1, device=torch.device("cpu"), steps=1, warmup=1, flops=False, progress=False, options=FAST_MONAI
    )
    (entry,) = report["results"]
    ours, monai = entry["models"][PROJECT], entry["models"][BASELINE]
    assert ours["train"]["status"] == "oom" and "OutOfMemoryError" in ours["train"]["error"]
    assert ours["infer"]["status"] == "ok" and ours["status"] == "oom"
    assert monai["status"] == "ok" and monai["train"]["status"] == "ok"
    assert entry["ratios"]["train"]["volumes_per_s"] is None and entry["ratios"]["infer"]["volumes_per_s"] > 0
    table = format_markdown(report)
    assert f"| 16³ | {PROJECT} | 1 | OOM | OOM | OOM | OOM |" in table
    assert "n/a" in table.split("Ratios")[1]


def test_oom_while_building_is_reported(survival_builders, monkeypatch, capsys):
    monkeypatch.setattr(SurvivalContender, "make_inputs", _oom)
    assert main(["bench", *TINY, "--models", PROJECT, "--no-flops"]) == 0
    assert f"| 16³ | {PROJECT} | 1 | OOM |" in capsys.readouterr().out


def test_compile_failure_falls_back_to_eager(survival_builders, monkeypatch, caplog):
    class Broken(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise RuntimeError("inductor: simulated compiler crash")

    monkeypatch.setattr(torch, "compile", lambda module, **kw: Broken())
    report = run_bench(
        [16], 1, device=torch.device("cpu"), models=[PROJECT], compile=True, steps=1, warmup=1, flops=False,
        progress=False,
    )
    rec = report["results"][0]["models"][PROJECT]
    assert rec["status"] == "ok"
    assert "simulated compiler crash" in rec["infer"]["compile_fallback"] and rec["infer"]["compiled"] is False
    assert rec["train"]["status"] == "ok" and rec["train"]["compiled"] is False
    assert any("falling back to eager" in r.message for r in caplog.records)
