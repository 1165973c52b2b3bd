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

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import polars as pl

from tracer.columns import TICK_COLUMNS, tick_seconds
from tracer.cost import Accelerator, CostUnavailable, ModelShape, distinct_experts, modelled_columns, span_summary
from tracer.experts import load_figures
from tracer.events import (
    TICK_FIELDS,
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

# Row ranges of the tick columns changed by recent ingests, kept so a chart's buckets can be
# brought up to date by redoing only the buckets they touch; a cache older than this log is redone.
DIRTY_LOG = 256

# Per-tick series derived from the tick columns, kept as columns of their own and updated for the
# rows each ingest touches (a pass over a million ticks per frame is what made loading stutter).
DERIVED_COLUMNS = ("throughput", "batch_tokens")
# Per-tick figures what a token costs needs, from a tick's expert and stage events (which may come
# in a later block than its tick event): busy seconds (the forward time, or a pipelined tick's
# modelled makespan), devices kept busy (1, or one per stage), distinct experts over all layers.
COST_COLUMNS = ("busy_s", "devices", "distinct_experts")


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

    def resize(self, size: int) -> None:
        """Make the columns `size` rows long; rows added hold whatever was there (set them)."""
        self.reserve(size)
        self.size = size


REQUEST_COLUMNS = (
    "request", "arrive_s", "admit_s", "first_token_s", "finish_s", "prompt_tokens",
    "output_tokens", "status", "preempts", "arrive_read",
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
    # Ticks whose tick event came in an earlier block: what `details` holds of them is only the
    # rest of their detail (a frame, or a poll, may end between a tick's events).
    partial: set[int] = field(default_factory=set)
    # What a token costs needs of every tick, not only those whose detail is held: its distinct
    # active experts (summed over layers) and, for a pipelined tick, its busy time (the modelled
    # makespan) and devices (one per stage), by tick number.
    distinct: dict[int, int] = field(default_factory=dict)
    busy: dict[int, tuple[float, int]] = field(default_factory=dict)

    def detail_only(self) -> FrameData:
        """The same block with only its detail: for ticks whose rows the state already has."""
        return FrameData(self.ticks[:0], request_block((), 0), details=self.details, has_stages=self.has_stages,
                         partial=self.partial, distinct=self.distinct, busy=self.busy)

    def find_partial(self) -> None:
        self.partial = set(self.details).difference(self.ticks[:, 0].tolist())


def frame_from_events(events: Iterable[Any], t0_ns: int, frame: int = -1) -> FrameData:
    """Trace events (anything else is ignored) as one FrameData."""
    ticks: list[tuple[int, ...]] = []
    requests: list[RequestEvent] = []
    marks: list[MarkEvent] = []
    details: dict[int, Detail] = {}
    distinct: dict[int, int] = {}
    busy: dict[int, tuple[float, int]] = {}
    has_stages = False
    for ev in events:
        if isinstance(ev, TickEvent):
            ticks.append([getattr(ev, name) for name in TICK_FIELDS])
        elif isinstance(ev, RequestEvent):
            requests.append(ev)
        elif isinstance(ev, ExpertsEvent):
            # A copy: a view of the decoded frame would keep its whole payload in memory.
            details.setdefault(ev.tick, Detail()).experts = np.array(ev.counts)
            distinct[ev.tick] = int(distinct_experts(ev.counts).sum())
        elif isinstance(ev, StageEvent):
            has_stages = True
            details.setdefault(ev.tick, Detail()).stages = ev
            if ev.modelled_start_ns.size:
                makespan = int(ev.modelled_end_ns.max()) - int(ev.modelled_start_ns.min())
                busy[ev.tick] = (makespan / NS, ev.modelled_start_ns.shape[0])
        elif isinstance(ev, MarkEvent):
            marks.append(ev)
    raw = np.array(ticks, dtype=np.int64).reshape(-1, len(TICK_FIELDS))
    data = FrameData(tick_seconds(raw, t0_ns), request_block(requests, t0_ns), marks, details, has_stages, frame,
                     distinct=distinct, busy=busy)
    data.find_partial()
    return data


@dataclass(slots=True)
class Series:
    """One series downsampled to buckets, keeping each bucket's min and max so spikes survive."""

    lo: np.ndarray
    hi: np.ndarray
    cursor_bucket: int  # bucket holding the current tick, -1 when none
    peak: float


@dataclass(slots=True)
class _Buckets:
    """One chart's buckets as of state version `version`, for a series of `n` ticks."""

    version: int
    n: int
    lo: np.ndarray
    hi: np.ndarray
    edges: np.ndarray  # first row of each bucket
    peak: float = 0.0

    def __post_init__(self) -> None:
        self.peak = peak_of(self.hi)

    def update(self, values: np.ndarray, changed: list[tuple[int, int]]) -> None:
        """Redo the buckets that hold any of the `changed` row ranges."""
        if not len(self.edges):
            return
        for lo, hi in changed:
            if hi <= lo:
                continue
            first = int(np.searchsorted(self.edges, lo, side="right")) - 1
            last = int(np.searchsorted(self.edges, hi - 1, side="right")) - 1
            start = int(self.edges[first])
            stop = int(self.edges[last + 1]) if last + 1 < len(self.edges) else self.n
            local = self.edges[first : last + 1] - start
            self.lo[first : last + 1] = np.fmin.reduceat(values[start:stop], local)
            self.hi[first : last + 1] = np.fmax.reduceat(values[start:stop], local)
        self.peak = peak_of(self.hi)


@dataclass(slots=True)
class LatencyStats:
    ttft_p50: float | None
    ttft_p99: float | None
    tpot_p50: float | None
    tpot_p99: float | None
    samples: int  # requests whose first token landed in the window
    ttft_all: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every TTFT so far
    tpot_all: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every finished request's TPOT so far
    ttft_p90: float | None = None
    tpot_p90: float | None = None


@dataclass(slots=True)
class RequestRow:
    request: int
    state: str
    prompt_tokens: int
    output_tokens: int | None  # tokens out so far; None when the trace cannot tell yet
    ttft_s: float | None
    tpot_s: float | None


@dataclass(slots=True)
class RequestLife:
    """One request's timeline, times in seconds since t0 (None: not reached, or not recorded)."""

    request: int
    status: str  # "" while it runs
    prompt_tokens: int
    output_tokens: int
    arrive_s: float
    admit_s: float | None  # the first admission
    first_token_s: float | None
    finish_s: float | None
    token_s: np.ndarray  # each output token's arrival (recorded on finish)
    history: list[tuple[str, float]]  # preemptions and later admissions, in order

    def events(self) -> list[tuple[float, str]]:
        """(time, what) in time order: the milestones, then each token in between."""
        out = [(self.arrive_s, "arrive")]
        if self.admit_s is not None:
            out.append((self.admit_s, "admit"))
        out += [(t, what) for what, t in self.history]
        if self.first_token_s is not None:
            out.append((self.first_token_s, "first token"))
        if self.finish_s is not None:
            out.append((self.finish_s, self.status or "finish"))
        return sorted(out, key=lambda e: e[0])


@dataclass(slots=True)
class ExpertStats:
    active_share: float  # experts that got at least one token, averaged over (tick, layer) cells
    imbalance: float  # max / mean tokens per expert, averaged over (tick, layer) cells with a token
    balancedness: float  # mean / max, averaged likewise (as vLLM logs it)
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
    """Load figures for one [layers, experts] count matrix, or a span's [ticks, layers, experts]
    stack: active, max/mean and balance as tracer/experts.py defines them (means over (tick,
    layer) cells, as summary and compare give them); idle cells and the hottest experts from the
    span's mean matrix (idle there: dead in every tick of the span)."""
    stack = np.asarray(counts, dtype=np.float64)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.size == 0:
        return ExpertStats(0.0, 0.0, 0.0, 0, [])
    figures = load_figures(stack)
    mean = stack.mean(axis=0)
    flat = np.argsort(-mean, axis=None, kind="stable")[:top]  # ties: lowest layer/expert first
    hottest = [
        (int(i // mean.shape[1]), int(i % mean.shape[1]), float(mean.flat[i]))
        for i in flat
        if mean.flat[i] > 0
    ]
    per_layer = mean.argmax(axis=1)
    return ExpertStats(
        active_share=figures.active_share or 0.0,
        imbalance=figures.imbalance or 0.0,
        balancedness=figures.balancedness or 0.0,
        idle_experts=int((mean == 0).sum()),
        hottest=hottest,
        hottest_per_layer=[(int(e), float(mean[layer, e])) for layer, e in enumerate(per_layer)],
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

    def __init__(self, detail_capacity: int = 8192) -> None:
        self.header: SessionHeader | None = None
        self.ticks = Columns(TICK_COLUMNS, np.float64)
        self._derived = Columns(DERIVED_COLUMNS, np.float64)
        self._cost = Columns(COST_COLUMNS, np.float64)
        self._model: tuple[ModelShape | None, str | None] | None = None  # from the header, on first use
        # What-if costing on another accelerator (modelled), and $ per device-hour: the user's choice.
        self.accelerator: Accelerator | None = None
        self.price: float | None = None
        # Figures of ticks whose rows are not in place yet, by tick number.
        self._pending_distinct: dict[int, int] = {}
        self._pending_busy: dict[int, tuple[float, int]] = {}
        self.requests = Columns(REQUEST_COLUMNS, np.float64)
        self._request_row: dict[int, int] = {}
        self._token_us: dict[int, np.ndarray] = {}  # request -> µs since arrival, as recorded
        self._history: dict[int, list[tuple[float, str]]] = {}  # preemptions and re-admissions, by time
        self._preempt_s = Columns(("t_s",), np.float64)
        self.marks: list[MarkEvent] = []
        self._detail: OrderedDict[int, Detail] = OrderedDict()
        self._detail_capacity = detail_capacity
        self._pinned = (0, -1)  # tick numbers whose detail is in view: not evicted to make room
        self.has_stages = False
        # A replay's layout: each index entry's first row and row count, and whether it is read.
        self._frame_row0 = np.zeros(0, dtype=np.int64)
        self._frame_rows = np.zeros(0, dtype=np.int64)
        self._frame_loaded = np.zeros(0, dtype=bool)
        # Each chart's buckets, kept up to date through the log of tick rows changed since.
        self._version = 0
        self._dirty: list[tuple[int, int, int]] = []  # (version, first row, end row), oldest first
        self._buckets: dict[tuple[str, int], _Buckets] = {}

    # -- ingest ---------------------------------------------------------------------------------

    def set_header(self, header: SessionHeader) -> None:
        self.header = header
        self._model = None

    @property
    def t0_ns(self) -> int:
        return self.header.t0_mono_ns if self.header is not None else 0

    def set_layout(self, entries: np.ndarray) -> None:
        """Lay out every tick of a replay from its index entries (columns as tracer.index).

        Tick numbers and start times are estimated by spreading each frame's ticks evenly over its
        tick and time range; reading the frame replaces them with the recorded values.
        """
        rows = entries[:, 3].astype(np.int64)
        self._frame_rows = rows
        self._frame_row0 = np.concatenate(([0], np.cumsum(rows)[:-1])).astype(np.int64)
        # Frames without ticks are read too: they hold request events (arrivals while idle, say).
        self._frame_loaded = np.zeros(len(rows), dtype=bool)
        total = int(rows.sum())
        self.ticks.fill(total, np.nan)
        self._derived.fill(total, np.nan)
        self._cost.fill(total, np.nan)
        if total == 0:
            self._changed(0, 0)
            return
        frame = np.repeat(np.arange(len(rows)), rows)
        step = np.arange(total) - self._frame_row0[frame]
        # A frame's last tick event is its max_tick (a tick's experts and stage events follow its
        # tick event, so only its first tick may be one whose tick event is in the frame before).
        self.ticks.col("tick")[:] = entries[frame, 2] - rows[frame] + 1 + step
        span = (entries[frame, 5] - entries[frame, 4]).astype(np.float64)
        start = (entries[frame, 4] - self.t0_ns + span * step / np.maximum(rows[frame] - 1, 1)) / NS
        self.ticks.col("start_s")[:] = start
        self.ticks.col("end_s")[:] = start
        self._changed(0, total)

    def ingest(self, items: Iterable[Any]) -> None:
        """Take events (or FrameData blocks, as sources poll them) in file order; anything else is
        ignored."""
        events = []
        for item in items:
            if isinstance(item, FrameData):
                self.ingest_frame(item)
            elif isinstance(item, SessionHeader):
                self.header = item
            else:
                events.append(item)
        if events:
            self.ingest_frame(frame_from_events(events, self.t0_ns))

    def ingest_frame(self, data: FrameData) -> None:
        """Take one block. A replay frame already read (a seek raced the loader) only adds detail."""
        for tick, detail in data.details.items():
            if tick not in data.partial:
                self._put_detail(tick, detail)
            elif tick in self._detail:  # the rest of a tick held already; alone it would pass for all
                self._put_detail(tick, detail)
        self.has_stages = self.has_stages or data.has_stages
        self._pending_distinct.update(data.distinct)
        self._pending_busy.update(data.busy)
        if data.frame >= 0 and self.laid_out:
            if data.frame >= len(self._frame_loaded) or self._frame_loaded[data.frame]:
                self._place_cost_figures()
                return
            self._frame_loaded[data.frame] = True
            row0, n = int(self._frame_row0[data.frame]), int(self._frame_rows[data.frame])
            ticks = data.ticks[:n]
            self.ticks.put(slice(row0, row0 + len(ticks)), ticks)
            self._start_cost(row0, row0 + len(ticks))
            # The next row's throughput counts from this frame's last tick: it changes too.
            self._derive(row0, row0 + len(ticks) + 1)
        elif len(data.ticks):
            rows = self.ticks.extend(data.ticks)
            self._derived.resize(self.ticks.size)
            self._cost.resize(self.ticks.size)
            self._start_cost(rows.start, rows.stop)
            self._derive(rows.start, rows.stop)
        self._place_cost_figures()
        self.marks.extend(data.marks)
        self._apply_requests(data.requests)

    def _derive(self, lo: int, hi: int) -> None:
        """Recompute the derived series for tick rows lo..hi-1, and log them as changed.

        Throughput is sampled tokens over the time since the previous tick ended (not since
        this tick started), so the policy's collection wait counts as time spent, which is what
        a user sees as throughput.
        """
        hi = min(hi, self.n_ticks)
        if hi <= lo:
            return
        col = self.ticks.col
        end = col("end_s")
        prev = np.empty(hi - lo)
        if lo == 0:
            prev[0] = col("start_s")[0] - col("wait_s")[0]
            prev[1:] = end[: hi - 1]
        else:
            prev[:] = end[lo - 1 : hi - 1]
        span = np.maximum(end[lo:hi] - prev, 1e-9)
        self._derived.col("throughput")[lo:hi] = col("sampled_tokens")[lo:hi] / span
        self._derived.col("batch_tokens")[lo:hi] = col("prefill_tokens")[lo:hi] + col("decode_tokens")[lo:hi]
        self._changed(lo, hi)

    def _start_cost(self, lo: int, hi: int) -> None:
        """Rows lo..hi-1 just placed: busy for their forward time on one device, until a stage
        event says otherwise; distinct experts unknown until their expert event is read."""
        self._cost.col("busy_s")[lo:hi] = self.ticks.col("forward_s")[lo:hi]
        self._cost.col("devices")[lo:hi] = 1
        self._cost.col("distinct_experts")[lo:hi] = np.nan

    def _place_cost_figures(self) -> None:
        """Write the pending figures of ticks whose rows are in place; keep the rest for later."""
        for pending, names in ((self._pending_distinct, ("distinct_experts",)), (self._pending_busy, ("busy_s", "devices"))):
            if not pending or self.n_ticks == 0:
                continue
            ticks = np.fromiter(pending, np.float64, len(pending))
            column = self.ticks.col("tick")
            rows = np.searchsorted(column, ticks).clip(max=self.n_ticks - 1)
            placed = column[rows] == ticks
            if self.laid_out:
                placed &= self._frame_loaded[np.searchsorted(self._frame_row0, rows, side="right") - 1]
            values = np.array(list(pending.values()), dtype=np.float64).reshape(len(ticks), -1)
            for i, name in enumerate(names):
                self._cost.col(name)[rows[placed]] = values[placed, i]
            for tick in ticks[placed].tolist():
                del pending[int(tick)]

    def _changed(self, lo: int, hi: int) -> None:
        self._version += 1
        self._dirty.append((self._version, lo, hi))
        del self._dirty[:-DIRTY_LOG]

    def _put_detail(self, tick: int, detail: Detail) -> None:
        held = self._detail.get(tick)
        if held is None:
            self._detail[tick] = detail
            lo, hi = self._pinned
            kept = 0  # a pinned span wider than the cache stays whole: the cache grows past its size
            while len(self._detail) > self._detail_capacity and kept < len(self._detail):
                old, held = self._detail.popitem(last=False)
                if lo <= old <= hi:
                    self._detail[old] = held
                    kept += 1
            return
        self._detail.move_to_end(tick)
        held.experts = detail.experts if detail.experts is not None else held.experts
        held.stages = detail.stages if detail.stages is not None else held.stages

    def put_detail(self, tick: int, experts: np.ndarray | None, stages: StageEvent | None) -> None:
        """Cache detail fetched from the trace for a tick no longer (or never) held."""
        self._put_detail(tick, Detail(experts, stages))

    def _apply_requests(self, block: RequestBlock) -> None:
        """Fold a block of request events into the table: bulk phases as array writes."""
        if len(block.ids) == 0:
            return
        get = self._request_row.get
        rows = np.empty(len(block.ids), dtype=np.int64)
        new: list[int] = []
        for i, request in enumerate(block.ids.tolist()):
            row = get(request)
            if row is None:
                row = self._request_row[request] = self.requests.size + len(new)
                new.append(request)
            rows[i] = row
        if new:
            fresh = np.full((len(new), len(REQUEST_COLUMNS)), np.nan)
            fresh[:, 0] = new
            fresh[:, 5:] = 0  # prompt, output, status, preempts, arrive_read
            self.requests.extend(fresh)
        col = self.requests.col
        phase, t = block.phase, block.t_s
        has_prompt = block.prompt > 0
        col("prompt_tokens")[rows[has_prompt]] = block.prompt[has_prompt]
        for code, name in ((ARRIVE, "arrive_s"), (FIRST_TOKEN, "first_token_s")):
            m = phase == code
            col(name)[rows[m]] = t[m]
        col("arrive_read")[rows[phase == ARRIVE]] = 1
        finish = phase == FINISH
        col("finish_s")[rows[finish]] = t[finish]
        # Admissions and preemptions carry the tokens generated so far, which only grow: the
        # largest seen is the latest, whatever order frames are read in.
        np.maximum.at(col("output_tokens"), rows, block.output)
        col("status")[rows[finish]] = block.status[finish]
        # Admissions: the first is what queue wait and "prefill" go by; later ones (after a
        # preemption) and the preemptions themselves are rare, and kept per request.
        admit_s = col("admit_s")
        for i in np.flatnonzero((phase == ADMIT) | (phase == PREEMPT)).tolist():
            row, when = int(rows[i]), float(t[i])
            if phase[i] == ADMIT:
                if np.isnan(admit_s[row]):
                    admit_s[row] = when
                    continue
                if when < admit_s[row]:  # frames read out of order: the earlier one is the first
                    admit_s[row], when = when, float(admit_s[row])
            what = "admit" if phase[i] == ADMIT else "preempt"
            history = self._history.setdefault(int(block.ids[i]), [])
            bisect.insort(history, (when, what))  # in time order, whatever order frames came in
            if what == "preempt":
                col("preempts")[row] += 1
                self._preempt_s.append((when,))
        self._token_us.update(block.token_us)
        # A request seen first mid-life (a tail that started late, a frame read out of order)
        # still gets an arrival time: its earliest event, until its arrival is read.
        arrive = col("arrive_s")
        missing = np.isnan(arrive[rows])
        if missing.any():
            order = np.argsort(t[missing], kind="stable")[::-1]  # earliest written last, so it wins
            arrive[rows[missing][order]] = t[missing][order]

    # -- layout ---------------------------------------------------------------------------------

    @property
    def n_ticks(self) -> int:
        return self.ticks.size

    @property
    def laid_out(self) -> bool:
        """True for a replay laid out from its index (frames read on demand)."""
        return len(self._frame_row0) > 0

    def frame_of(self, index: int) -> int:
        """The index entry holding tick index `index` in a replay's layout."""
        return int(np.searchsorted(self._frame_row0, index, side="right")) - 1

    def frame_loaded(self, frame: int) -> bool:
        return bool(self._frame_loaded[frame])

    def unloaded_frames(self) -> np.ndarray:
        return np.flatnonzero(~self._frame_loaded)

    @property
    def loaded_share(self) -> float:
        """Share of the replay's ticks read so far (1.0 when not laid out)."""
        total = int(self._frame_rows.sum())
        return float(self._frame_rows[self._frame_loaded].sum() / total) if total else 1.0

    # -- queries --------------------------------------------------------------------------------

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
        """Generated tokens per second of each tick, over the time since the previous tick ended."""
        return self._derived.col("throughput")

    def values(self, name: str) -> np.ndarray:
        """A per-tick series: a tick column, "throughput" (tokens/s) or "batch_tokens"."""
        if name in DERIVED_COLUMNS:
            return self._derived.col(name)
        return self.ticks.col(name)

    def series(self, name: str, upto: int, buckets: int) -> Series:
        """`values(name)` bucketed, with the tick at index `upto` marked.

        The buckets are kept between frames and only those holding rows changed since are redone,
        so a frame costs a search, and a frame read in the background the buckets it falls in,
        not a pass over a million ticks.
        """
        key = (name, buckets)
        held = self._buckets.get(key)
        if held is None or held.n != self.n_ticks or (self._dirty and held.version < self._dirty[0][0] - 1):
            bounds = bucket_bounds(self.values(name), buckets)
            held = self._buckets[key] = _Buckets(self._version, self.n_ticks, *bounds)
        elif held.version < self._version:
            held.update(self.values(name), [(lo, hi) for v, lo, hi in self._dirty if v > held.version])
            held.version = self._version
        return Series(held.lo, held.hi, cursor_bucket(held.edges, upto, self.n_ticks), held.peak)

    def window(self, upto: int, window_s: float = LATENCY_WINDOW_S) -> tuple[int, float]:
        """The first tick index of the `window_s` of recording ending with tick `upto`, and when that
        window began: the end of the tick before it (the first tick's start less its wait)."""
        end = self.ticks.col("end_s")
        lo = int(np.searchsorted(end, end[upto] - window_s, side="right"))
        start = end[lo - 1] if lo > 0 else self.ticks.col("start_s")[0] - self.ticks.col("wait_s")[0]
        if not np.isfinite(start):  # the first tick's wait is not read yet
            start = self.ticks.col("start_s")[0]
        return lo, float(start)

    def mean_throughput(self, upto: int, window_s: float = LATENCY_WINDOW_S) -> float:
        """Sampled tokens per second over the window ending at tick `upto` (ticks read so far)."""
        if self.n_ticks == 0:
            return 0.0
        lo, start = self.window(upto, window_s)
        t = self.time_at(upto)
        tokens = np.nansum(self.ticks.col("sampled_tokens")[lo : upto + 1])
        return float(tokens / (t - start)) if t > start else 0.0

    def cost(self, lo: int, upto: int, start_s: float) -> dict[str, Any]:
        """What a token cost over tick indices lo..upto (those read so far), from `start_s` to the end
        of `upto`: tracer.cost's span figures, modelled on `self.accelerator` when one is set."""
        model, reason = self.cost_model()
        rows = slice(lo, upto + 1)
        tick = self.ticks.col
        read = np.isfinite(tick("sampled_tokens")[rows])
        measured = pl.DataFrame({
            "tick": tick("tick")[rows][read].astype(np.int64),
            "start_s": tick("start_s")[rows][read],
            "end_s": tick("end_s")[rows][read],
            "busy_s": self._cost.col("busy_s")[rows][read],
            "devices": self._cost.col("devices")[rows][read].astype(np.int64),
            "processed_tokens": (tick("prefill_tokens")[rows] + tick("decode_tokens")[rows])[read].astype(np.int64),
            "output_tokens": tick("sampled_tokens")[rows][read].astype(np.int64),
        })
        if model is not None:
            distinct = self._cost.col("distinct_experts")[rows][read]
            measured = modelled_columns(measured, tick("kv_used")[rows][read], distinct, model, self.accelerator)
        span = self.time_at(upto) - start_s
        return span_summary(measured, span if span > 0 else None, model, self.accelerator, self.price, reason)

    def cost_model(self) -> tuple[ModelShape | None, str | None]:
        """The recording's model shape for the modelled figures, or why there is none."""
        if self._model is None:
            try:
                self._model = (ModelShape.from_config(self.header.config if self.header else {}), None)
            except CostUnavailable as exc:
                self._model = (None, exc.reason)
        return self._model

    def latency(self, upto: int, window_s: float = LATENCY_WINDOW_S) -> LatencyStats:
        """TTFT and TPOT percentiles of requests whose first token / finish fell in the window."""
        t = self.time_at(upto)
        arrive = self.requests.col("arrive_s")
        first = self.requests.col("first_token_s")
        finish = self.requests.col("finish_s")
        out = self.requests.col("output_tokens")
        with np.errstate(invalid="ignore"):
            # A request whose arrival is not read yet (a replay still loading) has no TTFT yet.
            seen_first = (first <= t) & (self.requests.col("arrive_read") > 0)
            in_window = seen_first & (first > t - window_s)
            ttft = first[in_window] - arrive[in_window]
            finished = (finish <= t) & (out > 1) & (first <= t)
            done = finished & (finish > t - window_s)
            tpot = (finish[done] - first[done]) / (out[done] - 1)
            ttft_all = first[seen_first] - arrive[seen_first]
            tpot_all = (finish[finished] - first[finished]) / (out[finished] - 1)

        def pct(values: np.ndarray, q: float) -> float | None:
            return float(np.percentile(values, q)) if len(values) else None

        return LatencyStats(
            pct(ttft, 50), pct(ttft, 99), pct(tpot, 50), pct(tpot, 99), int(in_window.sum()),
            ttft_all, tpot_all, pct(ttft, 90), pct(tpot, 90),
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
        """The `limit` most recently arrived requests, each as it stood at tick `upto` (latest
        first; of two that arrived together, the higher id first).

        Only the requests of the last latency window are sorted (all of them when that window
        holds too few): a sort of every request would be redone after every frame read.
        """
        t = self.time_at(upto)
        arrive = self.requests.col("arrive_s")
        with np.errstate(invalid="ignore"):
            arrived = arrive <= t
            rows = np.flatnonzero(arrived & (arrive > t - LATENCY_WINDOW_S))
            if len(rows) < limit:
                rows = np.flatnonzero(arrived)
        latest = rows[np.lexsort((self.requests.col("request")[rows], arrive[rows]))][::-1][:limit]
        return [self._request_as_of(int(r), t) for r in latest]

    def _request_as_of(self, row: int, t: float) -> RequestRow:
        c = {name: float(self.requests.col(name)[row]) for name in REQUEST_COLUMNS}
        request = int(c["request"])
        ttft = c["first_token_s"] - c["arrive_s"] if c["first_token_s"] <= t and c["arrive_read"] else None
        tpot = None
        out: int | None = None
        if c["finish_s"] <= t:
            state = STATUS_NAMES.get(int(c["status"]), "finished") or "finished"
            out = int(c["output_tokens"])
            if out > 1 and c["first_token_s"] <= t:
                tpot = (c["finish_s"] - c["first_token_s"]) / (out - 1)
        else:
            if c["first_token_s"] <= t:
                state = "decode"
            elif c["admit_s"] <= t:
                state = "prefill"
            else:
                state = "queued"
            token_us = self._token_us.get(request)
            if token_us is not None:  # a replay knows every token's time; count those so far
                out = int((c["arrive_s"] + token_us / 1e6 <= t).sum())
        if state in ("decode", "prefill", "queued") and self._preempted_by(request, t):
            state += "*"  # preempted at least once by then (a later re-admission is not told apart)
        return RequestRow(request, state, int(c["prompt_tokens"]), out, ttft, tpot)

    def _preempted_by(self, request: int, t: float) -> bool:
        return any(what == "preempt" and when <= t for when, what in self._history.get(request, ()))

    def request_life(self, request: int) -> RequestLife | None:
        """Everything known of one request's life, for its timeline; None if never seen."""
        row = self._request_row.get(request)
        if row is None:
            return None
        c = {name: float(self.requests.col(name)[row]) for name in REQUEST_COLUMNS}

        def known(v: float) -> float | None:
            return None if np.isnan(v) else v

        token_us = self._token_us.get(request)
        return RequestLife(
            request=request,
            status=STATUS_NAMES.get(int(c["status"]), "") if known(c["finish_s"]) is not None else "",
            prompt_tokens=int(c["prompt_tokens"]),
            output_tokens=int(c["output_tokens"]),
            arrive_s=c["arrive_s"],
            admit_s=known(c["admit_s"]),
            first_token_s=known(c["first_token_s"]),
            finish_s=known(c["finish_s"]),
            token_s=(c["arrive_s"] + token_us / 1e6) if token_us is not None else np.zeros(0),
            history=[(what, t) for t, what in self._history.get(request, [])],
        )

    def detail(self, index: int) -> Detail | None:
        if self.n_ticks == 0:
            return None
        return self._detail.get(self.tick_number(index))

    def lacking(self, lo: int, hi: int) -> list[int]:
        """Tick indices of lo..hi, newest first, whose detail is not held or (a replay) whose
        frame has not been read: one per unread frame is enough, a read brings the whole frame."""
        lo = max(lo, 0)
        # Tick numbers as floats find their int keys: 5.0 == 5 and hashes the same.
        ticks = self.ticks.col("tick")[lo : hi + 1].tolist()
        held = self._detail
        out = {lo + i for i, tick in enumerate(ticks) if tick not in held}
        if self.laid_out and hi >= lo:
            for frame in range(self.frame_of(lo), self.frame_of(hi) + 1):
                if not self._frame_loaded[frame]:
                    out.add(min(max(int(self._frame_row0[frame]), lo), hi))
        return sorted(out, reverse=True)

    def pin(self, lo: int, hi: int) -> None:
        """Keep the detail of tick indices lo..hi (a heatmap span) while frames are read for it:
        the frames fetched for one end of the span must not evict the other end."""
        if self.n_ticks:
            lo = min(max(lo, 0), self.n_ticks - 1)
            self._pinned = (self.tick_number(lo), self.tick_number(min(hi, self.n_ticks - 1)))

    def span_experts(self, lo: int, hi: int) -> np.ndarray | None:
        """Expert counts of the ticks lo..hi held in memory, as a [held, layers, experts] stack
        (those of the shape of the newest held tick), or None when none is held."""
        ticks = self.ticks.col("tick")[max(lo, 0) : hi + 1].tolist()
        counts = [d.experts for d in map(self._detail.get, ticks) if d is not None and d.experts is not None]
        if not counts:
            return None
        return np.stack([c for c in counts if c.shape == counts[-1].shape])
def config_summary(header: SessionHeader | None) -> dict[str, str]:
    """Model, device and policy named from a header's config, tolerant of missing keys."""
    cfg = header.config if header is not None else {}
    model = cfg.get("model") or {}
    sched = cfg.get("scheduler") or {}
    workload = cfg.get("workload") or {}
    device = cfg.get("device_name") or cfg.get("device") or "?"
    if isinstance(device, dict):
        device = device.get("name", device.get("type", "?"))
    if cfg.get("decode_graphs") == "cuda graphs":  # how the decode ticks ran shapes their times
        compiled = sched.get("decode_compile", "off") != "off"
        device = f"{device}, CUDA graphs{' (compiled)' if compiled else ''}"
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
