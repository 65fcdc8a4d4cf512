"""Every GPU measurement and check of issue 7 in one call, for a session that is lent a GPU.

    python -m survival3d.bench.gpu_checks --out results/gpu_checks            # on a CUDA machine
    python -m survival3d.bench.gpu_checks --out /tmp/gc --device cpu --tiny   # the same plumbing on CPU, small

Checks, in order (each guarded: a failure is recorded and the next check runs; the JSON and markdown are
rewritten after every check, so a run cut short keeps what it measured):

1. ``bench_eager`` / ``bench_compiled``: both models at 128³, batch 2, bf16 autocast, eager then
   ``torch.compile``d (training and inference).
2. ``channels_last``: the project model at 128³ × 2, eager, with ``channels_last_3d`` (compare with 1.).
3. ``bench_large``: 160³ and 192³ at batch 2, each model in whichever mode (eager/compiled) was faster at 128³
   (eager in ``--tiny``).
4. ``bench_huge``: 256³: the project model at batch 4 (with activation checkpointing when it runs out of memory
   or needs more than ``--mem-budget-gib`` without), MONAI at batch 1 and 2.
5. ``compile_equality``: compiled vs eager outputs, loss and gradients at 128³ (tolerances in
   :data:`survival3d.bench.checks.TOLERANCES`).
6. ``sdpa``: the attention kernels a training step of the project model dispatches (profiler; ``math`` means
   PyTorch fell back to the unfused kernel), and whether it runs with SDPA restricted to FLASH only, EFFICIENT
   only, FLASH+EFFICIENT, and MATH (a control).
7. ``largest_size``: the project model's training step at growing sizes (batch 2, checkpointing) until the
   first failure, recording whether it was out-of-memory or an SDPA/kernel error.
8. ``goals``: the issue's targets evaluated on the numbers above.

Outputs in ``--out``: ``gpu_checks.json`` (everything) and ``gpu_checks.md`` (tables). ``--only`` runs a subset;
results of other checks from an earlier run into the same ``--out`` (same device and settings) are kept, so the
checks can be split over several shorter calls (``--fresh`` starts over).
``--tiny`` shrinks every size (and MONAI's widths and depths) so the whole script runs on a CPU (about a minute of
CPU time) to rehearse the plumbing; its numbers are not benchmarks.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Plan", "main", "run_checks", "evaluate_goals", "format_report"]

log = logging.getLogger("survival3d.bench.gpu_checks")

CHECKS = (
    "bench_eager",
    "bench_compiled",
    "channels_last",
    "bench_large",
    "bench_huge",
    "compile_equality",
    "sdpa",
    "largest_size",
)

GIB = 2**30


class Plan:
    """Sizes, batches and budgets of one gpu_checks run (the issue's values, or a tiny CPU rehearsal)."""

    def __init__(self, tiny: bool = False):
        self.tiny = tiny
        if tiny:
            self.main_size, self.main_batch = 16, 1
            self.large_sizes = [20]
            self.huge_size, self.huge_batch, self.monai_huge_batches = 24, 2, [1]
            self.sweep_sizes, self.sweep_batch = [16, 24], 1
            self.steps, self.warmup = 1, 1
            # SwinUNETR widths / 4 and one block per stage: a rehearsal of the plumbing, not MONAI's model
            self.monai_options: dict[str, Any] = {"embed_dim": 12, "depths": (1, 1, 1, 1)}
            self.compile_large: bool | None = False  # re-tracing at each new size costs minutes on a CPU
        else:
            self.main_size, self.main_batch = 128, 2
            self.large_sizes = [160, 192]
            self.huge_size, self.huge_batch, self.monai_huge_batches = 256, 4, [1, 2]
            self.sweep_sizes, self.sweep_batch = [256, 320, 384, 448, 512], 2
            self.steps, self.warmup = 10, 3
            self.monai_options = {}
            self.compile_large = None  # each model in whichever mode was faster at the main size

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def evaluate_goals(results: dict[str, Any], mem_budget_gib: float = 40.0) -> dict[str, Any]:
    """The issue's targets, each ``{"value", "target", "pass"}`` (``pass`` is ``None`` when not measured)."""
    from survival3d.bench.runner import BASELINE, PROJECT

    def best(entry_names: Sequence[str], model: str, mode: str = "train") -> dict[str, Any] | None:
        recs = []
        for name in entry_names:
            for e in (results.get(name) or {}).get("results", []):
                rec = e["models"].get(model, {}).get(mode)
                if rec and rec.get("status") == "ok" and e["size"] == results.get("plan", {}).get("main_size"):
                    recs.append(rec)
        return max(recs, key=lambda r: r["volumes_per_s"]) if recs else None

    goals: dict[str, Any] = {}
    ours, monai = best(["bench_eager", "bench_compiled"], PROJECT), best(["bench_eager", "bench_compiled"], BASELINE)

    def goal(name, value, target, ok):
        goals[name] = {"value": value, "target": target, "pass": None if value is None else bool(ok)}

    speed = ours["volumes_per_s"] / monai["volumes_per_s"] if ours and monai else None
    goal("train_speed_ratio_main", speed, ">= 5", speed is not None and speed >= 5)
    mem = (
        ours["peak_mem_bytes"] / monai["peak_mem_bytes"]
        if ours and monai and ours.get("peak_mem_bytes") and monai.get("peak_mem_bytes")
        else None
    )
    goal("train_mem_ratio_main", mem, "<= 0.20", mem is not None and mem <= 0.20)
    vps = ours["volumes_per_s"] if ours else None
    goal("train_volumes_per_s_main", vps, ">= 90", vps is not None and vps >= 90)
    huge = results.get("bench_huge") or {}
    h_ours = ((huge.get("project") or {}).get("train") or {}) if huge else {}
    h_monai = [r.get("train") or {} for r in huge.get("monai", []) if r.get("batch") == 1]
    h_ok = h_ours.get("status") == "ok"
    h_mem = h_ours.get("peak_mem_bytes") / GIB if h_ok and h_ours.get("peak_mem_bytes") is not None else None
    goal("huge_train_mem_gib", h_mem, f"<= {mem_budget_gib:g}", h_mem is not None and h_mem <= mem_budget_gib)
    h_ratio = (
        h_ours["volumes_per_s"] / h_monai[0]["volumes_per_s"]
        if h_ok and h_monai and h_monai[0].get("status") == "ok"
        else None
    )
    goal("huge_speed_ratio_vs_monai_b1", h_ratio, ">= 4", h_ratio is not None and h_ratio >= 4)
    fused = (results.get("sdpa") or {}).get("fused_in_training")
    goals["sdpa_fused_in_training"] = {"value": fused, "target": "no math-kernel SDPA in a training step",
                                       "pass": fused}
    return goals


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def format_report(results: dict[str, Any]) -> str:
    """Markdown: environment, every bench table, the correctness checks and the goals."""
    from survival3d.bench.runner import format_markdown

    env = results.get("environment", {})
    lines = [
        "# survival3d GPU checks",
        "",
        f"{env.get('device_name', '?')} ({env.get('device', '?')}), torch {env.get('torch', '?')}, "
        f"MONAI {env.get('monai', '?')}, {env.get('date', '?')}" + (" — TINY rehearsal, not a benchmark" if results.get("plan", {}).get("tiny") else ""),
        "",
    ]
    for name in ("bench_eager", "bench_compiled", "channels_last", "bench_large"):
        rep = results.get(name)
        if rep and "results" in rep:
            lines += [f"## {name}", "", format_markdown(rep), ""]
    huge = results.get("bench_huge")
    if huge and "project" in huge:
        lines += ["## bench_huge", "", format_markdown(huge["report"]), ""]
        lines += [f"Project model checkpointing: {huge.get('project_checkpointing')}", ""]
    eq = results.get("compile_equality")
    if eq and "outputs" in eq:
        lines += ["## compile_equality", "", f"precision {eq['precision']}, tolerance {eq['tolerance']}", ""]
        lines += ["| tensor | max abs diff | atol | ok |", "|---|---:|---:|---|"]
        for k, v in eq["outputs"].items():
            lines.append(f"| {k} | {v['max_abs_diff']:.3g} | {v['atol']:.3g} | {v['ok']} |")
        if "loss" in eq:
            lines.append(f"| loss | {eq['loss']['max_abs_diff']:.3g} | {eq['loss']['atol']:.3g} | {eq['loss']['ok']} |")
        if "grads" in eq:
            g = eq["grads"]
            lines.append(f"| grads (rel. L2, worst {g['worst']}) | {g['max_rel_err']:.3g} | {g['tolerance']} | {g['ok']} |")
        lines.append("")
    sd = results.get("sdpa")
    if sd and "default" in sd:
        lines += ["## sdpa (training step)", "", "| allowed kernels | runs | backends used (fwd+bwd) |", "|---|---|---|"]
        for label, v in sd.items():
            if not isinstance(v, dict):
                continue
            lines.append(f"| {label} | {v.get('ok')} | {', '.join(v.get('backends', [])) or v.get('error', '')} |")
        lines += ["", f"Fused SDPA kernels (no math fallback) in the default training step: {sd.get('fused_in_training')}", ""]
    ls = results.get("largest_size")
    if ls and "attempts" in ls:
        lines += ["## largest_size (project model, train step)", ""]
        lines += [f"largest OK: {ls.get('largest_ok')}; first failure: {ls.get('first_failure')}", ""]
        lines += ["| size | batch | status | volumes/s | peak GiB | error |", "|---:|---:|---|---:|---:|---|"]
        for a in ls["attempts"]:
            t = a.get("train") or a
            pm = t.get("peak_mem_bytes")
            lines.append(
                f"| {a['size']}³ | {a['batch']} | {t.get('status')} | {_fmt(t.get('volumes_per_s'))} | "
                f"{_fmt(None if pm is None else pm / GIB)} | {t.get('error', '')} |"
            )
        lines.append("")
    goals = results.get("goals")
    if goals:
        lines += ["## goals", "", "| goal | value | target | pass |", "|---|---:|---|---|"]
        for k, v in goals.items():
            lines.append(f"| {k} | {_fmt(v['value'])} | {v['target']} | {v['pass']} |")
        lines.append("")
    failed = {k: v["check_error"] for k, v in results.items() if isinstance(v, dict) and "check_error" in v}
    if failed:
        lines += ["## checks that failed to run", ""] + [f"- {k}: {v}" for k, v in failed.items()] + [""]
    return "\n".join(lines)


def _previous_results(path: Path, current: dict[str, Any]) -> dict[str, Any]:
    """An earlier ``gpu_checks.json`` when it was made on the same device with the same plan and settings."""
    import json

    if not path.is_file():
        return {}
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable earlier results %s: %s", path, e)
        return {}
    def as_json(x):  # tuples become lists in the file
        return json.loads(json.dumps(x, default=str))

    same = (
        prev.get("environment", {}).get("device_name") == current["environment"]["device_name"]
        and prev.get("plan") == as_json(current["plan"])
        and prev.get("settings") == as_json(current["settings"])
    )
    if not same:
        log.warning("not reusing %s: made on another device or with other settings.", path)
        return {}
    return prev


def run_checks(
    out: Path,
    *,
    device_name: str = "auto",
    tiny: bool = False,
    amp: bool = True,
    compile_backend: str = "inductor",
    only: Sequence[str] = CHECKS,
    overrides: Sequence[str] = (),
    config: str | None = None,
    mem_budget_gib: float = 40.0,
    progress: bool = True,
    keep_previous: bool = True,
) -> dict[str, Any]:
    """Run the selected checks, writing ``gpu_checks.json`` and ``gpu_checks.md`` into ``out`` after each one.

    With ``keep_previous``, checks not selected in ``only`` keep their results from an earlier run into the same
    ``out`` (same device, plan and settings), so the checks can be split over several calls (``--only``) — e.g.
    on a machine that limits the length of one command — and still end in one report.
    """

    from survival3d.bench.checks import compare_compiled, sdpa_backend_support, sdpa_ops, train_step_fn
    from survival3d.bench.contenders import BENCH_MODELS
    from survival3d.bench.measure import free_memory, resolve_device
    from survival3d.bench.runner import BASELINE, PROJECT, bench_model, environment, run_bench, write_json, write_text

    device = resolve_device(device_name)
    if device.type != "cuda":
        log.warning("running GPU checks on %s: numbers are a rehearsal of the script, not GPU results.", device)
    plan = Plan(tiny)
    project_opts = {"config": config, "overrides": list(overrides)}
    options = {PROJECT: project_opts, BASELINE: plan.monai_options}
    common = {"steps": plan.steps, "warmup": plan.warmup, "amp": amp, "compile_backend": compile_backend}
    results: dict[str, Any] = {
        "environment": environment(device),
        "plan": plan.as_dict(),
        "settings": {"amp": amp, "compile_backend": compile_backend, "overrides": list(overrides), "config": config,
                     "mem_budget_gib": mem_budget_gib},
    }
    previous = _previous_results(out / "gpu_checks.json", results) if keep_previous else {}
    for name in CHECKS:
        if name not in only and name in previous:
            results[name] = previous[name]
            results.setdefault("check_seconds", {})[name] = previous.get("check_seconds", {}).get(name)
    if previous:
        log.info("kept earlier results of %s from %s", sorted(set(previous) & set(CHECKS) - set(only)), out)

    def save() -> None:
        results["goals"] = evaluate_goals(results, mem_budget_gib)
        write_json(results, out / "gpu_checks.json")
        write_text(format_report(results) + "\n", out / "gpu_checks.md")

    def faster_compile(model: str) -> bool:
        if plan.compile_large is not None:
            return plan.compile_large
        def vps(name):
            for e in (results.get(name) or {}).get("results", []):
                rec = (e["models"].get(model) or {}).get("train") or {}
                if rec.get("status") == "ok" and not rec.get("compile_fallback"):
                    return rec["volumes_per_s"]
            return None

        eager, comp = vps("bench_eager"), vps("bench_compiled")
        return comp is not None and (eager is None or comp > eager)

    def check_bench_eager():
        return run_bench([plan.main_size], plan.main_batch, device=device, options=options, progress=progress, **common)

    def check_bench_compiled():
        return run_bench(
            [plan.main_size], plan.main_batch, device=device, options=options, compile=True, progress=progress, **common
        )

    def check_channels_last():
        return run_bench(
            [plan.main_size], plan.main_batch, device=device, models=[PROJECT], options=options,
            channels_last=True, progress=progress, **common,
        )

    def check_bench_large():
        report = None
        for model in (PROJECT, BASELINE):
            rep = run_bench(
                plan.large_sizes, plan.main_batch, device=device, models=[model], options=options,
                compile=faster_compile(model), progress=progress, **common,
            )
            if report is None:
                report = rep
            else:
                for mine, theirs in zip(report["results"], rep["results"]):
                    mine["models"].update(theirs["models"])
            report["settings"][f"compile_{model}"] = faster_compile(model)
        from survival3d.bench.runner import ratios

        for e in report["results"]:
            e["ratios"] = ratios(e["models"][PROJECT], e["models"][BASELINE])
        return report

    def check_bench_huge():
        kw = dict(common, size=plan.huge_size, device=device)
        rec = bench_model(PROJECT, batch=plan.huge_batch, compile=faster_compile(PROJECT), options=project_opts, **kw)
        checkpointing = False
        train = rec.get("train") or {}
        too_big = train.get("status") == "oom" or (
            train.get("peak_mem_bytes") is not None and train["peak_mem_bytes"] > mem_budget_gib * GIB
        )
        if too_big:
            log.info("%d^3 x %d needs activation checkpointing; retrying with it.", plan.huge_size, plan.huge_batch)
            checkpointing = True
            rec = bench_model(
                PROJECT, batch=plan.huge_batch, compile=faster_compile(PROJECT), options=project_opts,
                checkpointing=True, **kw,
            )
        monai = [
            bench_model(BASELINE, batch=b, compile=faster_compile(BASELINE), options=plan.monai_options, **kw)
            for b in plan.monai_huge_batches
        ]
        report = {
            "environment": results["environment"],
            "settings": {
                **common,
                "checkpointing": checkpointing,
                "compile": {PROJECT: faster_compile(PROJECT), BASELINE: faster_compile(BASELINE)},
                "dtype": "bf16-autocast" if amp and device.type == "cuda" else "fp32",
            },
            "results": [{"size": plan.huge_size, "models": {PROJECT: rec}}]
            + [{"size": plan.huge_size, "models": {f"{BASELINE} (b{m['batch']})": m}} for m in monai],
        }
        return {"project": rec, "monai": monai, "project_checkpointing": checkpointing, "report": report}

    def check_compile_equality():
        c = BENCH_MODELS.get(PROJECT)(size=plan.main_size, batch=plan.main_batch, device=device, **project_opts)
        try:
            return compare_compiled(c, amp=amp, backend=compile_backend, train=True)
        finally:
            del c
            free_memory(device)

    def check_sdpa():
        c = BENCH_MODELS.get(PROJECT)(size=plan.main_size, batch=plan.main_batch, device=device, **project_opts)
        try:
            inputs = c.make_inputs()
            c.module.train()
            result = {"default": {"ok": True, **sdpa_ops(train_step_fn(c, inputs, amp))}}
            c.module.zero_grad(set_to_none=True)
            restricted = {
                "FLASH": ["FLASH_ATTENTION"],
                "EFFICIENT": ["EFFICIENT_ATTENTION"],
                "FLASH+EFFICIENT": ["FLASH_ATTENTION", "EFFICIENT_ATTENTION"],
                "MATH": ["MATH"],
            }
            result.update(sdpa_backend_support(c, restricted, amp=amp, inputs=inputs))
            used = result["default"]["backends"]
            result["fused_in_training"] = bool(used) and "math" not in used
            return result
        finally:
            del c
            free_memory(device)

    def check_largest_size():
        attempts, largest, failure = [], None, None
        for size in plan.sweep_sizes:
            rec = bench_model(
                PROJECT, size=size, batch=plan.sweep_batch, device=device, steps=1, warmup=1, amp=amp,
                checkpointing=True, modes=("train",), flops=False, options=project_opts,
            )
            attempts.append(rec)
            if rec["status"] != "ok":
                t = rec.get("train") or rec
                failure = {"size": size, "status": t.get("status"), "error": t.get("error")}
                break
            largest = size
        return {"batch": plan.sweep_batch, "checkpointing": True, "attempts": attempts, "largest_ok": largest,
                "first_failure": failure}

    steps: dict[str, Callable[[], Any]] = {
        "bench_eager": check_bench_eager,
        "bench_compiled": check_bench_compiled,
        "channels_last": check_channels_last,
        "bench_large": check_bench_large,
        "bench_huge": check_bench_huge,
        "compile_equality": check_compile_equality,
        "sdpa": check_sdpa,
        "largest_size": check_largest_size,
    }
    out.mkdir(parents=True, exist_ok=True)
    for name in [c for c in CHECKS if c in only]:
        log.info("gpu check: %s", name)
        t0 = time.perf_counter()
        try:
            results[name] = steps[name]()
        except Exception as e:  # one broken check must not lose the others' results; the traceback is kept
            log.error("check %s failed: %s", name, e)
            results[name] = {"check_error": f"{type(e).__name__}: {e}"[:1000], "traceback": traceback.format_exc()}
        results.setdefault("check_seconds", {})[name] = round(time.perf_counter() - t0, 2)
        save()
    save()
    free_memory(device)
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m survival3d.bench.gpu_checks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="folder for gpu_checks.json and gpu_checks.md")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes/widths: a fast rehearsal (CPU, CI)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 instead of bf16 autocast on CUDA")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    p.add_argument("--mem-budget-gib", type=float, default=40.0, help="256³ memory budget (40 GiB)")
    p.add_argument("--config", default=None, help="YAML config for the project model")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--fresh", action="store_true", help="ignore results of an earlier run into --out")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="project config overrides")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from survival3d.config import ExperimentConfig, load_config
    from survival3d.errors import Survival3DError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(CHECKS))
    try:
        if unknown:
            raise ValueError(f"unknown checks {unknown}; valid: {', '.join(CHECKS)}.")
        load_config(args.config, args.overrides, schema=ExperimentConfig)
        from survival3d.bench.measure import resolve_device

        resolve_device(args.device)
    except (ValueError, Survival3DError) as e:
        print(f"gpu_checks: error: {e}", file=sys.stderr)
        return 2
    results = run_checks(
        Path(args.out),
        device_name=args.device,
        tiny=args.tiny,
        amp=args.amp,
        compile_backend=args.compile_backend,
        only=only,
        overrides=args.overrides,
        config=args.config,
        mem_budget_gib=args.mem_budget_gib,
        progress=args.progress,
        keep_previous=not args.fresh,
    )
    failed = [k for k in only if isinstance(results.get(k), dict) and "check_error" in results[k]]
    log.info("wrote %s and %s", Path(args.out) / "gpu_checks.json", Path(args.out) / "gpu_checks.md")
    if failed:
        log.error("checks that failed to run: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
