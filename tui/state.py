"""What the dashboard knows about a recording, as plain arrays: no Textual in here.

`DashboardState` takes a recording in `FrameData` blocks (per-tick rows, request updates, marks,
per-tick detail) and answers questions *as of a tick*: the series up to it, the latency over a
rolling window ending at it, the requests alive at it. Per-tick scalars are kept for every tick in
numpy columns (a hundred bytes a tick, so a million ticks stay near 100 MB); the bulky per-tick
detail (expert counts, pipeline cells) only for a bounded number of ticks, fetched again through
the trace index when needed.

A live tail appends blocks as the file grows. A replay first lays out every tick the trace index
knows of, with tick numbers and times estimated from the index, and fills each events frame's rows
in whatever order frames are read: the frames around the current tick first, the rest in the
background. Rows not read yet hold NaN, which the charts draw as "not loaded".
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
            self.reserve(self._data.shape[1] * 2)
        self._data[:, self.size] = row
        self.size += 1
        return self.size - 1

    def col(self, name: str) -> np.ndarray:
        """A view of one column's filled part (do not keep it across appends)."""
        return self._data[self._index[name], : self.size]

    def set(self, name: str, row: int, value: float) -> None:
        self._data[self._index[name], row] = value

    def extend(self, block: np.ndarray) -> range:
        """Append the rows of a [n, columns] block; the rows they got."""
        n = len(block)
        if self.size + n > self._data.shape[1]:
            self.reserve(max(self.size + n, self._data.shape[1] * 2))
        self._data[:, self.size : self.size + n] = block.T
        self.size += n
        return range(self.size - n, self.size)

    def reserve(self, capacity: int) -> None:
        if capacity > self._data.shape[1]:
            grown = np.zeros((self._data.shape[0], capacity), dtype=self._data.dtype)
            grown[:, : self.size] = self._data[:, : self.size]
            self._data = grown

    def fill(self, size: int, value: float) -> None:
        """Make the columns exactly `size` rows of `value` (a replay's layout, filled later)."""
        self._data = np.full((self._data.shape[0], size), value, dtype=self._data.dtype)
        self.size = size

    def put(self, rows: slice, block: np.ndarray) -> None:
        self._data[:, rows] = block.T


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
PHASE_CODES = {"arrive": 0, "admit": 1, "first_token": 2, "preempt": 3, "finish": 4}
ARRIVE, ADMIT, FIRST_TOKEN, PREEMPT, FINISH = range(5)


@dataclass(slots=True)
class RequestBlock:
    """Request events as columns, in file order (applied to the request table in one go)."""

    ids: np.ndarray  # int64
    phase: np.ndarray  # int8, PHASE_CODES
    t_s: np.ndarray  # float64 seconds since t0
    prompt: np.ndarray  # int64
    output: np.ndarray  # int64
    status: np.ndarray  # int8, STATUS_CODES
    token_us: dict[int, np.ndarray] = field(default_factory=dict)  # finish: uint32, owned copies


def request_block(events: Iterable[RequestEvent], t0_ns: int) -> RequestBlock:
    evs = list(events)
    tokens = {
        ev.request: np.array(ev.token_us, dtype=np.uint32)  # a copy: views would pin the frame
        for ev in evs
        if ev.phase == "finish" and ev.token_us is not None and len(ev.token_us)
    }
    return RequestBlock(
        ids=np.fromiter((ev.request for ev in evs), np.int64, len(evs)),
        phase=np.fromiter((PHASE_CODES.get(ev.phase, -1) for ev in evs), np.int8, len(evs)),
        t_s=(np.fromiter((ev.t_ns for ev in evs), np.int64, len(evs)) - t0_ns) / NS,
        prompt=np.fromiter((ev.prompt_tokens for ev in evs), np.int64, len(evs)),
        output=np.fromiter((ev.output_tokens for ev in evs), np.int64, len(evs)),
        status=np.fromiter((STATUS_CODES.get(ev.status, 0) for ev in evs), np.int8, len(evs)),
        token_us=tokens,
    )


def tick_rows(raw: np.ndarray, t0_ns: int) -> np.ndarray:
    """TickEvent fields as an int64 [n, 12] array -> TICK_COLUMNS rows (times in seconds)."""
    rows = raw.astype(np.float64)
    rows[:, 1] = (raw[:, 1] - t0_ns) / NS  # subtract in integers: ns since boot overflow float's 53 bits
    rows[:, 2] = (raw[:, 2] - t0_ns) / NS
    rows[:, 3] /= NS
    rows[:, 11] /= NS
    return rows


