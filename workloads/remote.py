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
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from engine.errors import ConfigError
from tracer.events import SessionHeader
from tracer.writer import TraceWriter
from workloads.errors import RunFailed
from workloads.http_target import HttpTarget, TargetLost
from workloads.loadgen import LoadResult, Progress, run_load
from workloads.openai_api import API_KEY_ENV
from workloads.run import RecordingPlan, RecordingResult, fault_line, software_versions, stop_on_fault
from workloads.signals import stop_on_signals
from workloads.spec import WorkloadSpec
from workloads.tokenizer import BYTE_TOKENS

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


def record_remote(
    plan: RecordingPlan, target: str, on_progress: Callable[[Progress], None] | None = None
) -> RecordingResult:
    """Run `plan`'s workload against the server at `target`, writing the client's trace to `plan.out`."""
    spec = plan.workload_spec()
    HttpTarget(target)  # checks the URL before anything is contacted or written
    api_key = os.environ.get(API_KEY_ENV) or None  # never written to the trace
    card = asyncio.run(fetch_model(target, api_key))
    # A trace is clipped to the context the server says it takes, if it says.
    context = card.get("max_model_len")
    spec = spec.with_context(context if type(context) is int and context > 1 else None)
    header = SessionHeader(
        time.monotonic_ns(),
        time.time_ns(),
        {
            "target": target,
            "model": card,
            "workload": spec.to_dict(),
            "seed": spec.seed,
            "duration_s": spec.duration_s if plan.duration_s is None else plan.duration_s,
            "versions": software_versions(),
        },
    )
    writer = TraceWriter(plan.out, header)
    try:
        load, lost = asyncio.run(_drive(target, api_key, card, spec, writer, plan.duration_s, on_progress))
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
) -> tuple[LoadResult, TargetLost | None]:
    """The run, and whether the target went away during it."""
    http = HttpTarget(target, model=str(card.get("id", "tickscope")), api_key=api_key)
    # Servers that do not say their vocabulary still take every byte-level id.
    vocab = card.get("vocab_size")
    vocab_size = vocab if type(vocab) is int and vocab > 0 else BYTE_TOKENS
    try:
        with stop_on_signals() as stop:
            watchdog = asyncio.create_task(stop_on_fault(stop, http, writer))
            try:
                load = await run_load(
                    http, spec, writer, vocab_size=vocab_size, duration_s=duration_s, on_progress=on_progress, stop=stop
                )
            finally:
                watchdog.cancel()
        return load, http.error
    finally:
        await http.aclose()
