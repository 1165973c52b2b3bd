"""Where the dashboard's data comes from: no Textual in here.

Every source hands the state `FrameData` blocks. A live source's `poll()` returns what the
recorder appended since the last call. A replay never reads the whole file up front: opening reads
the header and the index, `layout()` gives the state every tick's place, `fetch(tick)` reads the
one events frame holding a tick (with its expert and stage detail) when the screen needs it, and
`poll()` reads the remaining frames in the background, the ones just before the current tick
first (their requests are what the latency panel needs), decoding only tick rows and requests.

`poll()` runs on one worker thread and `fetch()` on the UI thread, so each has its own file handle.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Protocol

import numpy as np

import tracer
from tracer.codec import EXPERTS, STAGE, TICK, decode_event, unpackb
from tracer.errors import TraceFormatError
from tracer.events import SessionHeader, StageEvent
from tracer.framing import read_frame
from tracer.index import TraceIndex
from tracer.limits import MAX_BIN_LEN
from tui.state import LATENCY_WINDOW_S, TICK_COLUMNS, Detail, FrameData, frame_from_events, tick_rows

# A poll of the background loader stops after this long, so the UI gets the rows in small steps
# (and stays responsive while a million-tick file loads).
POLL_BUDGET_S = 0.05

# A live file that has not grown for this long is shown as idle.
IDLE_AFTER_S = 2.0

_NS = 1_000_000_000


class Source(Protocol):
    path: str
    header: SessionHeader | None
    done: bool  # no more data will come (a replay read to its end)

    def layout(self) -> np.ndarray | None:
        """Index entries of every events frame (a replay), or None (data is appended as it comes)."""
        ...

    def poll(self) -> list[FrameData]: ...

    def focus(self, tick: int) -> None:
        """Where the user is: a replay reads the frames around it next."""
        ...

    def fetch(self, tick: int) -> FrameData | None:
        """The block holding `tick`, with its detail, read now (UI thread); None if not found."""
        ...

    def detail(self, tick: int) -> tuple[np.ndarray | None, StageEvent | None] | None:
        """`fetch(tick)`'s detail of that one tick, for callers that keep their own cache."""
        ...

    def status(self) -> str: ...

    def close(self) -> None: ...


def decode_frame(payload: bytes, t0_ns: int, frame: int = -1, *, detail: bool) -> FrameData:
    """One events frame as FrameData, the fast way: tick rows straight into an array, and expert
    and stage events (the bulk of a frame) decoded only when `detail` is asked for.

    Raises TraceFormatError for anything malformed, as the tracer's own decoder does.
    """
    items = unpackb(payload, "events frame")
    if type(items) is not list:
        raise TraceFormatError("events frame is not an array")
    rows: list[list[Any]] = []
    others: list[Any] = []
    has_stages = False
    n_fields = len(TICK_COLUMNS)
    for item in items:
        code = item[0] if type(item) is list and item else None
        if code == TICK and len(item) > n_fields:
            rows.append(item[1 : 1 + n_fields])
        elif code == EXPERTS or code == STAGE:
            has_stages = has_stages or code == STAGE
            if detail:
                others.append(item)
        else:
            others.append(item)  # requests, marks, and anything malformed (decode_event says why)
    try:
        raw = np.array(rows) if rows else np.zeros((0, n_fields), np.int64)
    except (TypeError, ValueError, OverflowError):  # ragged rows
        raise TraceFormatError("tick event: malformed fields") from None
    if raw.dtype.kind != "i" or raw.ndim != 2:  # strings, floats, or integers past int64
        raise TraceFormatError("tick event: expected integers")
    bulk = _bulk_detail(others) if detail else {}
    events = [ev for ev in map(decode_event, others) if ev is not None]
    data = frame_from_events(events, t0_ns, frame)
    data.details.update(bulk)
    data.ticks = tick_rows(raw, t0_ns)
    data.has_stages = data.has_stages or has_stages
    if detail:
        # Every tick of the frame gets an entry, so a tick recorded without detail is not
        # fetched again on every frame.
        for tick in raw[:, 0].tolist():
            data.details.setdefault(tick, Detail())
    return data


def tick_detail(data: FrameData | None, tick: int) -> tuple[np.ndarray | None, StageEvent | None] | None:
    detail = data.details.get(tick) if data is not None else None
    return (detail.experts, detail.stages) if detail is not None else None