@dataclass(slots=True)
class Detail:
    """The bulky part of one tick, kept only for a bounded set of ticks."""

    experts: np.ndarray | None = None
    stages: StageEvent | None = None


@dataclass(slots=True)
class FrameData:
    """One block of a recording: an events frame of a replay, or what one live poll brought."""

    ticks: np.ndarray  # float64 [n, len(TICK_COLUMNS)], in file order
    requests: RequestBlock
    marks: list[MarkEvent] = field(default_factory=list)
    details: dict[int, Detail] = field(default_factory=dict)  # by tick number
    has_stages: bool = False
    frame: int = -1  # the index entry it came from; -1 appends (live)


def frame_from_events(events: Iterable[Any], t0_ns: int, frame: int = -1) -> FrameData:
    """Trace events (anything else is ignored) as one FrameData."""
    ticks: list[tuple[int, ...]] = []
    requests: list[RequestEvent] = []
    marks: list[MarkEvent] = []
    details: dict[int, Detail] = {}
    has_stages = False
    for ev in events:
        if isinstance(ev, TickEvent):
            ticks.append((
                ev.tick, ev.start_ns, ev.end_ns, ev.wait_ns, ev.seqs, ev.prefill_tokens,
                ev.decode_tokens, ev.queue_depth, ev.running, ev.kv_used, ev.kv_capacity, ev.forward_ns,
            ))  # fmt: skip
        elif isinstance(ev, RequestEvent):
            requests.append(ev)
        elif isinstance(ev, ExpertsEvent):
            # A copy: a view of the decoded frame would keep its whole payload in memory.
            details.setdefault(ev.tick, Detail()).experts = np.array(ev.counts)
        elif isinstance(ev, StageEvent):
            has_stages = True
            details.setdefault(ev.tick, Detail()).stages = ev
        elif isinstance(ev, MarkEvent):
            marks.append(ev)
    raw = np.array(ticks, dtype=np.int64).reshape(-1, len(TICK_COLUMNS))
    return FrameData(tick_rows(raw, t0_ns), request_block(requests, t0_ns), marks, details, has_stages, frame)


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
    idle_experts: int  # cells with no token: in a span's mean, dead across the whole span
    hottest: list[tuple[int, int, float]]  # (layer, expert, tokens), hottest first
    hottest_per_layer: list[tuple[int, float]] = field(default_factory=list)  # (expert, tokens) by layer


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
    """Fold `values` into `buckets` (at most one per value) of near-equal size, min and max kept.

    NaN (a tick not loaded yet) is left out of its bucket; a bucket of nothing but NaN is NaN.
    """
    lo, hi, edges = bucket_bounds(values, buckets)
    return Series(lo, hi, cursor_bucket(edges, cursor, len(values)), peak_of(hi))


def bucket_bounds(values: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each bucket's min and max, and the index of its first value."""
    n = len(values)
    if n == 0 or buckets <= 0:
        empty = np.zeros(0)
        return empty, empty, np.zeros(0, dtype=np.int64)
    buckets = min(buckets, n)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)[:-1]
    return np.fmin.reduceat(values, edges), np.fmax.reduceat(values, edges), edges


def cursor_bucket(edges: np.ndarray, cursor: int, n: int) -> int:
    return int(np.searchsorted(edges, cursor, side="right")) - 1 if 0 <= cursor < n else -1


def peak_of(hi: np.ndarray) -> float:
    finite = hi[np.isfinite(hi)]
    return float(finite.max()) if len(finite) else 0.0


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
    flat = np.argsort(counts, axis=None, kind="stable")[::-1][:top]
    hottest = [
        (int(i // counts.shape[1]), int(i % counts.shape[1]), float(counts.flat[i]))
        for i in flat
        if counts.flat[i] > 0
    ]
    per_layer = counts.argmax(axis=1)
    return ExpertStats(
        active_share=float((counts > 0).mean()),
        imbalance=imbalance,
        balancedness=balancedness,
        idle_experts=int((counts == 0).sum()),
        hottest=hottest,
        hottest_per_layer=[(int(e), float(counts[layer, e])) for layer, e in enumerate(per_layer)],
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


@@STATE@@


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
