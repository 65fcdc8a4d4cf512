"""Measurement primitives and checks, against closed-form references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from survival3d.bench.checks import _compare, classify_sdpa_op, sdpa_ops
from survival3d.bench.contenders import BENCH_MODELS, checkpoint_blocks
from survival3d.bench.gpu_checks import evaluate_goals
from survival3d.bench.measure import PeakMemory, count_flops, is_oom_error, resolve_device, time_calls


def test_count_flops_matches_closed_form(rng):
    n, a, b = (int(v) for v in rng.integers(2, 20, size=3))
    lin = nn.Linear(a, b)
    assert count_flops(lambda: lin(torch.randn(n, a))) == 2 * n * a * b
    bs, h, s, d = (int(v) for v in rng.integers(1, 6, size=4))
    q = torch.randn(bs, h, s, d)
    # forward SDPA = QK^T and PV: 2 matmuls of 2*s*s*d each per (batch, head); counted on CPU too
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 4 * bs * h * s * s * d


def test_time_calls_counts_and_validates():
    calls = []
    times = time_calls(lambda: calls.append(1), steps=3, warmup=2, device=torch.device("cpu"))
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0 for t in times)
    with pytest.raises(ValueError, match="steps"):
        time_calls(lambda: None, steps=0, warmup=0, device=torch.device("cpu"))


def test_peak_memory_sees_a_large_cpu_allocation():
    with PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del x
    if mem.kind is None:
        pytest.skip("peak RSS cannot be reset here (/proc/self/clear_refs not writable)")
    assert mem.kind == "cpu_rss_peak_delta" and mem.peak_bytes >= 48 * 2**20


def test_oom_detection():
    assert is_oom_error(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    assert is_oom_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1e12 bytes"))
    assert not is_oom_error(RuntimeError("mha_graph.execute(handle, ...) is_good() failed"))
    assert not is_oom_error(ValueError("out of memory"))


def test_resolve_device_rejects_unknown():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError):
        resolve_device("tpu:7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            resolve_device("cuda")


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.GELU()) for _ in range(3))
        self.other = nn.ModuleList([nn.Linear(8, 8)])  # smaller, not named *blocks: must not be chosen

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return self.other[0](x)


def test_checkpoint_blocks_keeps_values_and_gradients():
    model, x = _Toy(), torch.randn(4, 8)
    ref = model(x)
    ref.square().sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    assert checkpoint_blocks(model) == ["blocks.0", "blocks.1", "blocks.2"]
    out = model(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref)
    for g, r in zip([p.grad for p in model.parameters()], ref_grads):
        torch.testing.assert_close(g, r)
    with pytest.raises(ValueError, match="ModuleList"):
        checkpoint_blocks(nn.Linear(2, 2))


def test_checkpointing_the_survival_model_keeps_gradients(survival_builders):
    c = BENCH_MODELS.get("survival3d")(size=16, batch=2, device=torch.device("cpu"))
    c.module.train()
    inputs = c.make_inputs()
    c.loss(inputs).backward()
    ref = {n: p.grad.clone() for n, p in c.module.named_parameters() if p.grad is not None}
    c.module.zero_grad(set_to_none=True)
    assert checkpoint_blocks(c.module)
    c.loss(inputs).backward()
    got = {n: p.grad for n, p in c.module.named_parameters() if p.grad is not None}
    assert got.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_compare_flags_differences_beyond_tolerance(rng):
    ref = torch.from_numpy(rng.normal(size=(3, 5)).astype(np.float32)) * 50
    assert _compare(ref + 1e-6, ref, rtol=1e-4, atol_rel=1e-5)["ok"]
    bad = ref.clone()
    bad[1, 2] += 0.1
    res = _compare(bad, ref, rtol=1e-4, atol_rel=1e-5)
    assert not res["ok"] and res["max_abs_diff"] == pytest.approx(0.1, rel=1e-3)


def test_sdpa_ops_reports_the_kernel_that_ran():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(2, 3, 16, 8, requires_grad=True)

    def step():
        F.scaled_dot_product_attention(q, q, q).sum().backward()

    with sdpa_kernel([SDPBackend.MATH]):
        found = sdpa_ops(step)
    assert found["backends"] == ["math"]
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        found = sdpa_ops(step)
    assert found["backends"] == ["flash_cpu"] and found["backward_backends"] == ["flash_cpu"]
    assert classify_sdpa_op("aten::_scaled_dot_product_efficient_attention_backward") == "efficient"
    assert classify_sdpa_op("aten::_scaled_dot_product_cudnn_attention") == "cudnn"
    assert classify_sdpa_op("aten::mm") is None


def _entry(size, ours, monai):
    def rec(vps, mem):
        return {"train": {"status": "ok", "volumes_per_s": vps, "peak_mem_bytes": mem}}

    return {"results": [{"size": size, "models": {"survival3d": rec(*ours), "monai_swinvit": rec(*monai)}}]}


def test_evaluate_goals_thresholds():
    gib = 2**30
    results = {
        "plan": {"main_size": 128},
        "bench_eager": _entry(128, (80.0, 3 * gib), (17.6, 16 * gib)),
        "bench_compiled": _entry(128, (100.0, 2.5 * gib), (15.0, 16 * gib)),
        "bench_huge": {
            "project": {"train": {"status": "ok", "volumes_per_s": 11.0, "peak_mem_bytes": 39 * gib}},
            "monai": [{"batch": 1, "train": {"status": "ok", "volumes_per_s": 2.6}}, {"batch": 2, "train": {"status": "oom"}}],
        },
    }
    g = evaluate_goals(results)
    assert g["train_speed_ratio_main"]["value"] == pytest.approx(100 / 17.6) and g["train_speed_ratio_main"]["pass"]
    assert g["train_mem_ratio_main"]["value"] == pytest.approx(2.5 / 16) and g["train_mem_ratio_main"]["pass"]
    assert g["train_volumes_per_s_main"]["pass"] and g["huge_train_mem_gib"]["pass"]
    assert g["huge_speed_ratio_vs_monai_b1"]["value"] == pytest.approx(11 / 2.6) and g["huge_speed_ratio_vs_monai_b1"]["pass"]
    results["bench_huge"]["project"]["train"]["peak_mem_bytes"] = 41 * gib
    results["bench_eager"] = _entry(128, (80.0, 4 * gib), (17.6, 16 * gib))
    results["bench_compiled"] = _entry(128, (60.0, 2 * gib), (15.0, 16 * gib))  # slower: not the one judged
    g = evaluate_goals(results)
    assert g["train_speed_ratio_main"]["pass"] is False and g["train_mem_ratio_main"]["pass"] is False
    assert g["huge_train_mem_gib"]["pass"] is False
    assert evaluate_goals({"plan": {"main_size": 128}})["train_speed_ratio_main"]["pass"] is None


def test_contender_checkpointing_flag_keeps_gradients(survival_builders, rng):
    seed = int(rng.integers(2**31))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(seed)  # same initial weights for both builds
        c = BENCH_MODELS.get("survival3d")(size=16, batch=2, device=torch.device("cpu"), checkpointing=checkpointing)
        assert bool(c.describe()["checkpointed"]) == checkpointing
        c.module.train()
        if not grads:
            inputs = c.make_inputs()
        c.loss(inputs).backward()
        grads.append({n: p.grad for n, p in c.module.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)
