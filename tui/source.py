"""Where the dashboard's data comes from: no Textual in here.

Every source hands the state `FrameData` blocks. A live source's `poll()` returns what the
recorder appended since the last call. A replay never reads the whole file up front: opening reads
the header and the index, `layout()` gives the state every tick's place, `fetch(tick)` reads the
one events frame holding a tick (with its expert and stage detail) when the screen needs it, and
`poll()` reads the remaining frames in the background, the ones just before the current tick
first (their requests are what the latency panel needs), decoding only tick rows and requests.
`poll()` also decodes the detail of the frames either side of the current one ahead of time, so
that stepping or playing across a frame boundary finds it in the state instead of decoding a
frame on the UI thread.

`poll()` runs on one worker thread and `fetch()` on the UI thread, so each has its own file handle.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

import tracer
from tracer.codec import BATCH, EXPERTS, STAGE, TICK, decode_event, unpackb, wire_columns
from tracer.columns import TICK_COLUMNS, Rejected, checked_columns, tick_seconds
from tracer.cost import distinct_experts
from tracer.errors import TraceFormatError
from tracer.events import KIND_BY_CODE, SessionHeader, StageEvent
from tracer.framing import read_frame
from tracer.index import Entry, TraceIndex
from tracer.limits import MAX_BIN_LEN
from tui.state import LATENCY_WINDOW_S, DashboardState, Detail, FrameData, frame_from_events, request_block

# A poll of the background loader stops after this long, so the UI gets the rows in small steps
# (and stays responsive while a million-tick file loads).
POLL_BUDGET_S = 0.05

# Frames whose detail was handed to the state recently, so not decoded again for it: fewer than
# the state's detail cache holds (the current frame, its neighbours, a heatmap span's worth).
DETAILED_FRAMES = 8

# A live file that has not grown for this long is shown as idle.
IDLE_AFTER_S = 2.0

_NS = 1_000_000_000


class Source(Protocol):
    path: str
    done: bool  # no more data will come (a replay read to its end)

    @property
    def header(self) -> SessionHeader | None:
        """The session header, once read (a replay has it from the start)."""
        ...

    def layout(self) -> np.ndarray | None:
        """Index entries of every events frame (a replay), or None (data is appended as it comes)."""
        ...

    def poll(self, budget_s: float = POLL_BUDGET_S) -> list[FrameData]:
        """What is new: a live file's appended events; a replay's next frames, reading on for
        about `budget_s` (at least one frame), the current frame's neighbours' detail first."""
        ...

    def focus(self, tick: int) -> None:
        """Where the user is: a replay reads the frames around it next."""
        ...

    def fetch(self, tick: int, *, rows: bool = True) -> FrameData | None:
        """The block holding `tick`, with its detail, read now (UI thread); None if not found.
        Without `rows` only the detail is wanted (the state has the rest): requests are skipped."""
        ...

    def status(self) -> str: ...

    def close(self) -> None: ...


def decode_frame(payload: bytes, t0_ns: int, frame: int = -1, *, detail: bool, requests: bool = True) -> FrameData:
    """One events frame as FrameData, the fast way: tick rows straight into an array, expert and
    stage events (the bulk of a frame) as whole-frame arrays, from which each tick's distinct experts
    and busy time are taken, kept as per-tick detail only when `detail` is asked for. Without
    `requests`, request and mark events are skipped too (a seek into a frame whose rows the
    state already has needs only its detail). Batch events are never decoded: the dashboard
    does not show them.

    Raises TraceFormatError for anything malformed, as the tracer's own decoder does.
    """
    items = unpackb(payload, "events frame")
    if type(items) is not list:
        raise TraceFormatError("events frame is not an array")
    ticks: list[list[Any]] = []
    experts: list[Any] = []
    stages: list[Any] = []
    others: list[Any] = []
    tick_kind = KIND_BY_CODE[TICK]
    for item in items:
        code = item[0] if type(item) is list and item else None
        if code == TICK and len(item) > tick_kind.required:
            ticks.append(item)
        elif code == EXPERTS:
            experts.append(item)
        elif code == STAGE:
            stages.append(item)
        elif code == BATCH:
            continue
        elif requests or code is None:
            others.append(item)  # requests, marks, and anything malformed (decode_event says why)
    try:
        raw = np.array(wire_columns(tick_kind, ticks)).T if ticks else np.zeros((0, len(TICK_COLUMNS)), np.int64)
    except (TypeError, ValueError, OverflowError):  # ragged rows
        raise TraceFormatError("tick event: malformed fields") from None
    if raw.dtype.kind != "i" or raw.ndim != 2:  # strings, floats, or integers past int64
        raise TraceFormatError("tick event: expected integers")
    bulk = FrameData(raw[:0].astype(np.float64), request_block((), 0))
    # What the fast path cannot take (an irregular frame) goes through decode_event.
    others += _bulk_detail(experts, EXPERTS, bulk, detail) + _bulk_detail(stages, STAGE, bulk, detail)
    events = [ev for ev in map(decode_event, others) if ev is not None]
    data = frame_from_events(events, t0_ns, frame)
    if not detail:
        data.details.clear()
    data.details.update(bulk.details)
    data.distinct.update(bulk.distinct)
    data.busy.update(bulk.busy)
    data.ticks = tick_seconds(raw, t0_ns)
    data.find_partial()
    data.has_stages = data.has_stages or bool(stages)
    if detail:
        # Every tick of the frame gets an entry, so a tick recorded without detail is not
        # fetched again on every frame.
        for tick in raw[:, 0].tolist():
            data.details.setdefault(tick, Detail())
    return data


def add_spilled_detail(
    data: FrameData, entries: np.ndarray, frame: int, payload_at: Callable[[int], bytes | None], t0_ns: int
) -> None:
    """Complete the detail of `frame`'s last tick from the frames after it.

    A tick's experts and stage events follow its tick event, and a frame may end between them: then
    the next frames' `min_tick` (the index counts those events too) is at most this frame's
    `max_tick`, and they hold the rest. Frames of request events alone (no tick in them: `min_tick`
    -1) may come in between, written by the load generator meanwhile: they are passed over. Without
    this read the tick would keep the empty detail `decode_frame` gives it, for good.
    """
    last = int(entries[frame, Entry.MAX_TICK])
    following = frame + 1
    while last >= 0 and following < len(entries) and entries[following, Entry.MIN_TICK] <= last:
        if entries[following, Entry.MIN_TICK] < 0:
            following += 1
            continue
        payload = payload_at(int(entries[following, Entry.OFFSET]))
        if payload is None:
            return
        for tick, part in decode_frame(payload, t0_ns, detail=True, requests=False).details.items():
            if tick > last:  # that frame's own ticks: their detail may spill further still
                continue
            held = data.details.setdefault(tick, Detail())
            held.experts = part.experts if part.experts is not None else held.experts
            held.stages = part.stages if part.stages is not None else held.stages
            data.has_stages = data.has_stages or part.stages is not None
        following += 1


def _bulk_detail(group: list[Any], code: int, into: FrameData, keep: bool) -> list[Any]:
    """Expert (or stage) events of one frame decoded as one array instead of one by one: each
    tick's distinct experts (or busy time) into `into`, and with `keep` its arrays as detail.
    Only the regular case (every event with one shape, well-formed) takes this path; otherwise the
    events are returned for `decode_event` to decode, or to say what is wrong. The checks are the
    columnar loader's (`tracer.columns.checked_columns`), whole columns at a time: per-event Python
    here costs more than the decoding it saves.
    """
    if not group:
        return []
    kind = KIND_BY_CODE[code]
    packed = [f for f in kind.wire if f.type == "packed"]  # all shaped by the kind's shape field
    dtype = np.dtype(packed[0].dtype)
    at = kind.at["shape"]
    shape = group[0][at] if len(group[0]) > at else None
    if type(shape) is not list or len(shape) != 2 or any(type(d) is not int or d < 0 for d in shape):
        return group
    if shape[0] * shape[1] * dtype.itemsize * len(group) * len(packed) > MAX_BIN_LEN:
        return group
    try:
        columns, shapes = checked_columns(kind, group)
    except Rejected:
        return group
    if shapes is None or not (shapes == shapes[0]).all():
        return group
    ticks = columns["tick"]
    # One copy for the whole frame: the per-tick arrays are views of it, not of the payload.
    blobs = itertools.chain.from_iterable(zip(*(columns[f.name] for f in packed)))
    arrays = np.frombuffer(b"".join(blobs), dtype).reshape(len(group), len(packed), *shape)
    names = [f.name for f in packed]
    if code == EXPERTS:
        into.distinct.update(zip(ticks, distinct_experts(arrays[:, names.index("counts")]).sum(axis=1).tolist()))
    elif arrays.size:
        start, end = arrays[:, names.index("modelled_start_ns")], arrays[:, names.index("modelled_end_ns")]
        makespan = (end.max(axis=(1, 2)) - start.min(axis=(1, 2))) / 1e9
        into.busy.update(zip(ticks, zip(makespan.tolist(), [shape[0]] * len(ticks))))
    if keep:
        for i, tick in enumerate(ticks):
            d = into.details.setdefault(tick, Detail())
            if code == EXPERTS:
                d.experts = arrays[i, 0]
            else:
                measured_start, measured_end, modelled_start, modelled_end = arrays[i]  # the kind's packed order
                d.stages = StageEvent(
                    tick, measured_start, measured_end, modelled_start, modelled_end, modelled=columns["modelled"][i]
                )
    return []


class ReplaySource:
    """A finished (or crashed) recording, read through its index.

    Opening reads the header and the index (rebuilding it by a scan if the writer was killed), so
    a missing or malformed file raises `TraceFormatError` (or `OSError`) here, before any terminal
    is taken over.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._loader = tracer.open_trace(self.path)  # the worker thread's handle
        try:
            self._index: TraceIndex = self._loader.index
            self._seeker = tracer.open_trace(self.path)  # the UI thread's handle
        except BaseException:
            self._loader.close()
            raise
        self.header = self._loader.header
        entries = self._index.entries
        self._entries = entries
        self._read = np.zeros(len(entries), dtype=bool)
        # Frame start times made nondecreasing (frames without ticks say -1), for "which frames
        # hold the last seconds before tick N".
        frame_t = np.where(entries[:, Entry.N_TICKS] > 0, entries[:, Entry.MAX_T_NS], -1)
        self._frame_t = np.maximum.accumulate(frame_t) if len(entries) else frame_t
        self._next = 0
        self._focus = -1  # the frame of the tick in view, until the latency window before it is read
        self._near = -1  # the frame of the tick in view, for reading its neighbours' detail ahead
        self._detailed: OrderedDict[int, None] = OrderedDict()  # frames handed out with detail
        self._lock = threading.Lock()
        self.done = len(entries) == 0

    def layout(self) -> np.ndarray:
        return self._entries

    def _frame_of(self, tick: int) -> int | None:
        offset = self._index.frame_for_tick(tick)
        if offset is None:
            return None
        return int(np.searchsorted(self._entries[:, Entry.OFFSET], offset))

    def focus(self, tick: int) -> None:
        frame = self._frame_of(tick)
        if frame is not None:
            with self._lock:
                self._focus = frame
                self._near = frame

    def _handed_out(self, frame: int) -> bool:
        """Note that `frame`'s detail goes to the state now; False if it recently went already."""
        with self._lock:
            if frame in self._detailed:
                self._detailed.move_to_end(frame)
                return False
            self._detailed[frame] = None
            while len(self._detailed) > DETAILED_FRAMES:
                self._detailed.popitem(last=False)
            return True

    def _neighbour(self) -> int | None:
        """A frame next to the one in view whose detail the state has not been given lately: the
        one before first (the latency window wants its rows anyway), then the one after."""
        with self._lock:
            near, detailed = self._near, set(self._detailed)
        for frame in (near - 1, near + 1):
            if (
                near >= 0
                and 0 <= frame < len(self._entries)
                and self._entries[frame, Entry.N_TICKS] > 0
                and frame not in detailed
            ):
                return frame
        return None

    def _next_frame(self) -> int | None:
        """The frame to read next: those covering the latency window before the focus, nearest
        first, then the rest in file order."""
        with self._lock:
            focus, self._focus = self._focus, -1
        if focus >= 0:
            since = self._frame_t[focus] - LATENCY_WINDOW_S * _NS
            first = int(np.searchsorted(self._frame_t, since, side="left"))
            wanted = [f for f in range(focus, max(first - 1, 0) - 1, -1) if not self._read[f]]
            if wanted:
                with self._lock:
                    self._focus = focus  # come back for the rest of the window next time
                return wanted[0]
        while self._next < len(self._read) and self._read[self._next]:
            self._next += 1
        return self._next if self._next < len(self._read) else None

    def poll(self, budget_s: float = POLL_BUDGET_S) -> list[FrameData]:
        out: list[FrameData] = []
        deadline = time.monotonic() + budget_s
        ahead = self._neighbour()
        if ahead is not None and self._handed_out(ahead):
            rows = not self._read[ahead]  # else its rows and requests went to the state already
            self._read[ahead] = True
            data = self._decode(self._loader, ahead, detail=True, requests=rows)
            if data is not None:
                out.append(data if rows else data.detail_only())
        while not self.done:
            frame = self._next_frame()
            if frame is None:
                self.done = True
                break
            self._read[frame] = True
            data = self._decode(self._loader, frame, detail=False)
            if data is not None:
                out.append(data)
            if time.monotonic() >= deadline:
                break
        return out

    def fetch(self, tick: int, *, rows: bool = True) -> FrameData | None:
        frame = self._frame_of(tick)
        if frame is None:
            return None
        self._read[frame] = True  # the worker need not read it again
        self._handed_out(frame)
        data = self._decode(self._seeker, frame, detail=True, requests=rows)
        return data if data is None or rows else data.detail_only()

    def _decode(
        self, reader: tracer.TraceReader, frame: int, *, detail: bool, requests: bool = True
    ) -> FrameData | None:
        offset = int(self._entries[frame, Entry.OFFSET])
        payload = reader.frame_payload(offset)
        if payload is None:
            return None
        try:
            data = decode_frame(payload, self.header.t0_mono_ns, frame, detail=detail, requests=requests)
            if detail:
                add_spilled_detail(data, self._entries, frame, reader.frame_payload, self.header.t0_mono_ns)
            return data
        except TraceFormatError as exc:
            reader.problems.append(f"undecodable events frame at byte {offset} ({exc.what}): skipped")
            return None

    def status(self) -> str:
        problems = len(self._loader.problems) + len(self._seeker.problems)
        if problems:
            return f"loaded, {problems} damaged part(s) skipped"
        return "loaded, index rebuilt" if self._index.rebuilt else "loaded"

    def close(self) -> None:
        self._loader.close()
        self._seeker.close()


