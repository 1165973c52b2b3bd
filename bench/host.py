"""The engine's host time per decode tick: what the CPU spends outside the forward pass.

The engine reads the device once per tick and plans the next tick only then, so host time is not
overlapped with the GPU: it adds to every step, and at batch 256 it is measured against a GPU step of
a few milliseconds. A micro model (one layer, hidden 32) makes the forward pass cheap, so the rest
shows: scheduling, the tick's inputs, committing tokens, events. "outside forward" is wall time per
tick minus the forward time the engine records; "graph fill" is the decode graphs' input fill,
which is inside the forward.

    .venv/bin/python -m bench.host [--batches 1,8,64,256] [--ticks 100]   # from the repo root
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.engine import start_decoding
from engine.batch import SeqChunk
from engine.choices import DecodeGraphs
from engine.config import get_preset
from engine.decode_graphs import _Bucket
from engine.engine import Engine
from engine.scheduler import SchedulerConfig
from tracer.events import TickEvent
from tracer.recorder import ListRecorder

MICRO = dict(
    layers=1, hidden=32, heads=1, kv_heads=1, head_dim=32, routed_experts=4, top_k=1, moe_intermediate=16, vocab_size=64
)
PROMPT = 256


def host_time(batch: int, decode_graphs: DecodeGraphs, ticks: int) -> tuple[float, float, float]:
    """ms per decode tick: wall time, outside the forward pass, and the graphs' input fill."""
    rec = ListRecorder()
    sched = SchedulerConfig(
        max_seqs=batch, max_tokens=4096, kv_capacity_tokens=batch * (PROMPT + ticks + 64), decode_graphs=decode_graphs
    )
    engine = Engine(get_preset("tiny", **MICRO), sched, device="cpu", recorder=rec)
    start_decoding(engine, batch, PROMPT, ticks + 32)
    for _ in range(10):
        engine.step()
    fill_s = 0.0
    if engine.graphs is not None:
        fill = engine.graphs._fill

        def timed_fill(bucket: _Bucket, chunks: list[SeqChunk], context: np.ndarray) -> None:
            nonlocal fill_s
            t = time.perf_counter()
            fill(bucket, chunks, context)
            fill_s += time.perf_counter() - t

        engine.graphs._fill = timed_fill  # type: ignore[method-assign]
    rec.events.clear()
    t = time.perf_counter()
    for _ in range(ticks):
        engine.step()
    wall = (time.perf_counter() - t) / ticks * 1e3
    forward = float(np.mean([e.forward_ns for e in rec.events if isinstance(e, TickEvent)])) / 1e6
    return wall, wall - forward, fill_s / ticks * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--ticks", type=int, default=100)
    args = ap.parse_args()
    table = Table(
        title=f"engine host time per decode tick — {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )
    for column in ("batch", "path", "tick ms", "outside forward ms", "graph fill ms"):
        table.add_column(column, justify="right")
    for b in (int(x) for x in args.batches.split(",")):
        paths: tuple[DecodeGraphs, ...] = ("off", "on")
        for path in paths:
            wall, outside, fill = host_time(b, path, args.ticks)
            name = "eager" if path == "off" else "decode graphs"
            table.add_row(str(b), name, f"{wall:.2f}", f"{outside:.2f}", f"{fill:.2f}" if path == "on" else "")
    Console().print(table)


if __name__ == "__main__":
    main()
