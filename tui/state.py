"""What the dashboard knows about a recording, as plain arrays: no Textual in here.

`DashboardState` ingests trace events in file order (a replay loader and the live tail feed it the
same way) and answers questions *as of a tick*: the series up to it, the latency over a rolling
window ending at it, the requests alive at it. Per-tick scalars are kept for every tick in
growable numpy columns (a few dozen bytes a tick, so a million ticks stay well under 100 MB);
the bulky per-tick detail (expert counts, pipeline cells) is kept only for a bounded number of
recent ticks, and a replay fetches older ones from the trace index on demand.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from tracer.events import (
    ExpertsEvent,
    MarkEvent,
    RequestEvent,
    SessionHeader,
    StageEvent,
    TickEvent,
)

NS = 1e9

# Rolling window of recording time over which the latency percentiles are taken.
LATENCY_WINDOW_S = 10.0


class Columns:
    """Growable numpy columns of one dtype, amortised O(1) append."""

    def __init__(self, names: Iterable[str], dtype: Any, capacity: int = 1024) -> None:
        self.names = list(names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._data = np.zeros((len(self.names), capacity), dtype=dtype)
        self.size = 0

    def append(self, row: tuple) -> int:
        if self.size == self._data.shape[1]:
            grown = np.zeros((self._data.shape[0], self._data.shape[1] * 2), dtype=self._data.dtype)
            grown[:, : self.size] = self._data[:, : self.size]
            self._data = grown
        self._data[:, self.size] = row
        self.size += 1
        return self.size - 1

    def col(self, name: str) -> np.ndarray:
        """A view of one column's filled part (do not keep it across appends)."""
        return self._data[self._index[name], : self.size]

    def set(self, name: str, row: int, value: float) -> None:
        self._data[self._index[name], row] = value


TICK_COLUMNS = (
    "tick", "start_s", "end_s", "wait_s", "seqs", "prefill_tokens", "decode_tokens",
    "queue_depth", "running", "kv_used", "kv_capacity", "forward_s",
)  # fmt: skip

REQUEST_COLUMNS = (
    "request", "arrive_s", "admit_s", "first_token_s", "finish_s", "prompt_tokens",
    "output_tokens", "status", "preempts",
)  # fmt: skip

# Request status codes in the numeric request table (NaN times mean "not yet").
STATUS_CODES = {"": 0, "finished": 1, "rejected": 2, "cancelled": 3}
STATUS_NAMES = {code: name for name, code in STATUS_CODES.items()}


@dataclass(slots=True)
class Detail:
    """The bulky part of one tick, kept only for a bounded set of ticks."""

    experts: np.ndarray | None = None
    stages: StageEvent | None = None


@dataclass(slots=True)
class Series:
    """One series downsampled to buckets, keeping each bucket's min and max so spikes survive."""

    lo: np.ndarray
    hi: np.ndarray
    cursor_bucket: int  # bucket holding the current tick, -1 when none
    peak: float


@dataclass(slots=True)
class LatencyStats:
    ttft_p50: float | None
    ttft_p99: float | None
    tpot_p50: float | None
    tpot_p99: float | None
    samples: int  # requests whose first token landed in the window
    ttft_all: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every TTFT so far


@dataclass(slots=True)
class RequestRow:
    request: int
    state: str
    prompt_tokens: int
    output_tokens: int | None  # tokens out so far; None when the trace cannot tell yet
    ttft_s: float | None
    tpot_s: float | None


@dataclass(slots=True)
class ExpertStats:
    active_share: float  # experts that got at least one token, over all layer x expert cells
    imbalance: float  # max / mean tokens per expert, averaged over layers
    balancedness: float  # mean / max, averaged over layers (as vLLM logs it)
    idle_experts: int  # cells with no token this tick
    hottest: list[tuple[int, int, float]]  # (layer, expert, tokens), hottest first


