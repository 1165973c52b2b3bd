"""`tickscope watch URL`: a running inference server's Prometheus metrics, recorded as a trace.

Each scrape of `/metrics` becomes one tick (README, "Watching a server"; tracer/FORMAT.md, "Ticks of
a watched server"): the running and waiting requests, the tokens its counters gained since the
previous scrape and its KV use go into the tick event, with whatever the server does not report
marked absent (never 0); rates and the interval's latency percentiles go into a scrape event beside
it. So a watched server replays, summarises and compares like any recording.

`SOURCES` says which metric names mean what for each kind of server it knows (vLLM, SGLang and
tickscope's own `serve`, which uses vLLM's names and adds its own). The server is scraped once
before the trace is created: an unreachable URL, an answer that is not Prometheus text or metrics of
no known server are a ConfigError and leave no file. A server that goes away later ends the watch
(`Watcher.error`); the trace keeps every scrape before it, with a mark saying what happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import numpy as np

from engine.errors import ConfigError
from tracer.events import SCRAPE_SERIES, MarkEvent, ScrapeEvent, SessionHeader, TickEvent, absent_mask
from tracer.recorder import Recorder
from tracer.writer import TraceWriter
from workloads.errors import RunFailed
from workloads.metrics_text import Exposition, Histogram, NotPrometheus, parse
from workloads.signals import stop_on_signals
from workloads.versions import software_versions

SCRAPE_TIMEOUT_S = 10.0
MAX_BODY = 32 << 20  # a metrics page past this is not one


@dataclass(frozen=True)
class SourceMetrics:
    """What one kind of server calls each figure. A tuple names alternatives, newest name first
    (vLLM renamed gpu_cache_usage_perc and time_per_output_token_seconds)."""

    running: tuple[str, ...] = ()  # gauge: requests running
    waiting: tuple[str, ...] = ()  # gauge: requests waiting
    kv_usage: tuple[str, ...] = ()  # gauge: share of the KV cache in use, 0-1
    kv_tokens: tuple[str, ...] = ()  # gauge: KV capacity in tokens
    kv_blocks_info: str = ""  # vLLM: an info gauge labelled num_gpu_blocks and block_size
    prompt_tokens: tuple[str, ...] = ()  # counters
    generation_tokens: tuple[str, ...] = ()
    requests: tuple[str, ...] = ()  # finished, summed over finished_reason
    preemptions: tuple[str, ...] = ()
    gen_throughput: tuple[str, ...] = ()  # gauge, tokens/s
    ttft: tuple[str, ...] = ()  # histograms, seconds
    itl: tuple[str, ...] = ()
    e2e: tuple[str, ...] = ()
    queue: tuple[str, ...] = ()
    iteration_tokens: tuple[str, ...] = ()  # histogram: tokens per scheduler iteration
    tick: tuple[str, ...] = ()  # histogram: tickscope's tick time, seconds
    busy_seconds: tuple[str, ...] = ()  # counter: device time the ticks kept busy (tickscope's)


_VLLM = SourceMetrics(
    running=("vllm:num_requests_running",),
    waiting=("vllm:num_requests_waiting",),
    kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    kv_blocks_info="vllm:cache_config_info",
    prompt_tokens=("vllm:prompt_tokens",),
    generation_tokens=("vllm:generation_tokens",),
    requests=("vllm:request_success",),
    preemptions=("vllm:num_preemptions",),
    ttft=("vllm:time_to_first_token_seconds",),
    itl=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    e2e=("vllm:e2e_request_latency_seconds",),
    queue=("vllm:request_queue_time_seconds",),
    iteration_tokens=("vllm:iteration_tokens_total",),
)

# Which server a page comes from: the first whose prefix one of its metrics has (tickscope's pages
# carry vLLM's names too, so its own prefix is looked for first).
SOURCES: dict[str, tuple[str, SourceMetrics]] = {
    "tickscope": (
        "tickscope:",
        dataclasses.replace(_VLLM, tick=("tickscope:tick_seconds",), busy_seconds=("tickscope:device_seconds",)),
    ),
    "vllm": ("vllm:", _VLLM),
    "sglang": (
        "sglang:",
        SourceMetrics(
            running=("sglang:num_running_reqs",),
            waiting=("sglang:num_queue_reqs",),
            kv_usage=("sglang:token_usage",),
            kv_tokens=("sglang:max_total_num_tokens",),
            prompt_tokens=("sglang:prompt_tokens",),
            generation_tokens=("sglang:generation_tokens",),
            requests=("sglang:num_requests",),
            gen_throughput=("sglang:gen_throughput",),
            ttft=("sglang:time_to_first_token_seconds",),
            itl=("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
            e2e=("sglang:e2e_request_latency_seconds",),
            queue=("sglang:queue_time_seconds",),
        ),
    ),
}

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
# The scrape series each histogram gives (SCRAPE_SERIES names them all, in their order).
_PERCENTILES = (
    ("ttft", ("p50", "p90", "p99")),
    ("itl", ("p50", "p90", "p99")),
    ("e2e", ("p50", "p90", "p99")),
    ("queue", ("p50", "p99")),
    ("tick", ("p50", "p99")),
)


def metrics_url(url: str) -> str:
    """The page to scrape: `url` itself, or its `/metrics` when it names only the server."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"watch needs an http://host[:port][/path] URL, not '{url}'")
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def detect(page: Exposition, url: str) -> str:
    """The kind of server whose metrics `page` holds; ConfigError if none we know."""
    for source, (prefix, _) in SOURCES.items():
        if any(name.startswith(prefix) for name in page.families):
            return source
    raise ConfigError(
        f"{url} exports none of vLLM's, SGLang's or tickscope's metrics "
        f"({len(page.families)} metric families, none named vllm:*, sglang:* or tickscope:*)"
    )


