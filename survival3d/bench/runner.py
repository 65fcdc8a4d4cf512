"""Time training and inference of benchmark contenders and compare them: the engine behind ``run.py bench``.

For each model, size and batch: build the model, time inference (forward + heatmap under ``torch.no_grad``; not
``inference_mode``, whose tensors a model may cache, e.g. window index tables, and then fail to save for backward
in the training steps), then training steps (zero-grad, forward, loss, backward, AdamW step; fused AdamW on CUDA,
no host synchronisation inside the step), each after warm-up, with the median over the timed steps.
FLOPs of one inference pass and of one training forward + backward are counted with
``torch.utils.flop_counter.FlopCounterMode`` on the eager module; achieved TFLOP/s = FLOPs / median step time.
An out-of-memory error in one model/size/mode is recorded as ``status = "oom"`` and the benchmark goes on; any
other runtime error is recorded as ``status = "error"`` with its message.

The report is a JSON-able dict (see :func:`run_bench`) and a markdown table (:func:`format_markdown`).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from survival3d.io import atomic_write
from survival3d.bench.contenders import BENCH_MODELS, BenchContender
from survival3d.bench.measure import (
    PeakMemory,
    autocast,
    count_flops,
    free_memory,
    is_oom_error,
    median,
    synchronize,
    time_calls,
)

__all__ = [
    "PROJECT",
    "BASELINE",
    "MODES",
    "RATIO_METRICS",
    "bench_model",
    "run_bench",
    "ratios",
    "environment",
    "format_markdown",
    "write_json",
    "write_text",
]

log = logging.getLogger(__name__)

PROJECT = "survival3d"
BASELINE = "monai_swinvit"
MODES = ("train", "infer")
RATIO_METRICS = ("volumes_per_s", "peak_mem_bytes", "tflops_per_s")


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, stored with every report."""
    import monai

    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu_total_mem_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return env


