"""Inference servers' /metrics pages, written by hand from the metric names vLLM, SGLang and
tickscope document, and a loopback server that serves them with counters that grow between scrapes.

The pages are built here from raw observations (no prometheus_client), so that what `watch` makes
of them can be checked against an independent computation from the same observations.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web

MODEL = 'model_name="org/model"'
LATENCY_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TOKEN_BOUNDS = (1.0, 8.0, 16.0, 32.0, 64.0, 128.0)

# Which name each figure has on each server (from their documentation; tickscope's are vLLM's and
# its own `tickscope:` ones).
NAMES = {
    "vllm": {
        "running": "vllm:num_requests_running",
        "waiting": "vllm:num_requests_waiting",
        "kv_usage": "vllm:kv_cache_usage_perc",
        "prompt": "vllm:prompt_tokens",
        "generation": "vllm:generation_tokens",
        "success": "vllm:request_success",
        "preemptions": "vllm:num_preemptions",
        "ttft": "vllm:time_to_first_token_seconds",
        "itl": "vllm:inter_token_latency_seconds",
        "e2e": "vllm:e2e_request_latency_seconds",
        "queue": "vllm:request_queue_time_seconds",
        "iteration": "vllm:iteration_tokens_total",
    },
    "sglang": {
        "running": "sglang:num_running_reqs",
        "waiting": "sglang:num_queue_reqs",
        "kv_usage": "sglang:token_usage",
        "gen_throughput": "sglang:gen_throughput",
        "prompt": "sglang:prompt_tokens",
        "generation": "sglang:generation_tokens",
        "success": "sglang:num_requests",
        "ttft": "sglang:time_to_first_token_seconds",
        "itl": "sglang:inter_token_latency_seconds",
        "e2e": "sglang:e2e_request_latency_seconds",
    },
}
NAMES["tickscope"] = {**NAMES["vllm"], "tick": "tickscope:tick_seconds", "device": "tickscope:device_seconds"}
BLOCKS, BLOCK_SIZE = 1000, 16  # vLLM's cache_config_info


@dataclass
class ServerState:
    """A server's metrics after some steps of made-up traffic (seeded: the same every run)."""

    source: str
    seed: int = 0
    step: int = 0
    gauges: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    observations: dict[str, list[float]] = field(default_factory=dict)  # every observation so far

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        names = NAMES[self.source]
        for role in ("prompt", "generation", "preemptions", "device"):
            if role in names:
                self.counters[role] = 1000.0 * (role in ("prompt", "generation"))  # a server that has run before
        self.counters["stop"] = self.counters["length"] = 0.0
        for role in ("ttft", "itl", "e2e", "queue", "iteration", "tick"):
            if role in names:
                self.observations[role] = []
        self.advance()

    def advance(self) -> None:
        rng = self.rng
        names = NAMES[self.source]
        self.step += 1
        self.gauges = {"running": float(rng.integers(0, 40)), "waiting": float(rng.integers(0, 10))}
        self.gauges["kv_usage"] = float(rng.uniform(0, 1))
        if "gen_throughput" in names:
            self.gauges["gen_throughput"] = float(rng.uniform(100, 900))
        self.counters["prompt"] += int(rng.integers(0, 5000))
        self.counters["generation"] += int(rng.integers(0, 800))
        if "preemptions" in names:
            self.counters["preemptions"] += int(rng.integers(0, 3))
        if "device" in names:
            self.counters["device"] += float(rng.uniform(0, 0.05))
        self.counters["stop"] += int(rng.integers(0, 6))
        self.counters["length"] += int(rng.integers(0, 6))
        for role, values in self.observations.items():
            n = int(rng.integers(0, 30))
            scale = 20.0 if role == "iteration" else 0.1
            values.extend((rng.lognormal(0, 1, n) * scale).tolist())

    def page(self, copies: int = 1) -> str:
        """The page; `copies` > 1 serves every sample once per model (a server of several engines)."""
        names = NAMES[self.source]
        lines: list[str] = []

        def head(name: str, kind: str) -> None:
            lines.extend((f"# HELP {name} {kind} from a test server.", f"# TYPE {name} {kind}"))

        for role in ("running", "waiting", "kv_usage", "gen_throughput"):
            if role in names:
                head(names[role], "gauge")
                lines.append(f'{names[role]}{{engine="0",{MODEL}}} {self.gauges[role]!r}')
        if self.source != "sglang":
            head("vllm:cache_config_info", "gauge")
            lines.append(f'vllm:cache_config_info{{block_size="{BLOCK_SIZE}",num_gpu_blocks="{BLOCKS}"}} 1.0')
            if self.source == "tickscope":
                head("tickscope:experts_active", "gauge")
                lines.extend(f'tickscope:experts_active{{layer="{i}",{MODEL}}} {3 + i}.0' for i in range(2))
        for role in ("prompt", "generation", "preemptions", "device"):
            if role in names:
                head(names[role] + "_total", "counter")
                lines.append(f"{names[role]}_total{{{MODEL}}} {self.counters[role]!r}")
        head(names["success"] + "_total", "counter")
        for reason in ("stop", "length"):
            lines.append(f'{names["success"]}_total{{finished_reason="{reason}",{MODEL}}} {self.counters[reason]!r}')
        for role, values in self.observations.items():
            name = names[role]
            bounds = TOKEN_BOUNDS if role == "iteration" else LATENCY_BOUNDS
            head(name, "histogram")
            for le, count in zip(bounds, cumulative(values, bounds)):
                lines.append(f'{name}_bucket{{le="{le}",{MODEL}}} {float(count)!r}')
            lines.append(f'{name}_bucket{{le="+Inf",{MODEL}}} {float(len(values))!r}')
            lines.append(f"{name}_count{{{MODEL}}} {float(len(values))!r}")
            lines.append(f"{name}_sum{{{MODEL}}} {sum(values)!r}")
        if copies > 1:
            lines = [
                line.replace(MODEL, MODEL.replace('"org/model', f'"org/model-{i}'))
                for line in lines
                for i in range(copies if MODEL in line else 1)
            ]
        return "\n".join(lines) + "\n"


