"""Reading a finished (or crashed) trace: all events in order, or from tick N through the index."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

from tracer.codec import decode_events, decode_header, unpackb
from tracer.errors import TraceFormatError
from tracer.events import BatchEvent, Event, ExpertsEvent, SessionHeader, StageEvent, TickEvent
from tracer.framing import MAGIC, Frame, FrameScanner, Kind, read_frame
from tracer.index import TraceIndex, read_index, rebuild_index

T = TypeVar("T")


def read_preamble(f: BinaryIO, path: str, size: int) -> tuple[SessionHeader | None, int]:
    """The session header and where the frames after it start.

    Returns (None, 0) while a file being written is still too short to hold them; raises
    TraceFormatError when it cannot be a trace.
    """
    magic = f.read(len(MAGIC))
    if magic != MAGIC[: len(magic)]:
        raise TraceFormatError("not a tickscope trace (bad magic)", path, 0)
    if len(magic) < len(MAGIC):
        return None, 0
    frame = FrameScanner(f, len(MAGIC), size, final=False).frame_at(len(MAGIC))
    if not isinstance(frame, Frame):
        reason, could_complete = frame
        if could_complete:
            raise TraceFormatError(f"session header unreadable ({reason})", path, len(MAGIC))
        return None, 0
    if frame.kind != Kind.HEADER:
        raise TraceFormatError("first frame is not the session header", path, len(MAGIC))
    try:
        return decode_header(frame.payload), frame.end
    except TraceFormatError as exc:
        raise TraceFormatError(exc.what, path, len(MAGIC)) from None


def decode_stats(payload: bytes) -> dict[str, int]:
    """Drop counts from a stats frame; empty if it holds none we understand."""
    obj = unpackb(payload, "stats frame")
    dropped = obj.get("dropped") if type(obj) is dict else None
    if type(dropped) is not dict:
        return {}
    return {k: v for k, v in dropped.items() if type(k) is str and type(v) is int}


class TraceReader:
    """An open trace. Use `open_trace(path)`.

    `problems` lists what reading has skipped so far (torn tail, corrupt frames with offsets);
    `dropped` the writer's drop counts by event kind, as of the last stats frame read.
    Arrays in decoded events are read-only views of the file's bytes.
    """

    def __init__(self, path: str | os.PathLike[str], *, progress: bool | None = None):
        self.path = os.fspath(path)
        st = os.stat(self.path)
        if not stat.S_ISREG(st.st_mode):
            raise TraceFormatError("not a regular file", self.path)
        self._f = open(self.path, "rb")
        try:
            self._end = os.fstat(self._f.fileno()).st_size
            header, start = read_preamble(self._f, self.path, self._end)
            if header is None:
                raise TraceFormatError("truncated before the end of the session header", self.path, 0)
        except BaseException:
            self._f.close()
            raise
        self.header: SessionHeader = header
        self._start = start
        self._progress = progress
        self._index: TraceIndex | None = None
        self.problems: list[str] = []
        self.dropped: dict[str, int] = {}

    @property
    def index(self) -> TraceIndex:
        """The file's own index, or one rebuilt by scanning when it is missing or damaged."""
        if self._index is None:
            self._index = read_index(self._f, self._start, self._end)
            if self._index is None:
                self._index = rebuild_index(self._f, self._start, self._end, progress=self._progress)
                for problem in self._index.problems:
                    self._report(problem)
        return self._index

    @property
    def closed_cleanly(self) -> bool:
        """Whether the writer closed the file: it ends with a footer whose index chain is intact."""
        return read_index(self._f, self._start, self._end) is not None

    @property
    def tick_count(self) -> int:
        return self.index.tick_count

    def events(self) -> Iterator[Event]:
        """Every event in file order, skipping (and reporting) what is damaged."""
        return self._events_from(self._start)

    def events_from_tick(self, tick: int) -> Iterator[Event]:
        """Events from the first frame holding `tick` to the end, without reading what precedes it.

        Tick, experts, stage and batch events of earlier ticks in that frame are left out; request and
        mark events are kept. Empty when the trace has no such tick.
        """
        offset = self.index.frame_for_tick(tick)
        if offset is None:
            return iter(())
        return (ev for ev in self._events_from(offset) if not (type(ev) in _TICKED and ev.tick < tick))

    def events_for_ticks(self, first: int, last: int) -> Iterator[Event]:
        """Events of ticks `first`..`last` (inclusive), as `events_from_tick(first)`, stopping at the
        first tick, experts, stage or batch event of a later tick."""
        for ev in self.events_from_tick(first):
            if type(ev) in _TICKED and ev.tick > last:
                return
            yield ev

    def frame_payload(self, offset: int) -> bytes | None:
        """The payload of the events frame at `offset` (an index entry's), or None, reported, when
        it is damaged. For readers that decode frames their own way, a few at a time."""
        frame = read_frame(self._f, offset, self._end)
        if frame is None or frame.kind != Kind.EVENTS:
            self._report(f"corrupt frame at byte {offset}: skipped")
            return None
        return frame.payload

    def tick_at(self, t_s: float) -> int | None:
        """The last tick that started at or before `t_s` seconds into the session, if any."""
        t_ns = self.header.t0_mono_ns + round(t_s * 1e9)
        offset = self.index.frame_for_time(t_ns)
        if offset is None:
            return None
        best = None
        for ev in self._events_from(offset):
            if type(ev) is TickEvent:
                if ev.start_ns > t_ns:
                    break
                best = ev.tick
        return best

    def decoded_frames(self, decode: Callable[[bytes], T]) -> Iterator[T]:
        """`decode` of every events frame's payload in file order, for readers that build their own
        columns rather than event objects; damage is skipped and reported as by `events()`, and so
        is a frame `decode` rejects with TraceFormatError."""
        return self._decoded_from(self._start, decode)

    def _events_from(self, offset: int) -> Iterator[Event]:
        for events in self._decoded_from(offset, decode_events):
            yield from events

    def _decoded_from(self, offset: int, decode: Callable[[bytes], T]) -> Iterator[T]:
        scanner = FrameScanner(self._f, offset, self._end)
        try:
            for frame in scanner:
                if frame.kind == Kind.EVENTS:
                    try:
                        decoded = decode(frame.payload)
                    except TraceFormatError as exc:
                        self._report(f"undecodable events frame at byte {frame.offset} ({exc.what}): skipped")
                        continue
                    yield decoded
                elif frame.kind == Kind.STATS:
                    try:
                        self.dropped = decode_stats(frame.payload)
                    except TraceFormatError:
                        self._report(f"undecodable stats frame at byte {frame.offset}: skipped")
        finally:
            for p in scanner.problems:
                self._report(p)

    def _report(self, problem: str) -> None:
        if problem not in self.problems:
            self.problems.append(problem)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_TICKED = (TickEvent, ExpertsEvent, StageEvent, BatchEvent)


def open_trace(path: str | os.PathLike[str], *, progress: bool | None = None) -> TraceReader:
    """Open a trace for reading. TraceFormatError if it is not one; FileNotFoundError if absent.

    `progress`: show a progress bar if the index has to be rebuilt (None: only for big files).
    """
    return TraceReader(path, progress=progress)
