"""How well the load generator keeps its schedule: dispatch lag (actual - planned send time).

Runs Poisson load at several rates against a no-op engine that answers each request from its
own thread with one token, as the real engine would, and prints p50/p99/max of the lag. The
target is p99 under 2 ms at 1,000 requests/s on two CPU cores.

The floor is asyncio's: on Linux the loop waits in epoll, whose timeout is whole milliseconds,
so a send lands up to a millisecond after its time (p50 about 0.5 ms) unless the schedule is
already behind. Anything else running on the machine shows up in p99 and max, so the title
gives the load average at the start.

    .venv/bin/python -m bench.loadgen [--seconds 3] [--rates 100,1000,5000]   # from the repo root
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import threading
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from engine.request import Request
from tracer.recorder import NullRecorder
from workloads.loadgen import run_load
from workloads.spec import parse_workload


class NoOpEngine:
    """Answers every request at once, from its own thread: one token, then finished."""

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def submit(self, req: Request) -> None:
        self._inbox.put(req)

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (req := self._inbox.get()) is not None:
            now = time.monotonic_ns()
            req.sink.on_token(0, now)
            req.sink.on_finish("finished", "", now)


def workload(rate: float, seconds: float):
    return parse_workload(
        f"""
        duration_s = {seconds}
        [arrivals]
        kind = "poisson"
        rate = {rate}
        [prompt]
        kind = "fixed"
        value = 8
        [output]
        kind = "fixed"
        value = 1
        """,
        "bench workload",
    )


async def measure(rate: float, seconds: float) -> dict:
    engine = NoOpEngine()
    try:
        result = await run_load(engine, workload(rate, seconds), NullRecorder(), vocab_size=512)
    finally:
        engine.close()
    lag_ms = np.array([r.send_lag_s for r in result.records]) * 1e3
    span_s = (result.send_end_ns - result.start_ns) / 1e9
    return {
        "rate": rate,
        "requests": len(lag_ms),
        "sent_per_s": len(lag_ms) / span_s,
        "p50": float(np.percentile(lag_ms, 50)),
        "p99": float(np.percentile(lag_ms, 99)),
        "max": float(lag_ms.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    parser.add_argument("--rates", default="100,1000,5000", help="requests/s, comma-separated")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    title = f"load generator dispatch lag, no-op engine, {os.cpu_count()} CPUs, load {load:.2f}"
    table = Table(title=title)
    columns = ("target req/s", "requests", "sent req/s", "lag p50 ms", "lag p99 ms", "lag max ms")
    for name in columns:
        table.add_column(name, justify="right")
    for rate in (float(r) for r in args.rates.split(",")):
        row = asyncio.run(measure(rate, args.seconds))
        table.add_row(
            f"{row['rate']:,.0f}",
            f"{row['requests']:,}",
            f"{row['sent_per_s']:,.0f}",
            f"{row['p50']:.3f}",
            f"{row['p99']:.3f}",
            f"{row['max']:.3f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
