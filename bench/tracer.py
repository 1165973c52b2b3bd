"""Tracer benchmark: hot-path cost per tick, sustained write rate, read and load rates.

    .venv/bin/python -m bench.tracer [--ticks N] [--load-ticks N]      # from the repo root

A "tick" is what the tiny preset emits per scheduler iteration: 1 TickEvent, 1 ExpertsEvent of
[4 layers x 16 experts] and 3 RequestEvents. Targets (issue 3): under 5 µs per tick on the hot
path, at least 200,000 events/s written.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from tracer import ExpertsEvent, RequestEvent, SessionHeader, TickEvent, TraceWriter, from_events, load, open_trace


def tiny_tick(i: int, rng: np.random.Generator) -> list:
    t = time.monotonic_ns()
    return [
        RequestEvent(3 * i, "arrive", t, prompt_tokens=32),
        RequestEvent(3 * i + 1, "admit", t, tick=i),
        TickEvent(i, t, t + 2_000_000, 100_000, 8, 32, 7, 2, 8, 900, 4096, 1_900_000, 8),
        ExpertsEvent(i, rng.integers(0, 20, size=(4, 16), dtype=np.int32)),
        RequestEvent(
            3 * i + 2, "finish", t, output_tokens=16, status="finished", token_us=np.arange(16, dtype=np.uint32) * 2000
        ),
    ]


def hot_path(path: str, ticks: int, rate_hz: float) -> tuple[float, float, int, float]:
    """Mean and p99 µs spent in emit() per tick, ticking at `rate_hz` like a real engine; drops; and
    the file's bytes per event (compressed frames: the writer keeps up at this rate)."""
    rng = np.random.default_rng(0)
    batches = [tiny_tick(i, rng) for i in range(ticks)]
    costs = np.empty(ticks)
    period = 1.0 / rate_hz
    with TraceWriter(path, SessionHeader(time.monotonic_ns(), time.time_ns())) as w:
        emit = w.emit
        next_t = time.perf_counter()
        for i, batch in enumerate(batches):
            t0 = time.perf_counter_ns()
            for ev in batch:
                emit(ev)
            costs[i] = time.perf_counter_ns() - t0
            next_t += period
            while time.perf_counter() < next_t:  # spin, as a busy engine would be computing
                pass
    size = os.path.getsize(path) / (ticks * len(batches[0]))
    return costs.mean() / 1e3, np.percentile(costs, 99) / 1e3, w.dropped, size


def sustained(path: str, ticks: int, flush_every: int = 0) -> tuple[float, int, float]:
    """Events/s from the first emit until close() returns with everything on disk. All at once, the
    writer is behind and writes plain frames; with `flush_every`, it drains that many at a time and
    compresses them."""
    rng = np.random.default_rng(1)
    events = [ev for i in range(ticks) for ev in tiny_tick(i, rng)]
    t0 = time.perf_counter()
    with TraceWriter(path, SessionHeader(time.monotonic_ns(), time.time_ns()), queue_max=len(events) + 1) as w:
        for i, ev in enumerate(events, 1):
            w.emit(ev)
            if flush_every and i % flush_every == 0:
                w.flush()
    elapsed = time.perf_counter() - t0
    assert w.dropped == 0
    return len(events) / elapsed, len(events), os.path.getsize(path) / len(events)


def paced(path: str, events_per_s: float, seconds: float) -> tuple[float, int]:
    """Emit at a fixed rate with the default queue, as a fast engine would: achieved rate, drops."""
    rng = np.random.default_rng(2)
    ticks = [tiny_tick(i, rng) for i in range(2000)]  # reused: the writer encodes them afresh
    period = len(ticks[0]) / events_per_s
    n = int(seconds / period)
    t0 = time.perf_counter()
    with TraceWriter(path, SessionHeader(time.monotonic_ns(), time.time_ns())) as w:
        for i in range(n):
            for ev in ticks[i % len(ticks)]:
                w.emit(ev)
            while time.perf_counter() < t0 + (i + 1) * period:
                pass
    return n * len(ticks[0]) / (time.perf_counter() - t0), w.dropped


def reading(path: str) -> tuple[float, float, float, int]:
    """Events/s: iterating events, building frames from those event objects (what load() did
    before it decoded columns), and load(); and the event count."""
    t0 = time.perf_counter()
    with open_trace(path) as r:
        n = sum(1 for _ in r.events())
    read_rate = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with open_trace(path) as r:
        from_events(r.header, r.events())
    objects_rate = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    load(path)
    return read_rate, objects_rate, n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=40_000, help="ticks for the write-rate test")
    ap.add_argument("--hot-ticks", type=int, default=4_000, help="ticks for the hot-path test")
    ap.add_argument("--rate", type=float, default=1000.0, help="ticks/s in the hot-path test")
    ap.add_argument("--load-ticks", type=int, default=200_000, help="ticks in the file the read and load tests read")
    ap.add_argument("--paced-rate", type=float, default=250_000, help="events/s in the paced test")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        mean_us, p99_us, dropped, hot_bytes = hot_path(os.path.join(d, "hot.msgpack"), args.hot_ticks, args.rate)
        rate, n, bytes_per_event = sustained(os.path.join(d, "rate.msgpack"), args.ticks)
        paced_rate, paced_dropped = paced(os.path.join(d, "paced.msgpack"), args.paced_rate, 2.0)
        *_, load_bytes = sustained(os.path.join(d, "load.msgpack"), args.load_ticks, flush_every=2048)
        read_rate, objects_rate, load_rate, n_read = reading(os.path.join(d, "load.msgpack"))

    table = Table(
        title=f"tracer — {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_row(f"hot path per tick, mean ({args.rate:.0f} ticks/s, 5 events/tick)", f"{mean_us:.2f} µs", "< 5 µs")
    table.add_row("hot path per tick, p99", f"{p99_us:.2f} µs", "")
    table.add_row("events dropped in hot-path run", f"{dropped}", "0")
    table.add_row(f"written, emit to fsync ({n:,} events)", f"{rate:,.0f} events/s", "≥ 200,000")
    table.add_row(
        f"paced at {args.paced_rate:,.0f} events/s for 2 s, default queue", f"{paced_rate:,.0f} events/s", "≥ 200,000"
    )
    table.add_row("events dropped in paced run", f"{paced_dropped}", "0")
    table.add_row(f"file size per event, at {args.rate:.0f} ticks/s (compressed frames)", f"{hot_bytes:.1f} B", "")
    table.add_row(
        "file size per event, all at once (plain frames: the writer is behind)", f"{bytes_per_event:.1f} B", ""
    )
    table.add_row(
        f"read (open_trace().events(), {n_read:,} events, compressed: {load_bytes:.1f} B each)",
        f"{read_rate:,.0f} events/s",
        "",
    )
    table.add_row("frames from event objects (from_events(events()))", f"{objects_rate:,.0f} events/s", "")
    table.add_row("load() into polars frames", f"{load_rate:,.0f} events/s", "")
    Console().print(table)


if __name__ == "__main__":
    main()