def cumulative(values: list[float], bounds: tuple[float, ...]) -> list[int]:
    """How many of `values` are at most each bound (Prometheus' `le`)."""
    return [sum(v <= b for v in values) for b in bounds]


class MetricsServer:
    """A loopback HTTP server in a thread of its own, answering GET /metrics with `state`'s page and
    then advancing it, so every scrape sees new counts. `served` keeps a copy of each page's state
    (counters, gauges, observation counts) in the order served. `die_after`: scrapes served before
    it stops listening. `body` / `status`: answer that instead of metrics."""

    def __init__(
        self,
        source: str = "vllm",
        *,
        die_after: int | None = None,
        body: str | None = None,
        status: int = 200,
        copies: int = 1,
    ) -> None:
        self.state = ServerState(source)
        self.copies = copies
        self.served: list[tuple[dict[str, float], dict[str, float], dict[str, int]]] = []
        self.die_after = die_after
        self.body, self.status = body, status
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.body is not None:
            return web.Response(text=self.body, status=self.status, content_type="text/html")
        page = self.state.page(self.copies)
        self.served.append(
            (
                dict(self.state.counters),
                dict(self.state.gauges),
                {k: len(v) for k, v in self.state.observations.items()},
            )
        )
        self.state.advance()
        if self.die_after is not None and len(self.served) >= self.die_after:
            assert self._stop is not None
            self._stop.set()
        return web.Response(text=page, content_type="text/plain")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        await self._stop.wait()
        await asyncio.sleep(0.05)  # the last answer leaves before the socket closes
        await runner.cleanup()

    def __enter__(self) -> MetricsServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def quantile_by_hand(values: list[float], bounds: tuple[float, ...], q: float) -> float:
    """Prometheus' histogram_quantile, written out from its documentation, over the buckets the
    `values` fill: walk the buckets to the one whose cumulative count reaches q of the total, then
    interpolate linearly in it (from 0 for the first); in the +Inf bucket, the last finite bound."""
    if not values:
        return float("nan")
    rank = q * len(values)
    below, lower = 0, 0.0
    for bound in bounds:
        count = sum(lower < v <= bound for v in values)  # every observation here is positive
        if below + count >= rank:
            return lower + (bound - lower) * (rank - below) / count
        below += count
        lower = bound
    return bounds[-1]
