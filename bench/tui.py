"""Dashboard benchmark: a 1,000,000-tick recording opened, sought and played in the real app.

    .venv/bin/python -m bench.tui [--ticks N] [--keep FILE]      # from the repo root

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

from rich.console import Console
from rich.table import Table

from tracer import RequestEvent, TickEvent, TraceWriter
from tracer.synth import synthetic_events, synthetic_header

LAYERS, EXPERTS, TOP_K = 4, 16, 2
STAGES, MICRO_BATCHES = 2, 2
T0_NS = 1_000_000_000_000
SIZE = (200, 60)
SEEKS = 30
FRAMES = 300


def write_trace(path: str, ticks: int, seed: int = 0) -> int:
    """A `ticks`-long recording of tracer/synth.py's toy continuous-batching scheduler (a 2 x 2
    pipeline, a [4 x 16] expert load, 16 sequences at most, a queue of 64); returns requests made."""
    header = synthetic_header(layers=LAYERS, experts=EXPERTS, top_k=TOP_K, max_batch=16, seed=seed, name="bench-1M")
    events = synthetic_events(
        ticks,
        layers=LAYERS,
        experts=EXPERTS,
        top_k=TOP_K,
        stages=STAGES,
        micro_batches=MICRO_BATCHES,
        max_batch=16,
        queue_limit=64,
        rate=0.3,
        prompt_tokens=(16, 256),
        output_tokens=(8, 64),
        tick_ns=4_000_000,
        seed=seed,
    )
    requests = 0
    with TraceWriter(path, header) as writer:
        for ev in events:
            writer.emit(ev)
            if type(ev) is RequestEvent and ev.phase == "arrive":
                requests += 1
            # Back-pressure every 500 ticks (drains of ~4,000 events, which the writer compresses, as
            # when recording): the writer would drop bulky events if the generator outran it.
            elif type(ev) is TickEvent and ev.tick % 500 == 499:
                writer.flush()
    if writer.dropped:
        raise RuntimeError(f"the writer dropped {writer.dropped} events; the bench trace is incomplete")
    return requests


class FrameTimer:
    """Wraps the app's frame renderer: how long each frame took, and how many there were."""

    def __init__(self, app) -> None:
        self.times: list[float] = []
        self.done_at: list[float] = []
        inner = app._render_frame

        def timed() -> None:
            t = time.perf_counter()
            inner()
            self.done_at.append(time.perf_counter())
            self.times.append(self.done_at[-1] - t)

        app._render_frame = timed

    async def next_frame(self, count: int, limit_s: float = 30.0) -> float:
        """Wait until more than `count` frames were drawn; when the next one finished."""
        deadline = time.perf_counter() + limit_s
        while len(self.done_at) <= count:
            if time.perf_counter() > deadline:
                raise TimeoutError("no frame drawn")
            await asyncio.sleep(0)
        return self.done_at[count]


async def seeks(app, frames: FrameTimer, ticks: int, rng: random.Random) -> list[float]:
    """Seconds from asking for a random tick to its frame being drawn, one per seek."""
    out = []
    for _ in range(SEEKS):
        target = rng.randrange(ticks)
        n = len(frames.done_at)
        t = time.perf_counter()
        app._goto(str(target))
        out.append(await frames.next_frame(n) - t)
        assert app.state.tick_number(app.cursor) == target
    return out


