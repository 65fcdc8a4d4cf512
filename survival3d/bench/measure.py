"""Measurement primitives for benchmarks: synchronised step timing, peak memory, FLOP counting, OOM detection.

Timing follows the usual GPU benchmarking recipe: a few warm-up calls (allocator, cuDNN autotuning, compilation),
then each timed call bracketed by CUDA events (no host synchronisation between steps; one
``torch.cuda.synchronize`` at the end), and the median over the timed calls reported. On CPU each call is timed
with ``time.perf_counter``.

Peak memory on CUDA is ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (everything the
caching allocator handed out: weights, gradients, optimiser state, activations). On CPU there is no allocator
statistic, so the peak resident-set-size *increase* over the measured phase is read from ``/proc/self/status``
(``VmHWM`` after returning freed heap to the OS with ``malloc_trim`` and resetting the peak through
``/proc/self/clear_refs``); memory an allocator still holds from earlier work can be reused without showing, so
on CPU this is a lower bound. Where it is not possible (not Linux, no permission) the peak is ``None`` ("n/a").
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from survival3d.runtime import autocast, resolve_device

__all__ = [
    "resolve_device",
    "synchronize",
    "is_oom_error",
    "free_memory",
    "time_calls",
    "PeakMemory",
    "count_flops",
    "autocast",
    "median",
]


_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom_error(exc: BaseException) -> bool:
    """True for ``torch.cuda.OutOfMemoryError`` and allocator failures reported as plain ``RuntimeError``."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def free_memory(device: torch.device) -> None:
    """Return cached blocks to the driver so that the next model starts from a clean allocator."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()




def time_calls(fn: Callable[[], object], *, steps: int, warmup: int, device: torch.device) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``steps`` times timed; return the per-call seconds.

    On CUDA the calls are queued back to back with an event pair around each one and the host waits once at the
    end, so the timing includes no host synchronisation that a training loop would not do.

    Raises:
        ValueError: ``steps < 1`` or ``warmup < 0``.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}.")
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 for start, end in events]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", _PROC_STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _release_free_heap() -> None:
    """Hand memory freed by earlier work back to the OS (glibc ``malloc_trim``), so that a new peak shows in RSS."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _reset_rss_peak() -> bool:
    _release_free_heap()
    try:
        _PROC_CLEAR_REFS.write_text("5")  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
    except OSError:
        return False
    return True


@dataclass
class PeakMemory:
    """Context manager measuring the peak memory of the code inside it.

    After the block, ``peak_bytes`` holds ``torch.cuda.max_memory_allocated`` (CUDA; ``kind =
    "cuda_max_allocated"``), the peak RSS increase over the block (CPU on Linux; ``kind = "cpu_rss_peak_delta"``)
    or ``None`` (``kind = None``).
    """

    device: torch.device
    peak_bytes: int | None = None
    kind: str | None = None

    def __enter__(self) -> PeakMemory:
        self._base = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif _reset_rss_peak():
            self._base = _proc_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes, self.kind = int(torch.cuda.max_memory_allocated(self.device)), "cuda_max_allocated"
        elif self._base is not None:
            hwm = _proc_kib("VmHWM")
            if hwm is not None:
                self.peak_bytes, self.kind = max(0, hwm - self._base) * 1024, "cpu_rss_peak_delta"


def _cpu_sdpa_flop_mapping() -> dict:
    """FLOP formulas for the CPU fused SDPA kernels, which ``torch.utils.flop_counter`` does not register.

    Same formulas as for the CUDA flash/efficient kernels (4·b·h·s_q·s_k·d forward, 2.5× that backward), so a CPU
    and a GPU run of the same model count the same FLOPs.
    """
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    mapping = {}
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None:
        mapping[fwd] = lambda q, k, v, *args, out_shape=None, **kwargs: fc.sdpa_flop_count(q, k, v)
    if bwd is not None:
        mapping[bwd] = lambda g, q, k, v, *args, out_shape=None, **kwargs: fc.sdpa_backward_flop_count(g, q, k, v)
    return mapping


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs (multiply-add = 2) of matmuls, convolutions and attention executed by ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_flop_mapping()) as counter:
        fn()
    return int(counter.get_total_flops())
