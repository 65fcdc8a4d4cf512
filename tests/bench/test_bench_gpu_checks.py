"""The GPU-check script, rehearsed on CPU with ``--tiny``: every check runs and both result files are written."""

from __future__ import annotations

import json

import pytest

from survival3d.bench.gpu_checks import CHECKS, main


@pytest.mark.slow
def test_gpu_checks_tiny_on_cpu_writes_its_files(survival_builders, tmp_path):
    out = tmp_path / "gc"
    rc = main(["--out", str(out), "--device", "cpu", "--tiny", "--compile-backend", "eager", "--no-progress"])
    results = json.loads((out / "gpu_checks.json").read_text())
    failed = {k: results[k].get("check_error") for k in CHECKS if "check_error" in results.get(k, {})}
    assert rc == 0 and not failed, failed
    assert results["plan"]["tiny"] is True and set(results["check_seconds"]) == set(CHECKS)

    main_size = results["plan"]["main_size"]
    for name in ("bench_eager", "bench_compiled"):
        (entry,) = results[name]["results"]
        assert entry["size"] == main_size and set(entry["models"]) == {"survival3d", "monai_swinvit"}
        assert all(r["status"] == "ok" for r in entry["models"].values()), name
        assert entry["ratios"]["train"]["volumes_per_s"] > 0
    compiled = results["bench_compiled"]["results"][0]["models"]["survival3d"]
    assert compiled["infer"]["compiled"] and compiled["train"]["compiled"]
    assert [e["size"] for e in results["bench_large"]["results"]] == results["plan"]["large_sizes"]
    cl = results["channels_last"]
    assert cl["settings"]["channels_last"] is True and cl["results"][0]["models"]["survival3d"]["status"] == "ok"

    huge = results["bench_huge"]
    assert huge["project"]["batch"] == results["plan"]["huge_batch"] and huge["project"]["status"] == "ok"
    assert [m["batch"] for m in huge["monai"]] == results["plan"]["monai_huge_batches"]

    eq = results["compile_equality"]
    assert eq["ok"] and eq["precision"] == "fp32" and eq["grads"]["ok"] and eq["loss"]["ok"]

    sdpa = results["sdpa"]
    assert sdpa["default"]["ok"] and sdpa["default"]["backends"]  # the model does call SDPA in a training step
    assert sdpa["fused_in_training"] == ("math" not in sdpa["default"]["backends"])
    assert sdpa["MATH"]["ok"] and sdpa["MATH"]["backends"] == ["math"]  # the restriction is really applied
    allowed = {"FLASH": {"flash", "flash_cpu"}, "EFFICIENT": {"efficient"}, "FLASH+EFFICIENT": {"flash", "flash_cpu", "efficient"}}
    for label, kernels in allowed.items():
        if sdpa[label]["ok"]:
            assert set(sdpa[label]["backends"]) <= kernels, (label, sdpa[label])
        else:
            assert sdpa[label]["error"], label
    assert not sdpa["EFFICIENT"]["ok"]  # CPU builds have no memory-efficient kernel

    sweep = results["largest_size"]
    assert sweep["largest_ok"] == results["plan"]["sweep_sizes"][-1] and sweep["first_failure"] is None
    assert set(results["goals"]) >= {"train_speed_ratio_main", "train_mem_ratio_main", "huge_train_mem_gib"}
    assert results["goals"]["sdpa_fused_in_training"]["pass"] == sdpa["fused_in_training"]

    md = (out / "gpu_checks.md").read_text()
    for heading in ("## bench_eager", "## bench_compiled", "## channels_last", "## bench_large", "## bench_huge", "## compile_equality",
                    "## sdpa", "## largest_size", "## goals", "TINY rehearsal"):
        assert heading in md, heading
    assert not list(out.glob(".*.tmp"))


def test_gpu_checks_rejects_unknown_check(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x"), "--device", "cpu", "--only", "bench_eager,sdpq"]) == 2
    assert "sdpq" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_gpu_checks_split_over_calls_keeps_earlier_results(survival_builders, tmp_path):
    out = tmp_path / "gc"
    common = ["--out", str(out), "--device", "cpu", "--tiny", "--no-progress"]
    assert main([*common, "--only", "largest_size"]) == 0
    first = json.loads((out / "gpu_checks.json").read_text())
    assert main([*common, "--only", "sdpa"]) == 0
    both = json.loads((out / "gpu_checks.json").read_text())
    assert both["largest_size"] == first["largest_size"] and both["sdpa"]["default"]["ok"]
    assert "## largest_size" in (out / "gpu_checks.md").read_text()
    assert main([*common, "--only", "sdpa", "--fresh"]) == 0
    assert "largest_size" not in json.loads((out / "gpu_checks.json").read_text())