@dataclass(slots=True)
class StageStats:
    makespan_ns: int
    compute_ns: int
    warmup_ns: int
    drain_ns: int
    bubble_ns: int  # idle between cells, inside a stage's busy span

    @property
    def idle_share(self) -> float:
        """Share of stage-time not computing (warmup + drain + bubbles)."""
        total = self.compute_ns + self.warmup_ns + self.drain_ns + self.bubble_ns
        return 1.0 - self.compute_ns / total if total else 0.0


def downsample(values: np.ndarray, buckets: int, cursor: int) -> Series:
    """Fold `values` into `buckets` (at most one per value) of near-equal size, min and max kept."""
    n = len(values)
    if n == 0 or buckets <= 0:
        empty = np.zeros(0)
        return Series(empty, empty, -1, 0.0)
    buckets = min(buckets, n)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)[:-1]
    lo = np.minimum.reduceat(values, edges)
    hi = np.maximum.reduceat(values, edges)
    cursor_bucket = int(np.searchsorted(edges, cursor, side="right")) - 1 if 0 <= cursor < n else -1
    return Series(lo, hi, cursor_bucket, float(hi.max()))


def expert_stats(counts: np.ndarray, top: int = 3) -> ExpertStats:
    """Load figures for one [layers, experts] count matrix."""
    counts = np.asarray(counts, dtype=np.float64)  # float: a span's mean load is fractional
    if counts.size == 0:
        return ExpertStats(0.0, 0.0, 0.0, 0, [])
    per_layer_max = counts.max(axis=1)
    per_layer_mean = counts.mean(axis=1)
    used = per_layer_mean > 0  # layers that saw no token say nothing about balance
    imbalance = float((per_layer_max[used] / per_layer_mean[used]).mean()) if used.any() else 0.0
    balancedness = float((per_layer_mean[used] / per_layer_max[used]).mean()) if used.any() else 0.0
    flat = np.argsort(counts, axis=None)[::-1][:top]
    hottest = [
        (int(i // counts.shape[1]), int(i % counts.shape[1]), float(counts.flat[i]))
        for i in flat
        if counts.flat[i] > 0
    ]
    return ExpertStats(
        active_share=float((counts > 0).mean()),
        imbalance=imbalance,
        balancedness=balancedness,
        idle_experts=int((counts == 0).sum()),
        hottest=hottest,
    )


def stage_stats(stages: StageEvent) -> StageStats:
    """Compute, warmup, drain and bubbles of the modelled per-stage timeline of one tick."""
    start = np.asarray(stages.modelled_start_ns, dtype=np.int64)
    end = np.asarray(stages.modelled_end_ns, dtype=np.int64)
    if start.size == 0:
        return StageStats(0, 0, 0, 0, 0)
    t0, t1 = int(start.min()), int(end.max())
    compute = warmup = drain = bubble = 0
    for s in range(start.shape[0]):
        order = np.argsort(start[s])
        row_start, row_end = start[s][order], end[s][order]
        compute += int((row_end - row_start).sum())
        warmup += int(row_start[0] - t0)
        drain += int(t1 - row_end.max())
        gaps = row_start[1:] - np.maximum.accumulate(row_end)[:-1]
        bubble += int(np.clip(gaps, 0, None).sum())
    return StageStats(t1 - t0, compute, warmup, drain, bubble)


class DashboardState:
    """Everything ingested so far, queried as of a tick index (0 .. n_ticks-1)."""

    def __init__(self, detail_capacity: int = 4096) -> None:
        self.header: SessionHeader | None = None
        self.ticks = Columns(TICK_COLUMNS, np.float64)
        self.requests = Columns(REQUEST_COLUMNS, np.float64)
        self._request_row: dict[int, int] = {}
        self._token_us: dict[int, np.ndarray] = {}
        self._preempt_s = Columns(("t_s",), np.float64)
        self.marks: list[MarkEvent] = []
        self._detail: OrderedDict[int, Detail] = OrderedDict()
        self._detail_capacity = detail_capacity
        self.has_stages = False

    # -- ingest ---------------------------------------------------------------------------------

    def set_header(self, header: SessionHeader) -> None:
        self.header = header

    def _s(self, t_ns: int) -> float:
        t0 = self.header.t0_mono_ns if self.header is not None else 0
        return (t_ns - t0) / NS

    def ingest(self, events: Iterable[Any]) -> None:
        """Take events in file order; anything not an event is ignored."""
        for ev in events:
            if isinstance(ev, TickEvent):
                self.ticks.append((
                    ev.tick, self._s(ev.start_ns), self._s(ev.end_ns), ev.wait_ns / NS, ev.seqs,
                    ev.prefill_tokens, ev.decode_tokens, ev.queue_depth, ev.running, ev.kv_used,
                    ev.kv_capacity, ev.forward_ns / NS,
                ))  # fmt: skip
            elif isinstance(ev, ExpertsEvent):
                self._detail_for(ev.tick).experts = np.asarray(ev.counts)
            elif isinstance(ev, StageEvent):
                self.has_stages = True
                self._detail_for(ev.tick).stages = ev
            elif isinstance(ev, RequestEvent):
                self._ingest_request(ev)
            elif isinstance(ev, MarkEvent):
                self.marks.append(ev)
            elif isinstance(ev, SessionHeader):
                self.header = ev

    def _detail_for(self, tick: int) -> Detail:
        detail = self._detail.get(tick)
        if detail is None:
            detail = self._detail[tick] = Detail()
            while len(self._detail) > self._detail_capacity:
                self._detail.popitem(last=False)
        return detail

    def put_detail(self, tick: int, experts: np.ndarray | None, stages: StageEvent | None) -> None:
        """Cache detail fetched from the trace index for a tick no longer (or never) held."""
        detail = self._detail_for(tick)
        detail.experts = experts if experts is not None else detail.experts
        detail.stages = stages if stages is not None else detail.stages

    def _ingest_request(self, ev: RequestEvent) -> None:
        row = self._request_row.get(ev.request)
        if row is None:
            nan = float("nan")
            row = self.requests.append((ev.request, nan, nan, nan, nan, 0, 0, 0, 0))
            self._request_row[ev.request] = row
        t = self._s(ev.t_ns)
        if ev.prompt_tokens:
            self.requests.set("prompt_tokens", row, ev.prompt_tokens)
        if ev.phase == "arrive":
            self.requests.set("arrive_s", row, t)
        elif ev.phase == "admit":
            self.requests.set("admit_s", row, t)
        elif ev.phase == "first_token":
            self.requests.set("first_token_s", row, t)
        elif ev.phase == "preempt":
            self.requests.set("preempts", row, self.requests.col("preempts")[row] + 1)
            self._preempt_s.append((t,))
        elif ev.phase == "finish":
            self.requests.set("finish_s", row, t)
            self.requests.set("output_tokens", row, ev.output_tokens)
            self.requests.set("status", row, STATUS_CODES.get(ev.status, 0))
            if ev.token_us is not None and len(ev.token_us):
                self._token_us[ev.request] = np.asarray(ev.token_us, dtype=np.float64) / 1e6
        # A request seen first mid-life (a tail that started late) still gets an arrival time.
        if np.isnan(self.requests.col("arrive_s")[row]):
            self.requests.set("arrive_s", row, t)

    # -- queries --------------------------------------------------------------------------------

    @property
    def n_ticks(self) -> int:
        return self.ticks.size

    def tick_number(self, index: int) -> int:
        return int(self.ticks.col("tick")[index])

    def index_of_tick(self, tick: int) -> int:
        """Index of the last tick numbered <= `tick` (clamped to the known range)."""
        if self.n_ticks == 0:
            return 0
        i = int(np.searchsorted(self.ticks.col("tick"), tick, side="right")) - 1
        return min(max(i, 0), self.n_ticks - 1)

    def index_at_time(self, t_s: float) -> int:
        """Index of the last tick that ended by `t_s` seconds (0 when none had)."""
        if self.n_ticks == 0:
            return 0
        i = int(np.searchsorted(self.ticks.col("end_s"), t_s, side="right")) - 1
        return min(max(i, 0), self.n_ticks - 1)

    def time_at(self, index: int) -> float:
        return float(self.ticks.col("end_s")[index]) if self.n_ticks else 0.0

    @property
    def duration_s(self) -> float:
        return self.time_at(self.n_ticks - 1) if self.n_ticks else 0.0

    def tick_row(self, index: int) -> dict[str, float]:
        return {name: float(self.ticks.col(name)[index]) for name in TICK_COLUMNS}

    def throughput(self) -> np.ndarray:
        """Generated tokens per second of each tick, over the time since the previous tick ended.

        Using the previous tick's end (not this tick's start) counts the policy's collection wait
        as time spent, which is what a user sees as throughput.
        """
        end = self.ticks.col("end_s")
        if len(end) == 0:
            return np.zeros(0)
        prev = np.empty_like(end)
        prev[0] = self.ticks.col("start_s")[0] - self.ticks.col("wait_s")[0]
        prev[1:] = end[:-1]
        span = np.maximum(end - prev, 1e-9)
        return self.ticks.col("decode_tokens") / span

    def values(self, name: str) -> np.ndarray:
        """A per-tick series: a tick column, "throughput" (tokens/s) or "batch_tokens"."""
        if name == "throughput":
            return self.throughput()
        if name == "batch_tokens":
            return self.ticks.col("prefill_tokens") + self.ticks.col("decode_tokens")
        return self.ticks.col(name)

    def series(self, name: str, upto: int, buckets: int) -> Series:
        """`values(name)` bucketed, with the tick at index `upto` marked."""
        return downsample(self.values(name), buckets, upto)

    def mean_throughput(self, upto: int, window_s: float = LATENCY_WINDOW_S) -> float:
        """Generated tokens per second over the window ending at tick `upto`."""
        if self.n_ticks == 0:
            return 0.0
        end = self.ticks.col("end_s")
        t = end[upto]
        lo = int(np.searchsorted(end, t - window_s, side="right"))
        tokens = self.ticks.col("decode_tokens")[lo : upto + 1].sum()
        start = end[lo - 1] if lo > 0 else self.ticks.col("start_s")[0] - self.ticks.col("wait_s")[0]
        return float(tokens / (t - start)) if t > start else 0.0

    def latency(self, upto: int, window_s: float = LATENCY_WINDOW_S) -> LatencyStats:
        """TTFT and TPOT percentiles of requests whose first token / finish fell in the window."""
        t = self.time_at(upto)
        arrive = self.requests.col("arrive_s")
        first = self.requests.col("first_token_s")
        finish = self.requests.col("finish_s")
        out = self.requests.col("output_tokens")
        with np.errstate(invalid="ignore"):
            seen_first = first <= t
            in_window = seen_first & (first > t - window_s)
            ttft = first[in_window] - arrive[in_window]
            done = (finish <= t) & (finish > t - window_s) & (out > 1) & seen_first
            tpot = (finish[done] - first[done]) / (out[done] - 1)
            ttft_all = first[seen_first] - arrive[seen_first]

        def pct(values: np.ndarray, q: float) -> float | None:
            return float(np.percentile(values, q)) if len(values) else None

        return LatencyStats(
            pct(ttft, 50), pct(ttft, 99), pct(tpot, 50), pct(tpot, 99), int(in_window.sum()),
            ttft_all,
        )  # fmt: skip

    def counters(self, upto: int) -> dict[str, float]:
        """Requests rejected and preempted, and finished, up to tick `upto`."""
        t = self.time_at(upto)
        finish = self.requests.col("finish_s")
        status = self.requests.col("status")
        with np.errstate(invalid="ignore"):
            ended = finish <= t
        return {
            "finished": int((ended & (status == STATUS_CODES["finished"])).sum()),
            "rejected": int((ended & (status == STATUS_CODES["rejected"])).sum()),
            "cancelled": int((ended & (status == STATUS_CODES["cancelled"])).sum()),
            "preempted": int((self._preempt_s.col("t_s") <= t).sum()),
            "arrived": int((self.requests.col("arrive_s") <= t).sum()),
        }

    def recent_requests(self, upto: int, limit: int) -> list[RequestRow]:
        """The `limit` most recently arrived requests, each as it stood at tick `upto`."""
        t = self.time_at(upto)
        arrive = self.requests.col("arrive_s")
        with np.errstate(invalid="ignore"):
            rows = np.flatnonzero(arrive <= t)
        if len(rows) > limit:
            rows = rows[np.argsort(arrive[rows], kind="stable")[-limit:]]
        rows = rows[np.argsort(arrive[rows], kind="stable")[::-1]]
        return [self._request_as_of(int(r), t) for r in rows]

    def _request_as_of(self, row: int, t: float) -> RequestRow:
        c = {name: float(self.requests.col(name)[row]) for name in REQUEST_COLUMNS}
        request = int(c["request"])
        ttft = c["first_token_s"] - c["arrive_s"] if c["first_token_s"] <= t else None
        tpot = None
        out: int | None = None
        if c["finish_s"] <= t:
            state = STATUS_NAMES.get(int(c["status"]), "finished") or "finished"
            out = int(c["output_tokens"])
            if out > 1 and ttft is not None:
                tpot = (c["finish_s"] - c["first_token_s"]) / (out - 1)
        else:
            if c["first_token_s"] <= t:
                state = "decode"
            elif c["admit_s"] <= t:
                state = "prefill"
            else:
                state = "queued"
            token_s = self._token_us.get(request)
            if token_s is not None:  # a replay knows every token's time; count those so far
                out = int((c["arrive_s"] + token_s <= t).sum())
        if state in ("decode", "prefill", "queued") and c["preempts"] > 0:
            state += "*"  # preempted at least once (a later re-admission is not told apart)
        return RequestRow(request, state, int(c["prompt_tokens"]), out, ttft, tpot)

    def detail(self, index: int) -> Detail | None:
        if self.n_ticks == 0:
            return None
        return self._detail.get(self.tick_number(index))

    def mean_experts(self, lo: int, hi: int) -> tuple[np.ndarray | None, int]:
        """Mean expert counts over ticks lo..hi that are held in memory, and how many were."""
        total: np.ndarray | None = None
        held = 0
        for index in range(max(lo, 0), hi + 1):
            d = self._detail.get(self.tick_number(index))
            if d is not None and d.experts is not None:
                total = d.experts.astype(np.float64) if total is None else total + d.experts
                held += 1
        return (total / held if total is not None else None), held


def config_summary(header: SessionHeader | None) -> dict[str, str]:
    """Model, device and policy named from a header's config, tolerant of missing keys."""
    cfg = header.config if header is not None else {}
    model = cfg.get("model") or {}
    sched = cfg.get("scheduler") or {}
    workload = cfg.get("workload") or {}
    device = cfg.get("device_name") or cfg.get("device") or "?"
    if isinstance(device, dict):
        device = device.get("name", device.get("type", "?"))
    policy = str(sched.get("policy", "?"))
    window = sched.get("window_ms")
    if window is not None and policy != "continuous":  # continuous batching has no window
        policy += f" {window:g}ms"
    if sched.get("max_seqs") is not None:
        policy += f" max{sched['max_seqs']}"
    experts = model.get("experts", model.get("routed_experts"))
    shape = ""
    if model.get("layers") and experts:
        shape = f" {model['layers']}L×{experts}E"
        if model.get("top_k"):
            shape += f" top{model['top_k']}"
    return {
        "model": f"{model.get('name', cfg.get('preset', '?'))}{shape}",
        "device": str(device),
        "policy": policy,
        "workload": str(workload.get("name", "?")),
    }
