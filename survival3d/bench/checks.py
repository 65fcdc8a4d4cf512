"""Correctness checks for the fast paths: compiled == eager, which SDPA kernels run in training, size limits.

* :func:`compare_compiled`: the outputs (and optionally the training loss and gradients) of a ``torch.compile``d
  model against the same model in eager mode, with a stated tolerance per precision (:data:`TOLERANCES`).
* :func:`sdpa_ops`: the attention ATen ops a callable dispatches (via ``torch.profiler``), classified into
  backends (flash, efficient, cudnn, math, flash-cpu), i.e. which SDPA kernel *actually* ran.
* :func:`sdpa_backend_support`: whether a training step runs with SDPA restricted to given backends
  (``torch.nn.attention.sdpa_kernel``): a model that falls back to the math kernel under grad fails here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from survival3d.bench.contenders import BenchContender
from survival3d.bench.measure import autocast

__all__ = [
    "TOLERANCES",
    "compare_compiled",
    "sdpa_ops",
    "classify_sdpa_op",
    "sdpa_backend_support",
    "train_step_fn",
]

log = logging.getLogger(__name__)

#: (rtol, atol relative to max |eager value|) for compiled vs eager. fp32: inductor reorders reductions and fuses
#: ops, so results agree to ~1e-6 relative; 1e-4 leaves margin. bf16 autocast: 8-bit mantissa (~4e-3 per
#: rounding), and fusion changes where rounding happens, so a few bf16 ulps: 3e-2.
TOLERANCES: dict[str, tuple[float, float]] = {"fp32": (1e-4, 1e-5), "bf16": (3e-2, 3e-2)}
#: Relative L2 error allowed for each parameter's gradient, compiled vs eager.
GRAD_TOLERANCES: dict[str, float] = {"fp32": 1e-3, "bf16": 5e-2}


def _precision(device: torch.device, amp: bool) -> str:
    return "bf16" if amp and device.type == "cuda" else "fp32"


def _compare(a: torch.Tensor, b: torch.Tensor, rtol: float, atol_rel: float) -> dict[str, Any]:
    a, b = a.detach().float(), b.detach().float()
    scale = float(b.abs().max()) if b.numel() else 0.0
    atol = atol_rel * max(scale, 1e-12)
    diff = (a - b).abs()
    ok = bool(torch.all(diff <= atol + rtol * b.abs())) and a.shape == b.shape
    return {"max_abs_diff": float(diff.max()) if diff.numel() else 0.0, "atol": atol, "rtol": rtol, "ok": ok}


def train_step_fn(c: BenchContender, inputs: Mapping[str, torch.Tensor], amp: bool) -> Callable[[], torch.Tensor]:
    """A closure doing forward + loss + backward through ``c.net`` (gradients accumulate; zero them yourself)."""

    def step() -> torch.Tensor:
        with autocast(c.device, amp):
            loss = c.loss(dict(inputs))
        loss.backward()
        return loss.detach()

    return step


def compare_compiled(
    contender: BenchContender,
    *,
    amp: bool = True,
    backend: str = "inductor",
    train: bool = False,
    inputs: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Compare ``torch.compile(contender.module)`` against the eager module on the same inputs.

    Inference outputs (eval mode, no grad) are compared tensor by tensor with :data:`TOLERANCES` for the precision
    in use; with ``train=True`` the training loss and every parameter's gradient (train mode; relative L2 error
    ≤ :data:`GRAD_TOLERANCES`) are compared too. Compilation errors propagate: this is a check, not a benchmark.

    Returns:
        ``{"precision", "tolerance", "outputs": {name: {max_abs_diff, atol, rtol, ok}}, "ok"}`` plus, with
        ``train``, ``"loss"`` (same fields) and ``"grads": {"max_rel_err", "worst", "tolerance", "ok"}``.
    """
    dev = contender.device
    precision = _precision(dev, amp)
    rtol, atol_rel = TOLERANCES[precision]
    inputs = dict(inputs) if inputs is not None else contender.make_inputs()
    torch._dynamo.reset()  # fresh compile, not graphs cached for other sizes
    eager, compiled = contender.module, torch.compile(contender.module, backend=backend)
    result: dict[str, Any] = {"precision": precision, "backend": backend, "tolerance": {"rtol": rtol, "atol_rel": atol_rel}}

    def infer(net):
        contender.net = net
        with torch.no_grad(), autocast(dev, amp):
            return contender.infer(inputs)

    try:
        eager.eval()
        ref, got = infer(eager), infer(compiled)
        result["outputs"] = {k: _compare(got[k], ref[k], rtol, atol_rel) for k in ref}
        ok = all(v["ok"] for v in result["outputs"].values())
        if train:
            eager.train()
            grads = {}
            for tag, net in (("eager", eager), ("compiled", compiled)):
                contender.net = net
                eager.zero_grad(set_to_none=True)
                loss = train_step_fn(contender, inputs, amp)()
                grads[tag] = (loss, {n: p.grad.detach().clone() for n, p in eager.named_parameters() if p.grad is not None})
            result["loss"] = _compare(grads["compiled"][0], grads["eager"][0], rtol, atol_rel)
            errs = {}
            for n, g in grads["eager"][1].items():
                gc = grads["compiled"][1].get(n)
                errs[n] = float("inf") if gc is None else float((gc - g).norm() / g.norm().clamp_min(1e-12))
            worst = max(errs, key=errs.get) if errs else None
            tol = GRAD_TOLERANCES[precision]
            missing = sorted(set(grads["compiled"][1]) ^ set(grads["eager"][1]))
            result["grads"] = {
                "max_rel_err": errs[worst] if worst else 0.0,
                "worst": worst,
                "tolerance": tol,
                "missing": missing,
                "ok": (not missing) and all(e <= tol for e in errs.values()),
            }
            ok = ok and result["loss"]["ok"] and result["grads"]["ok"]
            eager.zero_grad(set_to_none=True)
    finally:
        contender.net = eager
    result["ok"] = ok
    return result


