"""TraceWriter: the hot loop enqueues, a background thread encodes and appends frames."""

from __future__ import annotations

import atexit
import contextlib
import os
import struct
import threading
import time
import weakref
import zlib
from collections import deque
from dataclasses import dataclass, field

from tracer.codec import KIND_NAMES, decode_header, encode_event, encode_header, new_packer, packb
from tracer.errors import TraceFormatError, TraceWriteError
from tracer.events import KINDS, Event, MarkEvent, RequestEvent, SessionHeader, TickEvent
from tracer.framing import MAGIC, Kind, encode_footer, encode_frame
from tracer.index import INDEX_EVERY, FrameStats, encode_index
from tracer.limits import MAX_BIN_LEN, MAX_EVENTS_PER_FRAME, TARGET_FRAME_BYTES

# Past this many events in one drain (~80,000 events/s), events frames are written uncompressed.
COMPRESS_MAX_EVENTS = 4 * MAX_EVENTS_PER_FRAME
# Frames queued for one os.write are written once they reach this many bytes (or the drain ends).
_WRITE_CHUNK = 4 << 20
# Room kept beside the trace for its ending should the disk fill: the last index (at most INDEX_EVERY
# entries), a mark and a compressed `failed` finish for each request in flight, with a margin.
RESERVE_BYTES = 32 << 10


