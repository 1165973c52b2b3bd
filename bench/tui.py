"""Dashboard benchmark: a 1,000,000-tick recording opened, sought and played in the real app.

    .venv/bin/python bench/tui.py [--ticks N] [--keep FILE]

Writes a synthetic but realistic trace (continuous batching of Poisson arrivals, a [4 x 16]
expert load per tick, a 2-stage x 2-micro-batch pipeline, every request's arrive / admit /
first token / finish with token times) through TraceWriter, then drives `TickscopeApp` headless
with `App.run_test` at 200x60 and prints one table against the targets of issue 6:
open to first frame under 1 s, seek to any tick under 100 ms, one replay frame under 33 ms,
peak memory under 1 GB. `--keep FILE` keeps the trace (and reuses it when it is already there).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

# This file is named like the package it measures: keep its own folder off the import path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import numpy as np
from rich.console import Console
from rich.table import Table

from tracer import ExpertsEvent, RequestEvent, SessionHeader, StageEvent, TickEvent, TraceWriter

LAYERS, EXPERTS, TOP_K = 4, 16, 2
STAGES, MICRO_BATCHES = 2, 2
T0_NS = 1_000_000_000_000
SIZE = (200, 60)
SEEKS = 30
FRAMES = 300


def write_trace(path: str, ticks: int, seed: int = 0) -> int:
    """A `ticks`-long recording of a toy continuous-batching scheduler; returns requests made."""
    rng = np.random.default_rng(seed)
    config = {
        "model": {"name": "tiny", "layers": LAYERS, "experts": EXPERTS, "top_k": TOP_K},
        "device": {"name": "cpu"},
        "scheduler": {"policy": "continuous", "window_ms": 0, "max_seqs": 16},
        "workload": {"name": "bench-1M"},
    }
    popularity = rng.dirichlet(np.full(EXPERTS, 0.6), size=LAYERS)
    # A few pipeline shapes reused: their bytes still go through the writer once per tick.
    cell = 500_000
    shapes = []
    for jitter in range(16):
        cost = cell + rng.integers(0, cell // 2, (STAGES, MICRO_BATCHES))
        start = np.zeros((STAGES, MICRO_BATCHES), np.int64)
        end = np.zeros_like(start)
        for s in range(STAGES):
            for m in range(MICRO_BATCHES):
                start[s, m] = max(end[s - 1, m] if s else 0, end[s, m - 1] if m else 0)
                end[s, m] = start[s, m] + cost[s, m]
        flat_end = np.cumsum(cost.ravel()).reshape(cost.shape)
        shapes.append((flat_end - cost, flat_end, start, end))
    block = 10_000
    waiting: list[tuple[int, int, int]] = []  # (id, arrive_ns, tokens to generate)
    running: dict[int, list] = {}  # id -> [tokens left, arrive_ns, token µs so far]
    next_id = 0
    t = T0_NS
    with TraceWriter(path, SessionHeader(T0_NS, 1_700_000_000_000_000_000, config)) as writer:
        emit = writer.emit
        for base in range(0, ticks, block):
            n = min(block, ticks - base)
            arrivals = rng.poisson(0.3, n)
            lengths = rng.integers(8, 64, arrivals.sum() + 1)
            prompts = rng.integers(16, 256, arrivals.sum() + 1)
            durations = rng.normal(4_000_000, 300_000, n).astype(np.int64)
            load = rng.poisson(popularity[None] * 24, (n, LAYERS, EXPERTS)).astype(np.int32)
            drawn = 0
            for i in range(n):
                tick = base + i
                for _ in range(arrivals[i]):
                    emit(RequestEvent(next_id, "arrive", t, prompt_tokens=int(prompts[drawn])))
                    if len(waiting) >= 64:  # the queue is full: turned away at once
                        emit(RequestEvent(next_id, "finish", t + 1_000, tick=tick, status="rejected",
                                          reason="queue full"))
                    else:
                        waiting.append((next_id, t, int(lengths[drawn])))
                    next_id += 1
                    drawn += 1
                start = t + 100_000
                admitted = 0
                while waiting and len(running) < 16:
                    rid, arrived, length = waiting.pop(0)
                    emit(RequestEvent(rid, "admit", start, tick=tick))
                    running[rid] = [length, arrived, []]
                    admitted += 1
                end = start + int(durations[i])
                seqs = len(running)
                for rid in list(running):
                    r = running[rid]
                    r[2].append((end - r[1]) // 1000)
                    r[0] -= 1
                    if len(r[2]) == 1:
                        emit(RequestEvent(rid, "first_token", end, tick=tick))
                    if r[0] == 0:
                        del running[rid]
                        emit(RequestEvent(rid, "finish", end, output_tokens=len(r[2]), tick=tick,
                                          status="finished", token_us=np.array(r[2], np.uint32)))
                emit(TickEvent(tick, start, end, 100_000, seqs, admitted * 128, seqs - admitted,
                               len(waiting), len(running), 150 * seqs, 4096, int(durations[i]) - 50_000))
                emit(ExpertsEvent(tick, load[i]))
                emit(StageEvent(tick, *shapes[tick % len(shapes)]))
                t = end
            # Back-pressure: the writer would drop bulky events if the generator outran it.
            writer.flush()
    if writer.dropped:
        raise RuntimeError(f"the writer dropped {writer.dropped} events; the bench trace is incomplete")
    return next_id
