"""Decode-step speed of the engine against the hardware's roofline, one row per batch size.

Run it as a module from the repository root (as a script, this file would shadow the `engine` package).

    python -m bench.engine                                  # tiny on this machine's best device
    python -m bench.engine --preset ds2-lite --layers 8 --batches 1,8,32,128,256 --prompt 256

For each batch size: B requests with a prompt of --prompt tokens are prefilled, then --steps decode
ticks are timed (wall clock of `Engine.step`, which includes scheduling and the tick's one host sync).
The floor is the larger of
  - bytes the step must read (weights actually touched: attention, router, shared experts, LM head,
    B embedding rows, and each layer's *distinct* routed experts that tick; plus the KV cache read)
    over the measured copy bandwidth, and
  - the step's FLOPs over the measured dense matmul rate,
and "of floor" is floor / measured step time (1.0 = at the roofline).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from engine.config import ModelConfig, get_preset
from engine.engine import Engine
from engine.request import Request
from engine.scheduler import SchedulerConfig
from tracer.events import ExpertsEvent, TickEvent
from tracer.recorder import ListRecorder


class _Discard:
    def on_token(self, token: int, t_ns: int) -> None: ...

    def on_finish(self, status: str, reason: str, t_ns: int) -> None: ...


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    src = torch.empty(256 * 2**20 if device.type == "cuda" else 64 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    reps = 20
    t = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    _sync(device)
    return 2 * src.numel() * reps / (time.perf_counter() - t)


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul in the model's dtype."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def step_floor(cfg: ModelConfig, dtype: torch.dtype, batch: int, kv_tokens: int, distinct_experts: int,
               bandwidth: float, flops_rate: float) -> float:
    """Seconds a decode step of `batch` tokens cannot beat on this hardware (see module docstring)."""
    h, i = cfg.hidden, cfg.moe_intermediate
    attention = h * (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim + cfg.heads * cfg.head_dim * h
    per_layer = attention + 3 * h * i * cfg.shared_experts
    dense = cfg.layers * per_layer + h * cfg.vocab_size + batch * h
    weight_bytes = (dense + distinct_experts * 3 * h * i) * dtype.itemsize + cfg.layers * h * cfg.routed_experts * 4
    kv_bytes = kv_tokens * cfg.kv_bytes_per_token(dtype)
    active = cfg.layers * (per_layer + cfg.top_k * 3 * h * i) + h * cfg.vocab_size
    attention_flops = 4 * cfg.heads * cfg.head_dim * kv_tokens * cfg.layers
    flops = 2 * active * batch + attention_flops
    return max((weight_bytes + kv_bytes) / bandwidth, flops / flops_rate)


def bench_batch(cfg: ModelConfig, device: str, batch: int, prompt: int, steps: int) -> dict:
    rec = ListRecorder()
    sched = SchedulerConfig(max_seqs=batch, max_tokens=max(batch, 2048), prefill_chunk=2048,
                            kv_capacity_tokens=batch * (prompt + steps + 32), queue_limit=batch)
    engine = Engine(cfg, sched, device=device, recorder=rec)
    rng = np.random.default_rng(0)
    for r in range(batch):
        engine.submit(Request(r, rng.integers(0, cfg.vocab_size, prompt).tolist(), steps + 8, _Discard()))
    while engine.scheduler.waiting or any(s.pending > 1 for s in engine.scheduler.running):
        engine.step()
    for _ in range(3):  # warm up the decode shapes
        engine.step()
    rec.events.clear()
    t = time.perf_counter()
    for _ in range(steps):
        engine.step()
    step_s = (time.perf_counter() - t) / steps
    ticks = [e for e in rec.events if isinstance(e, TickEvent)]
    experts = [e for e in rec.events if isinstance(e, ExpertsEvent)]
    assert all(e.seqs == batch and e.prefill_tokens == 0 for e in ticks), "bench batch was not decode-only"
    distinct = float(np.mean([(e.counts > 0).sum() for e in experts]))
    kv_tokens = batch * (prompt + 3 + steps // 2)  # mean context over the timed steps
    return {
        "step_s": step_s,
        "forward_s": float(np.mean([e.forward_ns for e in ticks])) / 1e9,
        "distinct": distinct,
        "kv_tokens": kv_tokens,
        "engine": engine,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--layers", type=int)
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    overrides = {"layers": args.layers} if args.layers else {}
    cfg = get_preset(args.preset, **overrides)

    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        r = bench_batch(cfg, args.device, b, args.prompt, args.steps)
        engine = r.pop("engine")
        rows.append((b, r))
    dev, dtype = engine.device, engine.dtype
    bandwidth, rate = copy_bandwidth(dev), matmul_rate(dev, dtype)
    d = engine.describe()
    print(f"{cfg.name}, {cfg.layers} layers, {d['device_name']}, {d['model']['dtype']}, "
          f"experts via {d['expert_matmul']}, prompt {args.prompt}, {args.steps} decode steps")
    print(f"measured: copy {bandwidth / 1e9:.1f} GB/s, matmul {rate / 1e12:.2f} TFLOP/s, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'batch':>6} {'step ms':>9} {'fwd ms':>8} {'tok/s':>9} {'ticks/s':>8} {'experts/layer':>14} "
          f"{'floor ms':>9} {'of floor':>9}")
    for b, r in rows:
        per_layer = r["distinct"] / cfg.layers
        floor = step_floor(cfg, dtype, b, r["kv_tokens"], round(r["distinct"]), bandwidth, rate)
        print(f"{b:>6} {r['step_s'] * 1e3:>9.2f} {r['forward_s'] * 1e3:>8.2f} {b / r['step_s']:>9.0f} "
              f"{1 / r['step_s']:>8.0f} {per_layer:>14.1f} {floor * 1e3:>9.3f} {floor / r['step_s']:>9.1%}")


if __name__ == "__main__":
    main()