class TraceWriter:
    """A Recorder that appends events to a trace file from a background thread.

    `emit` only appends to a deque (well under a microsecond); the writer thread wakes at least
    twice per `flush_interval_s`, encodes what is queued into frames (events frames zlib-compressed,
    unless `compress=False` or the writer is behind) and appends whole frames, so a process killed
    at any moment leaves every earlier frame intact. `close()` writes the rest, the final index and
    the footer, and fsyncs.

    Queue-full policy, by each kind's `priority` in tracer.events.KINDS. Stage and experts events
    (`bulk`: the bulkiest, least essential) are refused once `queue_max` events wait; tick, batch
    and mark events (`core`) once a quarter more wait; request events (`kept`) are never refused,
    because a request that vanishes from the trace would break every latency figure. A refused
    event first blocks for up to `block_s` waiting for room; if none appears it is dropped and
    counted in `dropped` / `dropped_by_kind`, and further refusals drop at once until the writer
    catches up. The counts are written into the trace as a stats frame.

    A write that fails (a full disk, say) stops the writer: the file is cut back to the last drain
    written whole and ended there, in room a reserve file beside it (`.NAME.reserve`, RESERVE_BYTES,
    removed at close) kept for this (see `_cut_short`); `error` says so at once, so the run can
    stop, and `close` raises it. What the file holds is `holds`.

    `emit` after `close` raises ValueError, as writing to a closed file does.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        header: SessionHeader,
        *,
        flush_interval_s: float = 0.1,
        queue_max: int = 65536,
        block_s: float = 0.02,
        compress: bool = True,
    ):
        if flush_interval_s <= 0 or queue_max < 1:
            raise ValueError("flush_interval_s and queue_max must be positive")
        self.path = os.fspath(path)
        self.header = header
        self.dropped = 0
        self.dropped_by_kind: dict[str, int] = {}
        self._interval = flush_interval_s
        self._block_s = block_s
        # Past these queue lengths an event of that kind is refused (its priority in tracer.events.KINDS);
        # `kept` kinds (request events) have no limit.
        limit = {"bulk": queue_max, "core": queue_max + queue_max // 4}
        self._limits = {kind.cls: limit[kind.priority] for kind in KINDS if kind.priority != "kept"}
        # emit's fast path appends while the queue is below this; -1 after close sends every
        # emit to the slow path, which raises.
        self._fast_below = max(1, queue_max // 2)
        self._q: deque[Event] = deque()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._flush_asked = 0
        self._flush_done = 0
        self._congested = False
        self._closing = False
        self._closed = False
        self._error: BaseException | None = None
        self._drop_lock = threading.Lock()
        self._drops_written = 0
        self._packer = new_packer()
        self._compress = compress
        self._frames_since_index: list[tuple[int, ...]] = []
        self._last_index = -1
        self._offset = 0  # where the next frame will start, counting frames not yet written
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._written = 0  # bytes in the file
        header_bytes = encode_header(header)  # fails here, in the caller, if config is not storable
        try:
            decode_header(header_bytes)  # and refuse one no reader would accept (int keys, huge lists)
        except TraceFormatError as exc:
            raise ValueError(f"session header cannot be stored: {exc.what}") from None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644)
        try:
            self._write(MAGIC + encode_frame(Kind.HEADER, header_bytes))
            self._flush_pending()  # a follower can name the session as soon as the file exists
        except BaseException:
            os.close(self._fd)
            raise
        self._kept = _Kept(self._offset)
        self._reserve = _reserve_room(self.path)
        self._thread = threading.Thread(target=self._run, name="tickscope-trace-writer", daemon=True)
        self._thread.start()
        # The thread is a daemon so a forgotten writer cannot hang interpreter exit; this closes
        # it properly at exit instead.
        self._atexit = _close_at_exit(weakref.ref(self))
        atexit.register(self._atexit)

    def emit(self, event: Event) -> None:
        q = self._q
        if len(q) < self._fast_below:
            q.append(event)
            return
        self._emit_slow(event)

    def _emit_slow(self, event: Event) -> None:
        if self._closing:
            raise ValueError(f"emit on a closed TraceWriter ({self.path})")
        self._wake.set()
        if not self._thread.is_alive():  # the writer failed; close() will say why
            self._count_drop(KIND_NAMES.get(type(event), "invalid"))
            return
        q = self._q
        limit = self._limits.get(type(event))
        if limit is None or len(q) < limit:
            q.append(event)
            return
        if not self._congested:
            deadline = time.monotonic() + self._block_s
            while len(q) >= limit and time.monotonic() < deadline and self._thread.is_alive():
                time.sleep(0.0005)
            if len(q) < limit:
                q.append(event)
                return
            self._congested = True  # until the writer drains, drop without waiting again
        self._count_drop(KIND_NAMES[type(event)])

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything emitted so far is written to the file (not fsynced).

        Returns False if the timeout passed first or the writer thread has stopped.
        """
        with self._cond:
            self._flush_asked += 1
            target = self._flush_asked
            self._wake.set()
            return (
                self._cond.wait_for(lambda: self._flush_done >= target or not self._thread.is_alive(), timeout)
                and self._flush_done >= target
            )

    @property
    def error(self) -> BaseException | None:
        """Why the writer stopped writing, as soon as it has: a TraceWriteError when the file refused
        a write (it is still being ended, until `close` returns)."""
        return self._error

    @property
    def holds(self) -> str:
        """What the file holds for certain, in words: "ticks 0–257 and 88 requests"."""
        return str(self._kept)

    def close(self) -> None:
        """Write what is queued, the index and the footer; fsync; close. Safe to call twice.

        Raises the writer thread's error: a TraceWriteError when the file refused a write.
        """
        if self._closed:
            return
        self._closing = True
        self._fast_below = -1
        self._wake.set()
        self._thread.join()
        self._closed = True
        atexit.unregister(self._atexit)
        try:
            if self._error is None:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
            _unlink(self._reserve)
        if isinstance(self._error, TraceWriteError):
            raise self._error
        if self._error is not None:
            raise OSError(f"writing trace {self.path} failed: {self._error}") from self._error

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self._interval / 2)
                self._wake.clear()
                closing = self._closing
                asked = self._flush_asked
                self._drain()
                with self._cond:
                    self._flush_done = asked
                    self._cond.notify_all()
                if closing:
                    break
            self._drain()  # anything that slipped past the fast path's check during close
            self._write_index()
            self._write(encode_footer(self._last_index))
            self._flush_pending()
        except OSError as exc:
            self._cut_short(exc)
        except BaseException as exc:  # kept for close() to raise; the hot loop must not see it
            self._error = exc
        finally:
            with self._cond:
                self._cond.notify_all()

    def _drain(self) -> None:
        q = self._q
        batch = [q.popleft() for _ in range(len(q))]
        self._congested = False
        self._append(batch)

    def _append(self, batch: list[Event]) -> None:
        """Encode `batch` into frames and write them; once written, the file holds them for certain."""
        # Each compression hands the interpreter lock away, and getting it back from a busy thread
        # can take a whole switch interval (5 ms): a writer that is behind writes plain frames.
        compress = self._compress and len(batch) <= COMPRESS_MAX_EVENTS
        parts: list[bytes] = []
        size = 0
        stats = FrameStats()
        noted: list[TickEvent | RequestEvent] = []  # what `_kept` counts
        pack = self._packer.pack
        for ev in batch:
            try:
                b = pack(encode_event(ev))
            except Exception:  # not an event, or a field msgpack cannot hold: count, don't die
                self._count_drop("invalid")
                continue
            if len(b) > MAX_BIN_LEN:  # readers refuse it; better to count it here
                self._count_drop("oversize")
                continue
            if parts and (len(parts) >= MAX_EVENTS_PER_FRAME or size + len(b) > TARGET_FRAME_BYTES):
                self._write_events(parts, stats, compress)
                parts, size, stats = [], 0, FrameStats()
            parts.append(b)
            size += len(b)
            stats.add(ev)
            if isinstance(ev, (RequestEvent, TickEvent)):
                noted.append(ev)
        if parts:
            self._write_events(parts, stats, compress)
        if self.dropped != self._drops_written:
            self._drops_written = self.dropped
            stats_payload = packb({"dropped": dict(self.dropped_by_kind), "t_ns": time.monotonic_ns()})
            self._write(encode_frame(Kind.STATS, stats_payload))
        self._flush_pending()
        self._kept.note(noted, self._offset, self._last_index, self._frames_since_index)

    def _count_drop(self, kind: str) -> None:
        with self._drop_lock:
            self.dropped += 1
            self.dropped_by_kind[kind] = self.dropped_by_kind.get(kind, 0) + 1

    def _write_events(self, parts: list[bytes], stats: FrameStats, compress: bool) -> None:
        # A msgpack array header followed by the already-packed items is one valid array.
        n = len(parts)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        self._frames_since_index.append(stats.entry(self._offset))
        payload = head + b"".join(parts)
        if compress:  # level 1: 3-10x smaller (expert counts are small, mostly-zero int32s), and fast
            self._write(encode_frame(Kind.EVENTS_ZLIB, zlib.compress(payload, 1)))
        else:
            self._write(encode_frame(Kind.EVENTS, payload))
        if len(self._frames_since_index) >= INDEX_EVERY:
            self._write_index()

    def _write_index(self) -> None:
        offset = self._offset
        self._write(encode_frame(Kind.INDEX, encode_index(self._last_index, self._frames_since_index)))
        self._last_index = offset
        self._frames_since_index = []

    def _write(self, data: bytes) -> None:
        """Queue whole frames; `_flush_pending` writes them.

        Each os.write releases the GIL, and a hot loop that holds it makes the writer wait a whole
        switch interval (5 ms) to get it back: one write per drain instead of one per frame keeps
        the writer ahead. Frames are still appended whole, so a crash leaves at most one partial
        frame, at the end."""
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._offset += len(data)
        if self._pending_bytes >= _WRITE_CHUNK:
            self._flush_pending()

    def _flush_pending(self) -> None:
        if not self._pending:
            return
        view = memoryview(b"".join(self._pending))
        self._pending.clear()
        self._pending_bytes = 0
        while view:
            n = os.write(self._fd, view)
            self._written += n
            view = view[n:]

    def _cut_short(self, exc: OSError) -> None:
        """The file refused a write. Say so at once (`error`), then cut the file back to the last
        drain written whole and end it there, in the room the reserve file gave back: a mark saying
        what happened, a `failed` finish for each request whose end the file does not hold, the index
        and the footer, so that it reads as a closed trace in which every request ended. Should even
        that not fit, it ends at the cut: whole frames, those requests without an end."""
        kept = self._kept
        error = TraceWriteError(self.path, exc, self._written, str(kept))
        self._error = error
        _unlink(self._reserve)
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, kept.offset)
            os.lseek(self._fd, kept.offset, os.SEEK_SET)
            self._written = self._offset = kept.offset
            self._pending, self._pending_bytes = [], 0
            self._last_index, self._frames_since_index = kept.last_index, list(kept.entries)
            now = time.monotonic_ns()
            ending: list[Event] = [
                MarkEvent(
                    now, kept.last_tick, f"{error.what} at byte {error.at:,}: the rest of the run was not recorded"
                )
            ]
            ending += [
                RequestEvent(rid, "finish", now, status="failed", reason=f"its end was not recorded ({error.what})")
                for rid in sorted(kept.open)
            ]
            self._append(ending)
            self._write_index()
            self._write(encode_footer(self._last_index))
            self._flush_pending()
            os.fsync(self._fd)
            return
        with contextlib.suppress(OSError):  # the ending did not fit: at least no torn frame
            os.ftruncate(self._fd, kept.offset)


