"""How fast this device moves memory and multiplies matrices: the roofline of the machine a session
ran on, measured in well under a second and stored in the trace header (`device_probe`), so that a
recording can be costed on its own device (`this-device` in tracer/cost.py) next to shipped profiles.

The probe is short, so it is rough: a few repetitions, no statistics. `bench/engine.py` calls the same
two functions with larger sizes and more repetitions.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

# Sizes for the header's probe. The copy must not fit in a cache (L2 is 50-60 MB on H100/H200; CPU L3
# per socket is tens of MB); the matmul must be large enough to reach a fair share of the peak.
_PROBE_COPY_BYTES = {"cuda": 256 * 2**20, "cpu": 64 * 2**20}
_PROBE_MATMUL_N = {"cuda": 4096, "cpu": 384}
_PROBE_REPS = {"cuda": 10, "cpu": 3}


def _seconds_per_call(device: torch.device, fn: Callable[[], object], reps: int) -> float:
    """Mean seconds of `fn` after one untimed call; device events on CUDA, where the host only queues."""
    fn()
    if device.type != "cuda":
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps
    with torch.cuda.device(device):
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]  # torch: __new__ unannotated
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]  # torch: __new__ unannotated
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        elapsed_ms: float = start.elapsed_time(end)
        return elapsed_ms / 1e3 / reps


def copy_bandwidth(device: torch.device, nbytes: int = 256 * 2**20, reps: int = 20) -> float:
    """Bytes per second of a device-to-device copy of `nbytes` (read + write counted, as a roofline's
    memory bandwidth is)."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)  # ones: pages really mapped on the CPU
    dst = torch.empty_like(src)
    return 2 * nbytes / _seconds_per_call(device, lambda: dst.copy_(src), reps)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int | None = None, reps: int = 10) -> float:
    """FLOP/s of an n x n matmul in `dtype` (default n: 8192 on CUDA, 1024 on the CPU)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _seconds_per_call(device, lambda: a @ b, reps)


def probe(device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    """The header's `device_probe`: copy bandwidth and matmul rate in the engine's dtype on its device.

    Runs after the engine has allocated its weights and KV cache: a device without room for the probe's
    buffers gets a probe that says so instead of a recording that fails.
    """
    kind = "cuda" if device.type == "cuda" else "cpu"
    result: dict[str, object] = {"dtype": str(dtype).removeprefix("torch."), "device": str(device)}
    try:
        with torch.inference_mode():
            result["copy_bytes_per_s"] = copy_bandwidth(device, _PROBE_COPY_BYTES[kind], _PROBE_REPS[kind])
            result["matmul_flop_per_s"] = matmul_rate(device, dtype, _PROBE_MATMUL_N[kind], _PROBE_REPS[kind])
    except torch.OutOfMemoryError:
        result["error"] = "out of memory: no room for the probe's buffers beside the model"
    return result