async def fetch(session: aiohttp.ClientSession, url: str) -> Exposition:
    """One scrape. OSError-like failures (aiohttp.ClientError, TimeoutError) for a server that
    did not answer; NotPrometheus for an answer that is not a metrics page."""
    async with session.get(url, headers={"Accept": "text/plain"}) as response:
        if response.status != 200:
            raise NotPrometheus(f"answered {response.status} {response.reason or ''}".rstrip())
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > MAX_BODY:
                raise NotPrometheus(f"answered more than {MAX_BODY >> 20} MiB")
            chunks.append(chunk)
    return parse(b"".join(chunks).decode("utf-8", errors="replace"))


@dataclass
class Scrape:
    """One page and when it was asked for and answered (monotonic ns)."""

    page: Exposition
    sent_ns: int
    got_ns: int


def _kv_capacity(page: Exposition, names: SourceMetrics) -> float | None:
    capacity = page.value(*names.kv_tokens)
    if capacity is not None or not names.kv_blocks_info:
        return capacity
    for labels in page.labels.get(names.kv_blocks_info, []):
        try:
            return float(labels["num_gpu_blocks"]) * float(labels["block_size"])
        except (KeyError, ValueError):
            continue
    return None


def _increase(now: float | None, before: float | None) -> float | None:
    """A counter's gain over the interval (a counter that went down restarted: it gained `now`)."""
    if now is None or before is None:
        return None
    return now if now < before else now - before