def _bulk_detail(items: list[Any]) -> dict[int, Detail]:
    """Expert and stage events of one frame decoded as two arrays instead of one by one; the
    items decoded here are removed from `items`. Only the regular case (every event of a kind
    with one shape, well-formed) takes this path; anything else is left to `decode_event`.
    """
    details: dict[int, Detail] = {}
    for code, n_arrays, dtype in ((EXPERTS, 1, "<i4"), (STAGE, 4, "<i8")):
        group = [it for it in items if type(it) is list and it and it[0] == code]
        if not group:
            continue
        shape = group[0][2]
        if type(shape) is not list or len(shape) != 2 or any(type(d) is not int or d < 0 for d in shape):
            continue
        size = shape[0] * shape[1] * np.dtype(dtype).itemsize
        regular = all(
            len(it) >= 3 + n_arrays + (code == STAGE) and type(it[1]) is int and it[2] == shape
            and all(type(b) is bytes and len(b) == size for b in it[3 : 3 + n_arrays])
            and (code != STAGE or type(it[7]) is bool)
            for it in group
        )
        if not regular or size * len(group) * n_arrays > MAX_BIN_LEN:
            continue
        # One copy for the whole frame: the per-tick arrays are views of it, not of the payload.
        blob = b"".join(b for it in group for b in it[3 : 3 + n_arrays])
        arrays = np.frombuffer(blob, dtype).reshape(len(group), n_arrays, *shape)
        for i, it in enumerate(group):
            d = details.setdefault(it[1], Detail())
            if code == EXPERTS:
                d.experts = arrays[i, 0]
            else:
                d.stages = StageEvent(it[1], *arrays[i], modelled=it[7])
        taken = {id(it) for it in group}
        items[:] = [it for it in items if id(it) not in taken]
    return details


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
        self._frame_t = np.maximum.accumulate(np.where(entries[:, 3] > 0, entries[:, 5], -1)) if len(entries) else entries[:, 5]
        self._next = 0
        self._focus = -1
        self._lock = threading.Lock()
        self.done = len(entries) == 0

    def layout(self) -> np.ndarray:
        return self._entries

    def _frame_of(self, tick: int) -> int | None:
        offset = self._index.frame_for_tick(tick)
        if offset is None:
            return None
        return int(np.searchsorted(self._entries[:, 0], offset))

    def focus(self, tick: int) -> None:
        frame = self._frame_of(tick)
        if frame is not None:
            with self._lock:
                self._focus = frame

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

    def poll(self) -> list[FrameData]:
        out: list[FrameData] = []
        deadline = time.monotonic() + POLL_BUDGET_S
        while time.monotonic() < deadline:
            frame = self._next_frame()
            if frame is None:
                self.done = True
                break
            self._read[frame] = True
            data = self._decode(self._loader, frame, detail=False)
            if data is not None:
                out.append(data)
        return out

    def fetch(self, tick: int) -> FrameData | None:
        frame = self._frame_of(tick)
        if frame is None:
            return None
        self._read[frame] = True  # the worker need not read it again
        return self._decode(self._seeker, frame, detail=True)

    def detail(self, tick: int) -> tuple[np.ndarray | None, StageEvent | None] | None:
        return tick_detail(self.fetch(tick), tick)

    def _decode(self, reader: tracer.TraceReader, frame: int, *, detail: bool) -> FrameData | None:
        offset = int(self._entries[frame, 0])
        payload = reader.frame_payload(offset)
        if payload is None:
            return None
        try:
            return decode_frame(payload, self.header.t0_mono_ns, frame, detail=detail)
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

    def poll(self) -> list[FrameData]:
        events = self._tail.poll()
        if self.header is None:
            self.header = self._tail.header
        if not events:
            return []
        self._last_growth = time.monotonic()
        return [frame_from_events(events, self.header.t0_mono_ns if self.header else 0)]

    def focus(self, tick: int) -> None:
        pass  # everything appended is read anyway

    def fetch(self, tick: int) -> FrameData | None:
        """Detail of an older tick, read through the frames the tail has indexed so far.

        Only the detail is returned: the tick rows and requests were appended when first read.
        """
        offset = self._tail.index().frame_for_tick(tick)
        if offset is None or self.header is None:
            return None
        try:
            if self._file is None:
                self._file = open(self.path, "rb")
            frame = read_frame(self._file, offset, os.fstat(self._file.fileno()).st_size)
            if frame is None:
                return None
            data = decode_frame(frame.payload, self.header.t0_mono_ns, detail=True)
        except (OSError, TraceFormatError):
            return None  # truncated or replaced under us: the tail reports that
        return data.detail_only()

    def detail(self, tick: int) -> tuple[np.ndarray | None, StageEvent | None] | None:
        return tick_detail(self.fetch(tick), tick)

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


def open_source(path: str | os.PathLike[str], mode: str) -> Source:
    """The source for `mode` ("live" or "replay") on `path`."""
    if mode == "live":
        return LiveSource(path)
    if mode == "replay":
        return ReplaySource(path)
    raise ValueError(f"unknown dashboard mode {mode!r} (live or replay)")
