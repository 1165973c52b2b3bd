"""The seek index: which frame holds tick N, and which tick was running at time T.

The writer records one entry per events frame and writes them out as an index frame every
`INDEX_EVERY` events frames and at close; each index frame points back to the previous one, and
the footer of a cleanly closed file points at the last. A reader follows that chain, so opening a
large trace and seeking reads a handful of small frames. A file without a footer (killed writer)
or with a broken chain gets its index rebuilt by scanning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import astuple, dataclass, field, fields
from enum import IntEnum
from typing import BinaryIO

import numpy as np
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from tracer.codec import decode_events, packb, unpackb
from tracer.errors import TraceFormatError
from tracer.events import KINDS, Event, TickEvent
from tracer.framing import FOOTER_PAYLOAD, FOOTER_SIZE, FrameScanner, Kind, read_frame
from tracer.limits import MAX_BIN_LEN

INDEX_EVERY = 256


class Entry(IntEnum):
    """The columns of an index entry, in order: `entries[:, Entry.N_TICKS]`."""

    OFFSET = 0  # file offset of the events frame
    MIN_TICK = 1  # smallest `tick` of its ticked events (see EventKind.ticked), -1 if none
    MAX_TICK = 2  # largest such `tick`, -1 if none
    N_TICKS = 3  # tick events in it
    MIN_T_NS = 4  # smallest tick start_ns, -1 if no tick events
    MAX_T_NS = 5  # largest tick start_ns, -1 if no tick events
    N_EVENTS = 6  # events in it


ENTRY_FIELDS = tuple(column.name.lower() for column in Entry)
_ENTRY = np.dtype("<i8")
_NCOL = len(ENTRY_FIELDS)
PROGRESS_MIN_BYTES = 32 << 20  # rebuilding smaller files is too quick to need a progress bar


_TICKED = frozenset(kind.cls for kind in KINDS if kind.ticked and kind.cls is not TickEvent)


@dataclass(slots=True)
class FrameStats:
    """What an events frame holds, gathered while it is encoded or decoded: its entry's columns
    after the offset, as ENTRY_FIELDS names them."""

    min_tick: int = -1
    max_tick: int = -1
    n_ticks: int = 0
    min_t_ns: int = -1
    max_t_ns: int = -1
    n_events: int = 0

    def add(self, ev: Event) -> None:
        self.n_events += 1
        if type(ev) is TickEvent:
            self.n_ticks += 1
            if self.min_t_ns < 0 or ev.start_ns < self.min_t_ns:
                self.min_t_ns = ev.start_ns
            self.max_t_ns = max(self.max_t_ns, ev.start_ns)
        elif type(ev) not in _TICKED:
            return
        if self.min_tick < 0 or ev.tick < self.min_tick:
            self.min_tick = ev.tick
        self.max_tick = max(self.max_tick, ev.tick)

    def entry(self, offset: int) -> tuple[int, ...]:
        return (offset, *astuple(self))


if tuple(f.name for f in fields(FrameStats)) != ENTRY_FIELDS[1:]:
    raise TypeError("FrameStats' fields are not the index entry's columns")


def encode_index(prev: int, entries: list[tuple[int, ...]]) -> bytes:
    arr = np.array(entries, dtype=_ENTRY).reshape(-1, _NCOL)
    return packb({"prev": prev, "entries": arr.tobytes()})


def decode_index(payload: bytes) -> tuple[int, np.ndarray]:
    obj = unpackb(payload, "index frame")
    if type(obj) is not dict:
        raise TraceFormatError("index frame is not a map")
    prev, raw = obj.get("prev"), obj.get("entries")
    row = _ENTRY.itemsize * _NCOL
    if type(prev) is not int or type(raw) is not bytes or len(raw) % row or len(raw) > MAX_BIN_LEN:
        raise TraceFormatError("index frame is malformed")
    return prev, np.frombuffer(raw, _ENTRY).reshape(-1, _NCOL)


@dataclass
class TraceIndex:
    """Entries sorted by frame offset; columns as ENTRY_FIELDS."""

    entries: np.ndarray = field(default_factory=lambda: np.zeros((0, _NCOL), dtype=np.int64))
    rebuilt: bool = False  # True when the file's own index was missing or broken
    problems: list[str] = field(default_factory=list)  # what the rebuilding scan skipped

    @property
    def tick_count(self) -> int:
        return int(self.entries[:, Entry.N_TICKS].sum())

    def frame_for_tick(self, tick: int) -> int | None:
        """Offset of the first events frame holding tick `tick`, or None if no frame does."""
        e = self.entries
        min_tick = e[:, Entry.MIN_TICK]
        hit = np.flatnonzero((e[:, Entry.MAX_TICK] >= tick) & (min_tick >= 0) & (min_tick <= tick))
        return int(e[hit[0], Entry.OFFSET]) if len(hit) else None

    def frame_for_time(self, t_ns: int) -> int | None:
        """Offset of the last events frame whose first tick started at or before `t_ns`."""
        e = self.entries
        hit = np.flatnonzero((e[:, Entry.N_TICKS] > 0) & (e[:, Entry.MIN_T_NS] <= t_ns))
        return int(e[hit[-1], Entry.OFFSET]) if len(hit) else None


def read_index(f: BinaryIO, start: int, end: int) -> TraceIndex | None:
    """The index a cleanly closed file carries, or None when it has none or it is damaged."""
    if end - start < FOOTER_SIZE:
        return None
    footer = read_frame(f, end - FOOTER_SIZE, end)
    if footer is None or footer.kind != Kind.FOOTER or len(footer.payload) != FOOTER_PAYLOAD.size:
        return None
    (offset,) = FOOTER_PAYLOAD.unpack(footer.payload)
    chunks = []
    # Each index frame points strictly backwards, so this walk ends.
    limit = end - FOOTER_SIZE
    while offset >= 0:
        if not start <= offset < limit:
            return None
        frame = read_frame(f, offset, limit)
        if frame is None or frame.kind != Kind.INDEX:
            return None
        try:
            prev, entries = decode_index(frame.payload)
        except TraceFormatError:
            return None
        chunks.append(entries)
        limit, offset = offset, prev
    entries = np.concatenate(chunks[::-1]) if chunks else np.zeros((0, _NCOL), dtype=np.int64)
    if len(entries) and (entries[:, Entry.OFFSET].min() < start or entries[:, Entry.OFFSET].max() >= end):
        return None
    return TraceIndex(entries.astype(np.int64))


def rebuild_index(f: BinaryIO, start: int, end: int, *, progress: bool | None = None) -> TraceIndex:
    """Scan the file: take entries from the index frames found, decode only what they don't cover.

    `progress` None shows a bar for files over PROGRESS_MIN_BYTES; True or False forces it.
    """
    show = (end - start) >= PROGRESS_MIN_BYTES if progress is None else progress
    scanner = FrameScanner(f, start, end)
    indexed: list[np.ndarray] = []
    pending: list[int] = []  # offsets of events frames after the last index frame seen

    def scan(advance: Callable[[], object] = lambda: None) -> None:
        for frame in scanner:
            if frame.kind == Kind.EVENTS:
                pending.append(frame.offset)
            elif frame.kind == Kind.INDEX:
                try:
                    _prev, entries = decode_index(frame.payload)
                except TraceFormatError:
                    continue
                indexed.append(entries)
                covered = set(entries[:, Entry.OFFSET].tolist())
                pending[:] = [p for p in pending if p not in covered]
            advance()

    if show:
        with Progress(
            TextColumn("rebuilding trace index"), BarColumn(), DownloadColumn(), TimeRemainingColumn(), transient=True
        ) as bar:
            task = bar.add_task("index", total=end - start)
            scan(lambda: bar.update(task, completed=scanner.offset - start))
    else:
        scan()
    rows = list(indexed)
    decoded = []
    for offset in pending:
        frame = read_frame(f, offset, end)
        if frame is None:  # the file changed under us since the scan
            continue
        stats = FrameStats()
        try:
            for ev in decode_events(frame.payload):
                stats.add(ev)
        except TraceFormatError:
            continue
        decoded.append(stats.entry(frame.offset))
    if decoded:
        rows.append(np.array(decoded, dtype=np.int64).reshape(-1, _NCOL))
    entries = np.concatenate(rows) if rows else np.zeros((0, _NCOL), dtype=np.int64)
    entries = entries[np.argsort(entries[:, Entry.OFFSET], kind="stable")].astype(np.int64)
    return TraceIndex(entries, rebuilt=True, problems=scanner.problems)