def to_events(
    tick: int, scrape: Scrape, previous: Scrape | None, names: SourceMetrics
) -> tuple[TickEvent, ScrapeEvent]:
    """A scrape as a tick and its scrape event. The first scrape has no interval: its token counts
    and rates are absent."""
    page = scrape.page
    before = previous.page if previous is not None else None
    absent: set[str] = {"wait_ns"}

    def whole(value: float | None, *fields: str) -> int:
        if value is None or not math.isfinite(value):
            absent.update(fields)
            return 0
        return round(value)

    def counter(roles: tuple[str, ...]) -> float | None:
        if not roles or before is None:
            return None
        return _increase(page.value(*roles), before.value(*roles))

    running = page.value(*names.running)
    usage = page.share(*names.kv_usage)
    capacity = _kv_capacity(page, names)
    prompt, generated = counter(names.prompt_tokens), counter(names.generation_tokens)
    busy = counter(names.busy_seconds)  # tickscope's own: the interval's busy device time, as its ticks' forward time
    start_ns = previous.got_ns if previous is not None else scrape.sent_ns
    seconds = (scrape.got_ns - start_ns) / 1e9
    tick_event = TickEvent(
        tick=tick,
        start_ns=start_ns,
        end_ns=scrape.got_ns,
        wait_ns=0,
        seqs=whole(running, "seqs"),
        prefill_tokens=whole(prompt, "prefill_tokens"),
        decode_tokens=whole(generated, "decode_tokens"),
        queue_depth=whole(page.value(*names.waiting), "queue_depth"),
        running=whole(running, "running"),
        kv_used=whole(None if usage is None or capacity is None else usage * capacity, "kv_used"),
        kv_capacity=whole(capacity if usage is not None else None, "kv_capacity"),
        forward_ns=whole(None if busy is None else busy * 1e9, "forward_ns"),
        sampled_tokens=whole(generated, "sampled_tokens"),
    )
    tick_event.absent = absent_mask(absent)
    values: dict[str, float] = {
        "kv_usage": math.nan if usage is None else usage,
        "prompt_tokens_s": _rate(prompt, seconds),
        "generation_tokens_s": _rate(generated, seconds),
        "requests_s": _rate(counter(names.requests), seconds),
        "preemptions_s": _rate(counter(names.preemptions), seconds),
        "gen_throughput": _or_nan(page.value(*names.gen_throughput)),
    }
    iterations = _interval(page, before, names.iteration_tokens)
    values["iterations_s"] = _rate(None if iterations is None else float(iterations.counts[-1]), seconds)
    values["iteration_tokens"] = math.nan if iterations is None else iterations.mean()
    for role, levels in _PERCENTILES:
        hist = _interval(page, before, getattr(names, role))
        for level in levels:
            values[f"{role}_{level}_s"] = math.nan if hist is None else hist.quantile(QUANTILES[level])
    scrape_event = ScrapeEvent(tick, scrape.got_ns, np.array([values[name] for name in SCRAPE_SERIES]))
    return tick_event, scrape_event


def _interval(page: Exposition, before: Exposition | None, names: tuple[str, ...]) -> Histogram | None:
    if not names or before is None:
        return None
    now = page.histogram(*names)
    return None if now is None else now.since(before.histogram(*names))


def _rate(gain: float | None, seconds: float) -> float:
    return math.nan if gain is None or seconds <= 0 else gain / seconds


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


class ServerGone(Exception):
    """The watched server went away, or stopped answering metrics. One line."""


