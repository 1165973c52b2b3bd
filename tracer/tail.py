"""Following a trace while it is written: incremental polls, and an async iterator on top."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import BinaryIO

import numpy as np

from tracer.codec import decode_events
from tracer.errors import TraceFormatError
from tracer.events import Event, SessionHeader
from tracer.framing import FrameScanner, Kind
from tracer.index import ENTRY_FIELDS, FrameStats, TraceIndex
from tracer.reader import decode_stats, read_preamble


class TraceTail:
    """Reads what a writer has appended since the last `poll()`.

    `state` is "waiting" (no file, or no complete header yet), "ok", "truncated" (the file shrank,
    or was rewritten in place from the start) or "replaced" (the path now names another file, or
    none). Truncated and replaced are final: this tail stops there, and following the new file
    takes a new TraceTail. `finished` turns True once the writer's footer is read (a clean close).
    A frame still being written is left for a later poll. `poll` raises TraceFormatError when the
    file cannot be a trace. `index()` covers every events frame read so far, so a follower can
    seek back into the growing file without waiting for the writer's own index.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self.header: SessionHeader | None = None
        self.state = "waiting"
        self.finished = False
        self.problems: list[str] = []
        self.dropped: dict[str, int] = {}
        self._f: BinaryIO | None = None
        self._ident: tuple[int, int] | None = None
        self._preamble = b""  # magic + header frame as first read: a rewrite in place changes it
        self._offset = 0
        self._entries: list[tuple[int, ...]] = []

    def index(self) -> TraceIndex:
        """The events frames read so far, as an index (columns as the file's own)."""
        return TraceIndex(np.array(self._entries, dtype=np.int64).reshape(-1, len(ENTRY_FIELDS)))

    def poll(self) -> list[Event]:
        if self.state in ("truncated", "replaced"):
            return []
        f = self._open()
        if f is None:
            return []
        size = os.fstat(f.fileno()).st_size
        if self.header is None:
            f.seek(0)
            header, start = read_preamble(f, self.path, size)
            if header is None:
                return []
            f.seek(0)
            self.header, self._offset, self._preamble = header, start, f.read(start)
            self.state = "ok"
        elif size < self._offset or os.pread(f.fileno(), len(self._preamble), 0) != self._preamble:
            self._stop("truncated")
            return []
        scanner = FrameScanner(f, self._offset, size, final=False)
        out: list[Event] = []
        for frame in scanner:
            if frame.kind == Kind.EVENTS:
                try:
                    events = decode_events(frame.payload)
                except TraceFormatError as exc:
                    self.problems.append(f"undecodable events frame at byte {frame.offset} ({exc.what}): skipped")
                    continue
                stats = FrameStats()
                for ev in events:
                    stats.add(ev)
                self._entries.append(stats.entry(frame.offset))
                out.extend(events)
            elif frame.kind == Kind.STATS:
                try:
                    self.dropped = decode_stats(frame.payload)
                except TraceFormatError:
                    self.problems.append(f"undecodable stats frame at byte {frame.offset}: skipped")
            elif frame.kind == Kind.FOOTER:
                self.finished = True
        self._offset = scanner.offset
        self.problems.extend(scanner.problems)
        return out

    def _open(self) -> BinaryIO | None:
        """Open the file on first sight; notice when the path stops naming it. The open file, or None
        when there is nothing to read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._f is not None:
                self._stop("replaced")
            return None
        f = self._f
        if f is None:
            f = self._f = open(self.path, "rb")
            fst = os.fstat(f.fileno())
            self._ident = (fst.st_dev, fst.st_ino)
        if (st.st_dev, st.st_ino) != self._ident:
            self._stop("replaced")
            return None
        return f

    def _stop(self, state: str) -> None:
        self.state = state
        self.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> TraceTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def follow(path: str | os.PathLike[str], poll_s: float = 0.05) -> AsyncIterator[Event]:
    """Yield events as they are appended to `path`, waiting for it to appear.

    Ends when the writer closes the trace, or the file is truncated or replaced. Polls run in a
    worker thread so a large first read does not stall the event loop.
    """
    with TraceTail(path) as tail:
        while True:
            for ev in await asyncio.to_thread(tail.poll):
                yield ev
            if tail.finished or tail.state in ("truncated", "replaced"):
                return
            await asyncio.sleep(poll_s)