async def measure(path: str, ticks: int) -> dict[str, object]:
    from tui.app import SPEEDS, TickscopeApp
    from tui.source import ReplaySource

    rng = random.Random(1)
    t0 = time.perf_counter()
    app = TickscopeApp(ReplaySource(path), "replay", autoplay=False)
    frames = FrameTimer(app)
    result: dict[str, object] = {}
    async with app.run_test(size=SIZE) as pilot:
        # The first frame that shows tick 0 with its rows read (the very first may precede layout).
        while True:
            done = await frames.next_frame(len(frames.done_at) - 1 if frames.done_at else 0)
            if app.state.n_ticks and app.state.frame_loaded(0):
                break
            await asyncio.sleep(0)
        result["first"] = done - t0
        result["seek_loading"] = await seeks(app, frames, ticks, rng)
        result["loaded_share_after_seeks"] = app.state.loaded_share
        while app.status != "loaded":
            await asyncio.sleep(0.05)
        result["loaded"] = time.perf_counter() - t0
        result["seek_loaded"] = await seeks(app, frames, ticks, rng)
        steps = []
        for _ in range(20):
            t = time.perf_counter()
            await pilot.press("right")
            steps.append(time.perf_counter() - t)
        result["step"] = steps
        for span_presses, key in ((0, "play"), (3, "play_span")):
            for _ in range(span_presses):
                await pilot.press("a")
            app.speed_index = SPEEDS.index(None)  # one tick per frame: every frame a new tick
            app._goto(str(rng.randrange(ticks // 2)))
            await pilot.pause()
            n = len(frames.times)
            app.playing = True
            while len(frames.times) < n + FRAMES:
                await asyncio.sleep(0.01)
            app.playing = False
            result[key] = frames.times[n : n + FRAMES]
        result["heat_span"] = app.heat_span
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def ms(values: list[float]) -> str:
    v = sorted(values)
    p95 = v[min(int(len(v) * 0.95), len(v) - 1)]
    return f"p50 {statistics.median(v) * 1e3:.1f} · p95 {p95 * 1e3:.1f} · max {v[-1] * 1e3:.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=1_000_000)
    ap.add_argument("--keep", help="keep the trace here (reused if it is already there)")
    ap.add_argument("--write", help=argparse.SUPPRESS)  # the child process that writes the trace
    args = ap.parse_args()
    if args.write:
        print(write_trace(args.write, args.ticks))
        return
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or os.path.join(tmp, "bench-1M.msgpack")
        if not os.path.exists(path):
            # In a child process, so the generator's memory does not count as the dashboard's.
            t = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "bench.tui", "--write", os.path.abspath(path), "--ticks", str(args.ticks)],
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            console.print(
                f"wrote {args.ticks:,} ticks, {int(out):,} requests, "
                f"{os.path.getsize(path) / 2**20:,.0f} MiB in {time.perf_counter() - t:.1f} s"
            )
        r = asyncio.run(measure(path, args.ticks))
    table = Table(
        title=f"tickscope dashboard, {args.ticks:,} ticks, {SIZE[0]}x{SIZE[1]} headless "
        f"({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()})"
    )
    table.add_column("measure")
    table.add_column("result", justify="right")
    table.add_column("target", justify="right")
    table.add_column("ok")

    def row(name: str, value: str, target: str, ok: bool | None) -> None:
        table.add_row(name, value, target, "" if ok is None else ("yes" if ok else "NO"))

    row("open → first frame drawn", f"{r['first']:.2f} s", "< 1 s", r["first"] < 1)
    for key, label in (
        ("seek_loading", "seek to a random tick, while loading"),
        ("seek_loaded", "seek to a random tick, loaded"),
    ):
        row(f"{label} ({SEEKS}x)", ms(r[key]), "< 100 ms", max(r[key]) < 0.1)
    row("replay frame, one tick per frame", ms(r["play"]), "< 33 ms", max(r["play"]) < 0.033)
    row(
        f"replay frame, heatmap mean of {r['heat_span']} ticks",
        ms(r["play_span"]),
        "< 33 ms",
        max(r["play_span"]) < 0.033,
    )
    row("step a tick (key → idle, incl. layout)", ms(r["step"]), "", None)
    row("whole trace read in the background", f"{r['loaded']:.1f} s", "", None)
    row("peak RSS", f"{r['rss_mb']:,.0f} MB", "< 1 GB", r["rss_mb"] < 1024)
    console.print(table)


if __name__ == "__main__":
    main()
