"""What the dashboard knows about a recording, as plain arrays: no Textual in here.

`DashboardState` takes a recording in `FrameData` blocks (per-tick rows, request updates, marks,
per-tick detail) and answers questions *as of a tick*: the series up to it, what a token cost and
the latency over a rolling window ending at it, the requests alive at it. Per-tick scalars are kept
for every tick in numpy columns (a hundred bytes a tick, so a million ticks stay near 100 MB); the
bulky per-tick detail (expert counts, pipeline cells) only for a bounded number of ticks, fetched
again through the trace index when needed.

A live tail appends blocks as the file grows. A replay first lays out every tick the trace index
knows of, with tick numbers and times estimated from the index, and fills each events frame's rows
in whatever order frames are read: the frames around the current tick first, the rest in the
background. Rows not read yet hold NaN, which the charts draw as "not loaded".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np
import polars as pl

from tracer.columns import TICK_COLUMNS
from tracer.cost import Accelerator, CostUnavailable, ModelShape, modelled_columns, span_summary
from tracer.events import SCRAPE_SERIES, TICK_FIELDS, MarkEvent, SessionHeader
from tracer.index import Entry
from tui.state.blocks import NS, Detail, FrameData, frame_from_events
from tui.state.columns import Columns
from tui.state.requests import LATENCY_WINDOW_S, LatencyStats, RequestLife, RequestRow, RequestTable
from tui.state.series import Series, _Buckets, bucket_bounds, cursor_bucket

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
# The tick fields each derived series is made of, for `missing`.
DERIVED_FROM = {"throughput": ("sampled_tokens",), "batch_tokens": ("prefill_tokens", "decode_tokens")}
# What a tick field is, in the words a panel with no data for it says.
_FIELD_WORDS = {
    "forward_ns": "forward time",
    "wait_ns": "collection wait",
    "kv_used": "KV cache size in tokens",
    "kv_capacity": "KV cache size in tokens",
    "queue_depth": "queue",
    "seqs": "running requests",
    "running": "running requests",
}


def series_fields(name: str) -> tuple[str, ...]:
    """The tick fields a per-tick series (`DashboardState.values(name)`) is made of."""
    return DERIVED_FROM.get(name, (name,))


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
        self.requests = RequestTable()
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
        self._absent = (-1, 0)  # (version, the tick fields absent from every tick read so far)
        self._scrapes: dict[int, np.ndarray] = {}  # a watched server's scrape values, by tick number

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
        rows = entries[:, Entry.N_TICKS].astype(np.int64)
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
        self.ticks.col("tick")[:] = entries[frame, Entry.MAX_TICK] - rows[frame] + 1 + step
        span = (entries[frame, Entry.MAX_T_NS] - entries[frame, Entry.MIN_T_NS]).astype(np.float64)
        start = (entries[frame, Entry.MIN_T_NS] - self.t0_ns + span * step / np.maximum(rows[frame] - 1, 1)) / NS
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
        self._scrapes.update(data.scrapes)
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
        self.requests.apply(data.requests)

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
        for pending, names in (
            (self._pending_distinct, ("distinct_experts",)),
            (self._pending_busy, ("busy_s", "devices")),
        ):
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

    def missing(self, needs: Iterable[str]) -> str | None:
        """Why a panel that draws from `needs` has nothing to draw, in one line; None when it has.

        The one rule every panel follows (tui/widgets/panel.py asks it before drawing): a tick field
        is missing when every tick read so far marks it absent (a watched server's metrics have no
        forward time, say); `experts` and `requests` are missing from a watched server's trace
        (`tickscope watch`), which has no expert load, and no requests unless `record --target
        --watch` sent them; `latency` (the requests', or else the server's own) only until its
        first scrape. A panel never draws zeros for data the source does not have."""
        config = self.header.config if self.header is not None else {}
        watched = config.get("watch") if isinstance(config.get("watch"), dict) else None
        who = f"the watched {watched.get('source', '')} server".replace("  ", " ") if watched else "this trace"
        absent = self._absent_fields()
        for need in needs:
            if need == "experts" and watched:
                return f"no data: {who} reports no expert load"
            if need == "latency" and watched and "target" not in config and not self._scrapes:
                return f"no data: {who} has not been scraped yet"
            if need == "requests" and watched and "target" not in config:
                return f"no data: {who}'s requests are not in the trace (record --target URL --watch sends them)"
            if need in TICK_FIELDS and absent >> TICK_FIELDS.index(need) & 1:
                return f"no data: {who} reports no {_FIELD_WORDS.get(need, 'token counts')}"
        return None

    def server_latency(self, index: int) -> dict[str, float] | None:
        """A watched server's own figures at the tick at `index` (its scrape's SCRAPE_SERIES, NaN
        where it has none), when the trace has no requests to take latencies from; else None."""
        if not self._scrapes or self.missing(("requests",)) is None or not 0 <= index < self.n_ticks:
            return None
        values = self._scrapes.get(self.tick_number(index))
        known = [] if values is None else values.tolist()
        return {name: known[i] if i < len(known) else float("nan") for i, name in enumerate(SCRAPE_SERIES)}

    def _absent_fields(self) -> int:
        """The absent bits common to every tick read so far (0 before any): as of the last ingest."""
        if self._absent[0] != self._version:
            col = self.ticks.col("absent")[: self.n_ticks]
            read = col[~np.isnan(col)].astype(np.int64)
            self._absent = (self._version, int(np.bitwise_and.reduce(read)) if len(read) else 0)
        return self._absent[1]

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
        measured = pl.DataFrame(
            {
                "tick": tick("tick")[rows][read].astype(np.int64),
                "start_s": tick("start_s")[rows][read],
                "end_s": tick("end_s")[rows][read],
                "busy_s": self._cost.col("busy_s")[rows][read],
                "devices": self._cost.col("devices")[rows][read].astype(np.int64),
                "processed_tokens": (tick("prefill_tokens")[rows] + tick("decode_tokens")[rows])[read].astype(np.int64),
                "output_tokens": tick("sampled_tokens")[rows][read].astype(np.int64),
            }
        )
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
        """TTFT and TPOT over the window ending at tick `upto` (see RequestTable.latency)."""
        return self.requests.latency(self.time_at(upto), window_s)

    def counters(self, upto: int) -> dict[str, float]:
        return self.requests.counters(self.time_at(upto))

    def recent_requests(self, upto: int, limit: int) -> list[RequestRow]:
        return self.requests.recent(self.time_at(upto), limit)

    def request_life(self, request: int) -> RequestLife | None:
        return self.requests.life(request)

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
