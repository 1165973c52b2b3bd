"""`tickscope serve`'s Prometheus metrics (`GET /metrics`), read from the events it traces.

`ServerMetrics` stands between the engine (and the serving front) and the trace writer: every
event goes on to the trace unchanged and is read into the metrics on the way, so /metrics and
the trace say the same thing, and nothing is counted a second way. Each server has a registry of
its own (not prometheus-client's global one), so two servers in one process never mix.

vLLM's names, meanings and histogram buckets wherever vLLM has the figure (a dashboard or a
scraper built for vLLM reads tickscope unchanged), each labelled `model_name`:

- `vllm:num_requests_running`, `vllm:num_requests_waiting`: sequences holding KV and requests
  queued, as of the engine's last tick (vLLM's gauges too change only when its engine steps);
- `vllm:kv_cache_usage_perc`: KV tokens held / capacity after the last tick, 0-1;
- `vllm:num_preemptions`, `vllm:prompt_tokens` (prefill tokens the ticks processed, recomputation
  after a preemption included), `vllm:generation_tokens` (tokens sampled): counters;
- `vllm:request_success{finished_reason}`: requests ended, by reason: `length` (ran to their
  max_tokens: every finished request, as generation ignores EOS), `abort` (cancelled by the
  client or a shutdown), `error` (ended by a fault);
- histograms: `vllm:time_to_first_token_seconds`, `vllm:inter_token_latency_seconds` (each gap
  between two tokens of a request), `vllm:e2e_request_latency_seconds` and
  `vllm:request_queue_time_seconds` (arrival to first admission) of every request the engine took,
  `vllm:iteration_tokens_total` (prefill + decode tokens per tick).

Times are the serving front's, as the trace's requests frame has them: from the request's
submission to the engine. tickscope's own, under `tickscope:`:

- `tickscope:tick_seconds` (histogram): each tick, from the start of its forward pass to its
  tokens on the host;
- `tickscope:experts_active{layer}`: routed experts that got at least one token, per layer, in
  the last tick (of `tickscope:routed_experts`);
- `tickscope:requests_rejected` (counter): refused at submission (a full queue);
- cost, as tracer.cost defines it: `tickscope:device_seconds` (busy device time x devices) and
  `tickscope:processed_tokens` (prefill + decode), counters; and over the whole session
  `tickscope:device_seconds_per_token`, `tickscope:device_seconds_per_output_token` and the
  modelled `tickscope:bytes_per_token` (weights and KV read per processed token), each absent
  until there is a tick to divide by.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tracer.events import Event, ExpertsEvent, RequestEvent, StageEvent, TickEvent
from tracer.recorder import Recorder

if TYPE_CHECKING:  # tracer.cost needs polars, which a lean serving host may lack (see model_shape)
    from tracer.cost import ModelShape

# vLLM's buckets (vllm/v1/metrics/loggers.py)
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
)  # fmt: skip
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# tickscope's own: a tiny model's tick on a CPU to a large one's prefill on a GPU, 1-2-5 steps
TICK_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

# a request's status at its finish -> vLLM's finished_reason
# vLLM's finished_reason of a request that ended so; a finished one says its own: "stop" (EOS) or "length"
FINISHED_REASONS = {"cancelled": "abort", "failed": "error"}
SUCCESS_REASONS = ("stop", "length", "abort", "error")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the Prometheus text format


def model_shape(config: dict[str, Any]) -> ModelShape | None:
    """The model shape the modelled cost needs, from a session header's config; None when the header
    has none, or when tracer.cost cannot be loaded (no polars): then `tickscope:bytes_per_token` and
    `tickscope:routed_experts` are left out."""
    try:
        from tracer.cost import CostUnavailable, ModelShape
    except ImportError:
        return None
    try:
        return ModelShape.from_config(config)
    except CostUnavailable:
        return None


class ServerMetrics:
    """A Recorder that passes each event to `trace` and keeps the metrics above from it. `emit` is
    called from the engine's thread and the event loop's; what it shares is kept under a lock."""

    def __init__(
        self, trace: Recorder, model_name: str, shape: ModelShape | None, kv_blocks: tuple[int, int] | None = None
    ) -> None:
        """`kv_blocks`: the KV cache's (blocks, tokens per block), told as vLLM's cache_config_info."""
        self.trace = trace
        self.registry = CollectorRegistry(auto_describe=True)
        reg, name = self.registry, ["model_name"]
        self._model = model_name

        def gauge(metric: str, doc: str) -> Gauge:
            return Gauge(metric, doc, name, registry=reg).labels(model_name)

        def counter(metric: str, doc: str) -> Counter:
            return Counter(metric, doc, name, registry=reg).labels(model_name)

        def histogram(metric: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(metric, doc, name, registry=reg, buckets=buckets).labels(model_name)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ["model_name", "finished_reason"],
            registry=reg,
        )
        self.success = {reason: success.labels(model_name, reason) for reason in SUCCESS_REASONS}
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", REQUEST_LATENCY_BUCKETS
        )
        self.queue = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", ITERATION_TOKENS_BUCKETS
        )
        self.tick_time = histogram(
            "tickscope:tick_seconds",
            "Each tick, from its forward pass's start to its tokens on the host.",
            TICK_BUCKETS,
        )
        self.rejected = counter("tickscope:requests_rejected", "Requests refused at submission (a full queue).")
        self.experts_active = Gauge(
            "tickscope:experts_active",
            "Routed experts that got at least one token in the last tick, per layer.",
            ["model_name", "layer"],
            registry=reg,
        )
        if kv_blocks is not None:  # vLLM's info gauge: its labels say the size, its value is always 1
            info = Gauge(
                "vllm:cache_config_info",
                "Information of the LLMEngine CacheConfig",
                ["model_name", "block_size", "num_gpu_blocks"],
                registry=reg,
            )
            info.labels(model_name, str(kv_blocks[1]), str(kv_blocks[0])).set(1)
        if shape is not None:
            gauge("tickscope:routed_experts", "Routed experts per MoE layer.").set(shape.routed_experts)
        self.cost = _Cost(model_name, shape)
        reg.register(self.cost)

        self._lock = threading.Lock()
        self._arrived: dict[int, int] = {}  # request -> its arrive t_ns, until it finishes
        self._admitted: set[int] = set()  # requests admitted at least once, until they finish

    def emit(self, event: Event) -> None:
        self.trace.emit(event)
        if isinstance(event, TickEvent):
            self._tick(event)
        elif isinstance(event, RequestEvent):
            self._request(event)
        elif isinstance(event, ExpertsEvent):
            active = (event.counts > 0).sum(axis=1)  # as tracer.cost's distinct_experts counts them
            for layer, n in enumerate(active.tolist()):
                self.experts_active.labels(self._model, str(layer)).set(n)
            self.cost.experts(event.tick, int(active.sum()))
        elif isinstance(event, StageEvent):
            self.cost.stages(event)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _tick(self, tick: TickEvent) -> None:
        self.running.set(tick.running)
        self.waiting.set(tick.queue_depth)
        self.kv_usage.set(tick.kv_used / tick.kv_capacity if tick.kv_capacity else 0.0)
        self.prompt_tokens.inc(tick.prefill_tokens)
        self.generation_tokens.inc(tick.sampled_tokens)
        self.iteration_tokens.observe(tick.prefill_tokens + tick.decode_tokens)
        self.tick_time.observe((tick.end_ns - tick.start_ns) / 1e9)
        self.cost.tick(tick)

    def _request(self, ev: RequestEvent) -> None:
        rid = ev.request
        with self._lock:
            if ev.phase == "arrive":
                self._arrived[rid] = ev.t_ns
                return
            arrived = self._arrived.get(rid)
            first_admit = ev.phase == "admit" and rid not in self._admitted
            if first_admit:
                self._admitted.add(rid)
            if ev.phase == "finish":
                self._arrived.pop(rid, None)
                self._admitted.discard(rid)
        if ev.phase == "preempt":
            self.preemptions.inc()
        elif arrived is None:  # a request this server did not see arrive: no times to measure from
            return
        elif first_admit:
            self.queue.observe((ev.t_ns - arrived) / 1e9)
        elif ev.phase == "first_token":
            self.ttft.observe((ev.t_ns - arrived) / 1e9)
        elif ev.phase == "finish":
            self._finish(ev, arrived)

    def _finish(self, ev: RequestEvent, arrived: int) -> None:
        if ev.status == "rejected":
            self.rejected.inc()
            return
        reason = ev.reason if ev.status == "finished" else FINISHED_REASONS.get(ev.status, "")
        if reason in self.success:
            self.success[reason].inc()
        self.e2e.observe((ev.t_ns - arrived) / 1e9)
        if ev.token_us is not None:
            for gap in (np.diff(ev.token_us.astype(np.int64)) / 1e6).tolist():
                self.itl.observe(gap)


class _Cost(Collector):
    """The cost figures, summed tick by tick as tracer.cost sums them. A tick's busy time is its
    forward time, or, when a stage event follows it, the makespan of its modelled stage timeline on
    one device per stage; the tick is settled once the next one arrives, and read as it stands."""

    def __init__(self, model_name: str, shape: ModelShape | None) -> None:
        self._model = model_name
        self._shape = shape
        self._lock = threading.Lock()
        self._device_s = 0.0  # settled ticks
        self._processed = 0
        self._output = 0
        self._bytes = 0.0  # modelled, over ticks with an expert-load event
        self._bytes_tokens = 0  # processed tokens of those ticks
        self._open: TickEvent | None = None  # the last tick, not yet settled
        self._open_device_s = 0.0

    def tick(self, tick: TickEvent) -> None:
        with self._lock:
            self._device_s += self._open_device_s
            self._open, self._open_device_s = tick, tick.forward_ns / 1e9
            self._processed += tick.prefill_tokens + tick.decode_tokens
            self._output += tick.sampled_tokens

    def stages(self, stage: StageEvent) -> None:
        with self._lock:
            if self._open is None or self._open.tick != stage.tick:
                return
            makespan = int(stage.modelled_end_ns.max() - stage.modelled_start_ns.min())
            self._open_device_s = makespan / 1e9 * stage.modelled_start_ns.shape[0]

    def experts(self, tick: int, distinct: int) -> None:
        with self._lock:
            if self._shape is None or self._open is None or self._open.tick != tick:
                return
            t = self._open
            processed = t.prefill_tokens + t.decode_tokens
            weights = self._shape.weight_bytes(np.array([processed]), np.array([distinct]))
            self._bytes += float(weights[0] + self._shape.kv_bytes(np.array([t.kv_used]))[0])
            self._bytes_tokens += processed

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            device_s = self._device_s + self._open_device_s
            processed, output = self._processed, self._output
            nbytes, bytes_tokens = self._bytes, self._bytes_tokens
        labels = [self._model]

        def counter(name: str, doc: str, value: float) -> Metric:
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(labels, value)
            return family

        def ratio(name: str, doc: str, num: float, den: float) -> Metric:
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            if den:
                family.add_metric(labels, num / den)
            return family

        yield counter("tickscope:device_seconds", "Busy time of the ticks x the devices they kept busy.", device_s)
        yield counter("tickscope:processed_tokens", "Prefill + decode tokens the ticks processed.", processed)
        yield ratio("tickscope:device_seconds_per_token", "Device seconds per processed token.", device_s, processed)
        yield ratio(
            "tickscope:device_seconds_per_output_token", "Device seconds per output (sampled) token.", device_s, output
        )
        if self._shape is not None:
            yield ratio(
                "tickscope:bytes_per_token",
                "Modelled weight and KV bytes read per processed token.",
                nbytes,
                bytes_tokens,
            )