class LiveSource:
    """A trace being written: each poll returns what was appended since the previous one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._tail = tracer.TraceTail(self.path)
        self.header: SessionHeader | None = None
        self.done = False
        self._last_growth = time.monotonic()
        self._file: Any = None  # the UI thread's handle, for older ticks' detail

    def layout(self) -> None:
        return None

    def poll(self, budget_s: float = POLL_BUDGET_S) -> list[FrameData]:
        events = self._tail.poll()  # all that was appended: a live view has no backlog to pace
        if self.header is None:
            self.header = self._tail.header
        if not events:
            return []
        self._last_growth = time.monotonic()
        return [frame_from_events(events, self.header.t0_mono_ns if self.header else 0)]

    def focus(self, tick: int) -> None:
        pass  # everything appended is read anyway

    def fetch(self, tick: int, *, rows: bool = True) -> FrameData | None:
        """Detail of an older tick, read through the frames the tail has indexed so far.

        Only the detail is returned: the tick rows and requests were appended when first read.
        """
        index = self._tail.index()
        offset = index.frame_for_tick(tick)
        if offset is None or self.header is None:
            return None
        try:
            if self._file is None:
                self._file = open(self.path, "rb")
            payload = self._payload_at(offset)
            if payload is None:
                return None
            data = decode_frame(payload, self.header.t0_mono_ns, detail=True, requests=False)
            frame = int(np.searchsorted(index.entries[:, Entry.OFFSET], offset))
            add_spilled_detail(data, index.entries, frame, self._payload_at, self.header.t0_mono_ns)
        except (OSError, TraceFormatError):
            return None  # truncated or replaced under us: the tail reports that
        return data.detail_only()

    def _payload_at(self, offset: int) -> bytes | None:
        frame = read_frame(self._file, offset, os.fstat(self._file.fileno()).st_size)
        return frame.payload if frame is not None else None

    def status(self) -> str:
        """One of: waiting, live, idle, ended (the writer closed it), truncated, replaced."""
        state = self._tail.state
        if state != "ok":
            return state
        if self._tail.finished:
            return "ended"
        return "idle" if time.monotonic() - self._last_growth > IDLE_AFTER_S else "live"

    def close(self) -> None:
        self._tail.close()
        if self._file is not None:
            self._file.close()


def fetch_missing(state: DashboardState, source: Source, lo: int, hi: int) -> None:
    """Read the frames holding tick indices lo..hi whose detail (or, in a replay, whose rows) the
    state lacks: one read brings a whole frame, so each frame is read once."""
    tried: set[int] = set()
    for index in state.lacking(lo, hi):
        rows = state.laid_out and not state.frame_loaded(state.frame_of(index))
        missing = rows or state.detail(index) is None  # a frame read for a later tick may bring it
        tick = state.tick_number(index)
        if missing and tick not in tried:
            tried.add(tick)
            fetched = source.fetch(tick, rows=rows)
            if fetched is not None:
                # The wanted tick goes in last: a frame bigger than the cache must not evict it.
                wanted = fetched.details.pop(tick, None)
                if wanted is not None:
                    fetched.details[tick] = wanted
                state.ingest_frame(fetched)


def open_source(path: str | os.PathLike[str], mode: str) -> Source:
    """The source for `mode` ("live" or "replay") on `path`."""
    if mode == "live":
        return LiveSource(path)
    if mode == "replay":
        return ReplaySource(path)
    raise ValueError(f"unknown dashboard mode {mode!r} (live or replay)")