@dataclass
class Watcher:
    """Scrapes `url` every `interval_s` into `recorder` as ticks, until stopped or the server goes.

    Runs in the caller's event loop (`run`), so `record --target --watch` scrapes beside its load.
    `error` is what ended it (ServerGone), when the server went away or stopped answering metrics."""

    url: str
    source: str
    interval_s: float
    recorder: Recorder
    first: Scrape  # the scrape that recognised the server: tick 0
    error: ServerGone | None = None
    scrapes: int = 0
    _previous: Scrape | None = field(default=None, repr=False)

    @property
    def names(self) -> SourceMetrics:
        return SOURCES[self.source][1]

    def record(self, scrape: Scrape) -> None:
        tick_event, scrape_event = to_events(self.scrapes, scrape, self._previous, self.names)
        self.recorder.emit(tick_event)
        self.recorder.emit(scrape_event)
        self._previous = scrape
        self.scrapes += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Scrape on a fixed cadence (a slow answer skips the slots it overran) until `stop` is set
        or a scrape fails. Once stopped, one last scrape at the next slot: a server may count the
        last moments of a run a little after them (tickscope's counts a tick once its tokens have
        gone out), and the end of the run belongs in. Records the first scrape first: start it
        before anything else is recorded."""
        self.record(self.first)
        timeout = aiohttp.ClientTimeout(total=min(SCRAPE_TIMEOUT_S, max(self.interval_s * 4, 2.0)))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            step = max(1, round(self.interval_s * 1e9))
            slot = self.first.sent_ns
            while True:
                now = time.monotonic_ns()
                slot += step * max(1, -(-(now - slot) // step))  # the next slot still ahead
                try:
                    await asyncio.wait_for(stop.wait(), (slot - now) / 1e9)
                except TimeoutError:
                    if not await self._scrape(session):
                        return
                    continue
                await asyncio.sleep(max(0, slot - time.monotonic_ns()) / 1e9)  # the cadence, kept to the end
                await self._scrape(session, last=True)
                return

    async def _scrape(self, session: aiohttp.ClientSession, *, last: bool = False) -> bool:
        sent = time.monotonic_ns()
        try:
            page = await fetch(session, self.url)
        except NotPrometheus as exc:
            return self._gone(f"the server at {self.url} stopped answering metrics: it {exc}", last)
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            return self._gone(f"the server at {self.url} went away ({_why(exc)})", last)
        self.record(Scrape(page, sent, time.monotonic_ns()))
        return True

    def _gone(self, line: str, last: bool) -> bool:
        if not last:  # the last scrape of a watch stopped on purpose may find the server stopping too
            self.error = ServerGone(line)
            self.recorder.emit(MarkEvent(time.monotonic_ns(), self.scrapes - 1, line))
        return False


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def first_scrape(url: str) -> tuple[str, Scrape]:
    """Scrape once and recognise the server: (source, scrape). ConfigError, in one line, for a URL
    that does not answer, an answer that is not Prometheus text, or metrics of no server we know."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)) as session:
            sent = time.monotonic_ns()
            page = await fetch(session, url)
            got = time.monotonic_ns()
    except NotPrometheus as exc:
        raise ConfigError(f"{url} is not a Prometheus metrics page: it {exc}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ConfigError(f"cannot reach {url} ({_why(exc)})") from None
    return detect(page, url), Scrape(page, sent, got)


def watch_config(url: str, source: str, interval_s: float, page: Exposition) -> dict[str, Any]:
    """The header's `watch` map (tracer/FORMAT.md)."""
    return {"source": source, "url": url, "interval_s": interval_s, "metrics": sorted(page.families)}


@dataclass(frozen=True)
class WatchResult:
    out: Path
    scrapes: int
    source: str


def watch(
    url: str,
    out: Path,
    interval_s: float = 0.5,
    duration_s: float | None = None,
    on_start: Callable[[str], None] | None = None,
) -> WatchResult:
    """Record the server's metrics at `url` into `out` until `duration_s` has passed, SIGINT or
    SIGTERM (a clean end) or the server goes away (RunFailed, once the trace is closed with what it
    had)."""
    if not interval_s > 0:
        raise ConfigError(f"--interval must be a positive number of seconds, not {interval_s}")
    target = metrics_url(url)
    source, first = asyncio.run(first_scrape(target))
    if on_start is not None:
        on_start(source)
    header = SessionHeader(
        first.sent_ns,
        time.time_ns() - (time.monotonic_ns() - first.sent_ns),
        {"watch": watch_config(target, source, interval_s, first.page), "versions": software_versions()},
    )
    writer = TraceWriter(out, header)
    watcher = Watcher(target, source, interval_s, writer, first)
    try:
        asyncio.run(_watch_until_stopped(watcher, duration_s))
    finally:
        writer.close()
    if watcher.error is not None:
        raise RunFailed(f"{watcher.error}: {out} holds its {watcher.scrapes} scrapes before that")
    return WatchResult(out, watcher.scrapes, source)


async def _watch_until_stopped(watcher: Watcher, duration_s: float | None) -> None:
    with stop_on_signals() as stop:
        if duration_s is not None:
            asyncio.get_running_loop().call_later(duration_s, stop.set)
        await watcher.run(stop)
