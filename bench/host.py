"""The engine's host time per decode tick: what the CPU spends outside the forward pass, and how much
of it planning ahead moves under the device's work.

A micro model (one layer, hidden 32) makes the forward pass cheap, so the rest shows: scheduling, the
tick's inputs, committing tokens, events. "outside forward" is wall time per tick minus the forward
time the engine records; "graph fill" is the decode graphs' input fill. Planning ahead (`plan_ahead`,
engine/engine.py) schedules tick n+1 and fills its inputs between launching tick n and reading it
back: "planned ahead" is that host time per tick. On CUDA the device is busy with tick n meanwhile,
so it is hidden (the tick's wall time drops by it); on the CPU the forward pass is the host's own
work, the launch returns when it is done, and nothing can be hidden: the column says what a GPU
would hide of this host's work.

    .venv/bin/python -m bench.host [--batches 1,8,64,256] [--ticks 100] [--device cuda]   # from the repo root
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.engine import start_decoding
from engine.choices import DecodeGraphs, PlanAhead
from engine.config import get_preset
from engine.engine import Engine
from engine.scheduler import SchedulerConfig
from tracer.events import TickEvent
from tracer.recorder import ListRecorder

MICRO = dict(
    layers=1, hidden=32, heads=1, kv_heads=1, head_dim=32, routed_experts=4, top_k=1, moe_intermediate=16, vocab_size=64
)
PROMPT = 256


def _timed(fn: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    """`fn`, adding the seconds each call takes to spent[0]."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    return timed


def host_time(
    device: str, batch: int, decode_graphs: DecodeGraphs, plan_ahead: PlanAhead, ticks: int
) -> tuple[float, ...]:
    """ms per decode tick: wall time, outside the forward pass, the graphs' input fill, planned ahead."""
    rec = ListRecorder()
    sched = SchedulerConfig(
        max_seqs=batch,
        max_tokens=4096,
        kv_capacity_tokens=batch * (PROMPT + ticks + 64),
        decode_graphs=decode_graphs,
        plan_ahead=plan_ahead,
    )
    engine = Engine(get_preset("tiny", **MICRO), sched, device=device, recorder=rec)
    start_decoding(engine, batch, PROMPT, ticks + 32)
    for _ in range(10):
        engine.step()
    fill, planned = [0.0], [0.0]
    if engine.graphs is not None:
        engine.graphs._fill = _timed(engine.graphs._fill, fill)  # type: ignore[method-assign]
    plan = engine._plan

    def plan_timed(wait_ns: int, ahead: bool) -> Any:  # only the ticks planned ahead are timed
        return timed_ahead(wait_ns, ahead=True) if ahead else plan(wait_ns, ahead=False)

    timed_ahead = _timed(plan, planned)

    engine._plan = plan_timed  # type: ignore[method-assign]
    rec.events.clear()
    t = time.perf_counter()
    for _ in range(ticks):
        engine.step()
    wall = (time.perf_counter() - t) / ticks * 1e3
    forward = float(np.mean([e.forward_ns for e in rec.events if isinstance(e, TickEvent)])) / 1e6
    return wall, wall - forward, fill[0] / ticks * 1e3, planned[0] / ticks * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--ticks", type=int, default=100)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: on CUDA, planning ahead hides what it plans")
    args = ap.parse_args()
    table = Table(
        title=f"engine host time per decode tick on {args.device} — {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )
    for column in ("batch", "path", "plan ahead", "tick ms", "outside forward ms", "graph fill ms", "planned ahead ms"):
        table.add_column(column, justify="right")
    for b in (int(x) for x in args.batches.split(",")):
        paths: tuple[DecodeGraphs, ...] = ("off", "on")
        modes: tuple[PlanAhead, ...] = ("off", "on")
        for path in paths:
            for mode in modes:
                wall, outside, fill, ahead = host_time(args.device, b, path, mode, args.ticks)
                table.add_row(
                    str(b),
                    "eager" if path == "off" else "decode graphs",
                    mode,
                    f"{wall:.2f}",
                    f"{outside:.2f}",
                    f"{fill:.2f}" if path == "on" else "",
                    f"{ahead:.2f}" if mode == "on" else "",
                )
    Console().print(table)


if __name__ == "__main__":
    main()