def _make_optimizer(module: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if device.type == "cuda":
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    return torch.optim.AdamW(params, lr=1e-4)


def _compile(contender: BenchContender, backend: str) -> None:
    """Compile from a clean slate: dynamo caches graphs per code object, so models of the same class at earlier
    sizes would otherwise count towards its recompile limit (past which it silently runs eager)."""
    torch._dynamo.reset()
    contender.net = torch.compile(contender.module, backend=backend)


def _with_compile_fallback(contender: BenchContender, fn: Callable[[], Any], record: dict[str, Any]) -> None:
    """Run ``fn`` once; if the compiled module fails to compile, log it, fall back to eager and run it again.

    Out-of-memory and errors of the eager module propagate.
    """
    if contender.net is contender.module:
        fn()
        return
    try:
        fn()
    except Exception as e:  # compiler failures come in many types (BackendCompilerFailed, Unsupported, ...)
        if is_oom_error(e):
            raise
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log.warning("torch.compile failed for %s (%s); falling back to eager.", contender.name, msg)
        record["compile_fallback"] = msg
        contender.net = contender.module
        fn()


def _error_record(e: BaseException) -> dict[str, Any]:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return {"status": "oom" if is_oom_error(e) else "error", "error": f"{type(e).__name__}: {first}"[:500]}


def _measure_infer(c: BenchContender, inputs, *, steps, warmup, amp, flops) -> dict[str, Any]:
    dev = c.device
    c.module.eval()
    rec: dict[str, Any] = {"compiled": c.net is not c.module}

    def step():
        with torch.no_grad(), autocast(dev, amp):
            return c.infer(inputs)

    with PeakMemory(dev) as mem:
        _with_compile_fallback(c, step, rec)
        rec["compiled"] = c.net is not c.module
        times = time_calls(step, steps=steps, warmup=max(0, warmup - 1), device=dev)
    rec.update(_timing_fields(times, c.batch, mem))
    if flops:
        net, c.net = c.net, c.module
        try:
            rec["flops"] = count_flops(step)
        finally:
            c.net = net
    return rec


def _measure_train(c: BenchContender, inputs, *, steps, warmup, amp, flops) -> dict[str, Any]:
    dev = c.device
    c.module.train()
    rec: dict[str, Any] = {"compiled": c.net is not c.module}
    opt = _make_optimizer(c.module, dev)

    def forward_backward():
        with autocast(dev, amp):
            loss = c.loss(inputs)
        loss.backward()
        return loss

    last: dict[str, torch.Tensor] = {}

    def step():
        opt.zero_grad(set_to_none=True)
        last["loss"] = forward_backward().detach()
        opt.step()

    try:
        with PeakMemory(dev) as mem:
            _with_compile_fallback(c, step, rec)
            rec["compiled"] = c.net is not c.module
            times = time_calls(step, steps=steps, warmup=max(0, warmup - 1), device=dev)
        rec.update(_timing_fields(times, c.batch, mem))
        loss = float(last["loss"].float())  # read after timing: no host synchronisation inside the steps
        rec["final_loss"] = loss if math.isfinite(loss) else str(loss)
        if flops:
            net, c.net = c.net, c.module
            try:
                opt.zero_grad(set_to_none=True)
                rec["flops"] = count_flops(forward_backward)
            finally:
                c.net = net
    finally:
        opt.zero_grad(set_to_none=True)
        opt = None  # drop the optimiser state (the step closure shares this variable) before the next contender
    return rec


def _timing_fields(times: list[float], batch: int, mem: PeakMemory) -> dict[str, Any]:
    med = median(times)
    return {
        "status": "ok",
        "times_s": [round(t, 6) for t in times],
        "median_s": med,
        "volumes_per_s": batch / med if med > 0 else None,
        "peak_mem_bytes": mem.peak_bytes,
        "mem_kind": mem.kind,
    }


def bench_model(
    name: str,
    *,
    size: int,
    batch: int,
    device: torch.device,
    steps: int = 5,
    warmup: int = 2,
    amp: bool = True,
    compile: bool = False,
    compile_backend: str = "inductor",
    checkpointing: bool = False,
    channels_last: bool = False,
    modes: Sequence[str] = MODES,
    flops: bool = True,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Benchmark one registered contender at one size and batch.

    Args:
        name: a :data:`~survival3d.bench.contenders.BENCH_MODELS` name.
        size, batch: cubic input edge and volumes per step.
        device: the device to run on.
        steps, warmup: timed and untimed calls per mode (the first warm-up call also compiles).
        amp: bf16 autocast on CUDA (ignored on CPU, which runs fp32).
        compile: ``torch.compile`` the model (falls back to eager, logged and recorded, if compilation fails).
        compile_backend: the ``torch.compile`` backend (``inductor``; ``aot_eager``/``eager`` to debug).
        checkpointing: activation checkpointing in the transformer blocks.
        channels_last: ``channels_last_3d`` memory format.
        modes: any of ``"train"``, ``"infer"``.
        flops: count FLOPs (one extra eager pass per mode).
        options: extra keyword arguments for the contender's constructor (e.g. ``config``, ``overrides``).

    Returns:
        ``{"model", "size", "batch", "status", "params", "config", "train": {...}, "infer": {...}}`` where each
        mode holds ``status`` (``ok``/``oom``/``error``), ``median_s``, ``times_s``, ``volumes_per_s``,
        ``peak_mem_bytes``, ``mem_kind``, ``flops``, ``tflops_per_s``, ``compiled`` (and ``compile_fallback``,
        ``error`` where they apply).
    """
    bad = sorted(set(modes) - set(MODES))
    if bad:
        raise ValueError(f"unknown modes {bad}; valid: {list(MODES)}.")
    record: dict[str, Any] = {"model": name, "size": int(size), "batch": int(batch), "status": "ok"}
    contender = None
    try:
        contender = BENCH_MODELS.get(name)(
            size=size, batch=batch, device=device, checkpointing=checkpointing, channels_last=channels_last,
            **dict(options or {}),
        )
        record["params"] = contender.num_params
        record["config"] = contender.describe()
        if compile:
            _compile(contender, compile_backend)
        inputs = contender.make_inputs()
        measure = {"infer": _measure_infer, "train": _measure_train}
        for mode in [m for m in ("infer", "train") if m in modes]:  # inference first: no optimiser state yet
            log.info("bench %s %s: size %d, batch %d", name, mode, size, batch)
            try:
                rec = measure[mode](contender, inputs, steps=steps, warmup=warmup, amp=amp, flops=flops)
            except RuntimeError as e:
                log.warning("%s %s at %d^3 x %d failed: %s", name, mode, size, batch, _error_record(e)["error"])
                rec = _error_record(e)
                free_memory(device)
            if rec.get("flops") and rec.get("median_s"):
                rec["tflops_per_s"] = rec["flops"] / rec["median_s"] / 1e12
            record[mode] = rec
    except RuntimeError as e:  # building the model or its inputs ran out of memory / failed
        record.update(_error_record(e))
        log.warning("%s at %d^3 x %d failed: %s", name, size, batch, record["error"])
    finally:
        del contender
        free_memory(device)
    statuses = [record[m]["status"] for m in modes if m in record]
    if record["status"] == "ok" and any(s != "ok" for s in statuses):
        record["status"] = "oom" if "oom" in statuses else "error"
    return record


def ratios(project: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """``project ÷ baseline`` per mode for volumes/s, peak memory and TFLOP/s (``None`` where either is missing)."""
    out: dict[str, dict[str, float | None]] = {}
    for mode in MODES:
        a, b = project.get(mode) or {}, baseline.get(mode) or {}
        out[mode] = {}
        for key in RATIO_METRICS:
            x, y = a.get(key), b.get(key)
            ok = a.get("status") == "ok" and b.get("status") == "ok" and x is not None and y
            out[mode][key] = float(x) / float(y) if ok else None
    return out


def run_bench(
    sizes: Sequence[int],
    batch: int,
    *,
    device: torch.device,
    models: Sequence[str] = (PROJECT, BASELINE),
    batches: Mapping[str, int] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """Benchmark every model at every size in this process and compare project ÷ baseline.

    Args:
        sizes: cubic input edges.
        batch: volumes per step for every model, unless ``batches`` names a model's own batch size.
        device: where to run.
        models: registered contender names (the ratios need :data:`PROJECT` and :data:`BASELINE`).
        options: per-model constructor options.
        progress: a tqdm bar over (size, model).
        kwargs: passed to :func:`bench_model` (steps, warmup, amp, compile, checkpointing, channels_last, ...).

    Returns:
        ``{"environment", "settings", "results": [{"size", "models": {name: record}, "ratios"}]}``.
    """
    from tqdm.auto import tqdm

    if not sizes:
        raise ValueError("need at least one size.")
    for m in models:
        BENCH_MODELS.get(m)  # unknown names fail before any work
    batches = dict(batches or {})
    options = dict(options or {})
    amp = bool(kwargs.get("amp", True)) and device.type == "cuda"
    report: dict[str, Any] = {
        "environment": environment(device),
        "settings": {
            "batch": int(batch),
            "batches": {m: int(batches.get(m, batch)) for m in models},
            "dtype": "bf16-autocast" if amp else "fp32",
            **{k: v for k, v in kwargs.items() if k != "options"},
            "amp": amp,
        },
        "results": [],
    }
    jobs = [(s, m) for s in sizes for m in models]
    bar = tqdm(jobs, desc="bench", disable=None if progress else True, leave=False)
    per_size: dict[int, dict[str, Any]] = {}
    for size, m in bar:
        bar.set_postfix_str(f"{m} {size}^3")
        per_size.setdefault(int(size), {})[m] = bench_model(
            m, size=int(size), batch=int(batches.get(m, batch)), device=device, options=options.get(m), **kwargs
        )
        synchronize(device)
    for size, recs in per_size.items():
        entry = {"size": size, "models": recs}
        if PROJECT in recs and BASELINE in recs:
            entry["ratios"] = ratios(recs[PROJECT], recs[BASELINE])
        report["results"].append(entry)
    return report


def _fmt(x: float | None, spec: str, none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def _cell(rec: Mapping[str, Any] | None, key: str) -> str:
    if not rec:
        return "—"
    if rec.get("status") == "oom":
        return "OOM"
    if rec.get("status") != "ok":
        return "error"
    v = rec.get(key)
    if key == "volumes_per_s":
        return _fmt(v, ".2f")
    if key == "peak_mem_bytes":
        return _fmt(None if v is None else v / 2**30, ".2f")
    if key == "tflops_per_s":
        return _fmt(v, ".3f")
    if key == "median_s":
        return _fmt(None if v is None else v * 1e3, ".1f")
    return str(v)


def format_markdown(report: Mapping[str, Any]) -> str:
    """A markdown table per mode (rows = size × model) plus a ratio table, and the environment line."""
    env, settings = report.get("environment", {}), report.get("settings", {})
    mem_note = "GiB (CUDA max allocated)" if str(env.get("device", "")).startswith("cuda") else "GiB (peak RSS increase)"
    lines = [
        f"Device: {env.get('device_name', '?')} ({env.get('device', '?')}), torch {env.get('torch', '?')}, "
        f"MONAI {env.get('monai', '?')}, {settings.get('dtype', '?')}, compile={settings.get('compile', False)}, "
        f"checkpointing={settings.get('checkpointing', False)}, steps={settings.get('steps', '?')} "
        f"(median), warm-up={settings.get('warmup', '?')}, date {env.get('date', '?')}",
        "",
    ]
    titles = {"train": "Training step (forward + backward + AdamW)", "infer": "Inference (forward + heatmap)"}
    for mode in MODES:
        lines += [
            f"**{titles[mode]}**",
            "",
            f"| size | model | batch | ms/step | volumes/s | peak mem {mem_note} | TFLOP/s |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for entry in report.get("results", []):
            for name, rec in entry["models"].items():
                m = rec.get(mode) if rec.get(mode) else (rec if rec.get("status") != "ok" else None)
                lines.append(
                    f"| {entry['size']}³ | {name} | {rec.get('batch', '?')} | {_cell(m, 'median_s')} | "
                    f"{_cell(m, 'volumes_per_s')} | {_cell(m, 'peak_mem_bytes')} | {_cell(m, 'tflops_per_s')} |"
                )
        lines.append("")
    with_ratios = [e for e in report.get("results", []) if "ratios" in e]
    if with_ratios:
        lines += [
            f"**Ratios {PROJECT} ÷ {BASELINE}**",
            "",
            "| size | train volumes/s | train peak mem | train TFLOP/s | infer volumes/s | infer peak mem |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for e in with_ratios:
            r = e["ratios"]
            lines.append(
                f"| {e['size']}³ | {_fmt(r['train']['volumes_per_s'], '.2f')} | "
                f"{_fmt(r['train']['peak_mem_bytes'], '.2f')} | {_fmt(r['train']['tflops_per_s'], '.2f')} | "
                f"{_fmt(r['infer']['volumes_per_s'], '.2f')} | {_fmt(r['infer']['peak_mem_bytes'], '.2f')} |"
            )
        lines.append("")
    return "\n".join(lines)


def _atomic_write(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    with atomic_write(path) as f:
        f.write(text)
    return path


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically (temporary file + rename)."""
    return _atomic_write(path, json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n")


def write_text(text: str, path: str | os.PathLike) -> Path:
    return _atomic_write(path, text)