@dataclass
class _Kept:
    """What the file holds for certain: every frame before `offset`, written by drains that completed,
    and the index state there (the last index frame, the entries written since)."""

    offset: int
    last_index: int = -1
    entries: list[tuple[int, ...]] = field(default_factory=list)
    first_tick: int = -1
    last_tick: int = -1
    requests: int = 0  # that arrived
    open: set[int] = field(default_factory=set)  # arrived, and not finished

    def note(
        self, events: list[TickEvent | RequestEvent], offset: int, last_index: int, entries: list[tuple[int, ...]]
    ) -> None:
        """A drain of these tick and request events was written whole, up to `offset`."""
        for ev in events:
            if isinstance(ev, TickEvent):
                if self.first_tick < 0:
                    self.first_tick = ev.tick
                self.last_tick = ev.tick
            elif ev.phase == "arrive":
                self.requests += 1
                self.open.add(ev.request)
            elif ev.phase == "finish":
                self.open.discard(ev.request)
        self.offset, self.last_index, self.entries = offset, last_index, list(entries)

    def __str__(self) -> str:
        requests = f"{self.requests:,} request{'' if self.requests == 1 else 's'}"
        if self.first_tick < 0:
            return requests
        ticks = (
            f"tick {self.first_tick}"
            if self.first_tick == self.last_tick
            else f"ticks {self.first_tick}–{self.last_tick}"
        )
        return f"{ticks} and {requests}"


def _reserve_room(path: str) -> str | None:
    """A file of RESERVE_BYTES beside the trace (same filesystem), or None if even that does not fit."""
    folder, name = os.path.split(path)
    reserve = os.path.join(folder, f".{name}.reserve")
    try:
        with open(reserve, "wb") as f:
            f.write(bytes(RESERVE_BYTES))
            f.flush()
            os.fsync(f.fileno())  # blocks allocated now, not when the disk is already full
    except OSError:
        _unlink(reserve)
        return None
    return reserve


def _unlink(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


class _close_at_exit:
    """Closes a writer still open at interpreter exit, without keeping it alive until then."""

    def __init__(self, ref: weakref.ref[TraceWriter]):
        self.ref = ref

    def __call__(self) -> None:
        writer = self.ref()
        if writer is not None:
            writer.close()
