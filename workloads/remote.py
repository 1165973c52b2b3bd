"""`tickscope record --target URL`: the load generator against a running server, over HTTP.

Two traces, one per process, each written by the side that saw it: the server (`tickscope
serve --trace`) writes the engine's ticks, expert load and its own view of every request; the
client writes `--out` with only the client side — a header naming the target and the workload,
then each request's `arrive`, `first_token` and `finish` with every token's time as received.
So the client trace has requests and no ticks, and its latencies include the network and the
HTTP front. Request ids are the client's; the server numbers requests in the order it gets them.
A server that wants an API key gets `$TICKSCOPE_API_KEY` as `Authorization: Bearer`.

A target that goes away mid-run (its connections refused, reset or closed mid-answer) stops the run:
the requests it dropped are recorded as failed, the rest cancelled, the trace closed, and RunFailed
says so in one line.

With `watch` (`record --target URL --watch`), the server's /metrics (or another metrics page) is
scraped into the same trace as the requests, as `tickscope watch` records it (workloads/watch.py):
the server's view, one tick per scrape, beside the client's. A metrics page that goes away stops
the run as the target does.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from engine.errors import ConfigError
from tracer.events import SessionHeader
from tracer.writer import TraceWriter
from workloads.errors import RunFailed
from workloads.http_target import HttpTarget, TargetLost
from workloads.loadgen import LoadResult, Progress, run_load
from workloads.openai_api import API_KEY_ENV
from workloads.run import RecordingPlan, RecordingResult, fault_line, stop_on_fault
from workloads.signals import stop_on_signals
from workloads.spec import WorkloadSpec
from workloads.tokenizer import BYTE_TOKENS
from workloads.versions import software_versions
from workloads.watch import Scrape, ServerGone, Watcher, first_scrape, metrics_url, watch_config

_MODELS_TIMEOUT_S = 10.0


async def fetch_model(url: str, api_key: str | None = None) -> dict[str, Any]:
    """The first model a server lists at /v1/models (tickscope's also gives its vocab_size)."""
    try:
        timeout = aiohttp.ClientTimeout(total=_MODELS_TIMEOUT_S)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            async with session.get(url.rstrip("/") + "/v1/models") as response:
                if response.status == 401:
                    raise ConfigError(f"the target {url} wants an API key: set {API_KEY_ENV}")
                response.raise_for_status()
                listing = await response.json(content_type=None)
        card: dict[str, Any] = listing["data"][0]  # JSON as the server sent it: not checked to be an object
        return card
    except ConfigError:
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise ConfigError(f"cannot reach the target {url}: {exc or type(exc).__name__}") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise ConfigError(f"the target {url} does not list its models at /v1/models") from None


@dataclass(frozen=True)
class WatchPlan:
    """`record --target URL --watch`: scrape `url` (a metrics page) every `interval_s` into the trace."""

    url: str
    interval_s: float = 0.5


def record_remote(
    plan: RecordingPlan,
    target: str,
    on_progress: Callable[[Progress], None] | None = None,
    watch: WatchPlan | None = None,
) -> RecordingResult:
    """Run `plan`'s workload against the server at `target`, writing the client's trace to `plan.out`
    (with the server's metrics too, when `watch` says where they are)."""
    spec = plan.workload_spec()
    HttpTarget(target)  # checks the URL before anything is contacted or written
    page = metrics_url(watch.url) if watch is not None else ""
    api_key = os.environ.get(API_KEY_ENV) or None  # never written to the trace
    card = asyncio.run(fetch_model(target, api_key))
    # A trace is clipped to the context the server says it takes, if it says.
    context = card.get("max_model_len")
    spec = spec.with_context(context if type(context) is int and context > 1 else None)
    config: dict[str, Any] = {
        "target": target,
        "model": card,
        "workload": spec.to_dict(),
        "seed": spec.seed,
        "duration_s": spec.duration_s if plan.duration_s is None else plan.duration_s,
        "versions": software_versions(),
    }
    watched: tuple[str, Scrape] | None = None
    if watch is not None:
        watched = asyncio.run(first_scrape(page))
        config["watch"] = watch_config(page, watched[0], watch.interval_s, watched[1].page)
    t0 = watched[1].sent_ns if watched is not None else time.monotonic_ns()  # the first scrape is tick 0
    header = SessionHeader(t0, time.time_ns() - (time.monotonic_ns() - t0), config)
    writer = TraceWriter(plan.out, header)
    watcher = None
    if watch is not None and watched is not None:
        watcher = Watcher(page, watched[0], watch.interval_s, writer, watched[1])
    try:
        load, lost = asyncio.run(_drive(target, api_key, card, spec, writer, plan.duration_s, on_progress, watcher))
    finally:
        writer.close()
    if lost is not None:
        failed = sum(r.status == "failed" for r in load.records)
        raise RunFailed(fault_line(lost, failed, writer)) from lost
    return RecordingResult(
        out=plan.out,
        ticks=0,
        requests_submitted=len(load.records),
        requests_finished=sum(r.status == "finished" for r in load.records),
        tokens_generated=sum(r.output_tokens for r in load.records),
        dropped_events=writer.dropped,
        interrupted=load.stopped,
        traffic=spec.arrivals.traffic,
    )


async def _drive(
    target: str,
    api_key: str | None,
    card: dict[str, Any],
    spec: WorkloadSpec,
    writer: TraceWriter,
    duration_s: float | None,
    on_progress: Callable[[Progress], None] | None,
    watcher: Watcher | None = None,
) -> tuple[LoadResult, TargetLost | ServerGone | None]:
    """The run, and whether the target (or its metrics page) went away during it."""
    http = HttpTarget(target, model=str(card.get("id", "tickscope")), api_key=api_key)
    # Servers that do not say their vocabulary still take every byte-level id.
    vocab = card.get("vocab_size")
    vocab_size = vocab if type(vocab) is int and vocab > 0 else BYTE_TOKENS
    watched = asyncio.Event()  # set once the load has ended: the watcher's last scrape, then it stops
    scraping = asyncio.create_task(watcher.run(watched)) if watcher is not None else None
    try:
        with stop_on_signals() as stop:
            watchdog = asyncio.create_task(stop_on_fault(stop, http, writer, *([watcher] if watcher else [])))
            try:
                load = await run_load(
                    http, spec, writer, vocab_size=vocab_size, duration_s=duration_s, on_progress=on_progress, stop=stop
                )
            finally:
                watchdog.cancel()
        return load, http.error or (watcher.error if watcher is not None else None)
    finally:
        watched.set()
        await http.aclose()
        if scraping is not None:
            await scraping