_SDPA_BACKENDS = (
    ("flash_attention_for_cpu", "flash_cpu"),
    ("flash_attention", "flash"),
    ("efficient_attention", "efficient"),
    ("cudnn_attention", "cudnn"),
    ("attention_math", "math"),
)


def classify_sdpa_op(name: str) -> str | None:
    """Map an ATen op name (``aten::_scaled_dot_product_flash_attention_backward``) to its SDPA backend."""
    for key, backend in _SDPA_BACKENDS:
        if key in name:
            return backend
    return None


def sdpa_ops(fn: Callable[[], Any]) -> dict[str, Any]:
    """Run ``fn`` under the profiler and report the attention kernels it dispatched.

    Returns:
        ``{"ops": {aten op name: count}, "backends": sorted backend names, "backward_backends": ...}``.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops: dict[str, int] = {}
    for ev in prof.events():
        if ev.name.startswith("aten::") and classify_sdpa_op(ev.name):
            ops[ev.name] = ops.get(ev.name, 0) + 1
    return {
        "ops": dict(sorted(ops.items())),
        "backends": sorted({classify_sdpa_op(n) for n in ops}),
        "backward_backends": sorted({classify_sdpa_op(n) for n in ops if "backward" in n}),
    }


def sdpa_backend_support(
    contender: BenchContender,
    backends: Mapping[str, Sequence[str]],
    *,
    amp: bool = True,
    inputs: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run one training forward + backward with SDPA restricted to each named set of backends.

    Args:
        backends: ``{"label": ["FLASH_ATTENTION", "EFFICIENT_ATTENTION"], ...}`` (``SDPBackend`` member names).

    Returns:
        ``{"label": {"ok": bool, "error": str | None, "ops": {...}}}``; ``ok`` means the step ran with only those
        kernels allowed (PyTorch raises "No available kernel" otherwise).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    inputs = dict(inputs) if inputs is not None else contender.make_inputs()
    contender.module.train()
    step = train_step_fn(contender, inputs, amp)
    out: dict[str, dict[str, Any]] = {}
    for label, names in backends.items():
        allowed = [getattr(SDPBackend, n) for n in names]
        contender.module.zero_grad(set_to_none=True)
        try:
            with sdpa_kernel(allowed):
                found = sdpa_ops(step)
            out[label] = {"ok": True, "error": None, **found}
        except RuntimeError as e:
            out[label] = {"ok": False, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]}
            log.info("SDPA restricted to %s failed: %s", label, out[label]["error"])
    contender.module.zero_grad(set_to_none=True)
    return out
