"""The byte layer: file magic, checksummed frames, and a scanner that survives damage.

A trace is `MAGIC` followed by frames. Each frame is a 16-byte header (sync word, kind, flags,
reserved, payload length, CRC-32) and a msgpack payload. The writer emits one `write()` per frame,
so a crash leaves at most one partial frame, at the end. The sync word lets a reader find the next
good frame after a corrupt one; the CRC (which also covers kind, flags and length) catches the
bit flips that msgpack alone would decode silently into wrong numbers.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import BinaryIO

from tracer.limits import MAX_FRAME_BYTES

MAGIC = b"\x89TICK\r\n\x1a"  # PNG-style: catches text-mode and 7-bit mangling
SYNC = b"\xf1TKS"
FRAME_HEADER = struct.Struct("<4sBBHII")  # sync, kind, flags, reserved, length, crc32
HEADER_SIZE = FRAME_HEADER.size
FOOTER_PAYLOAD = struct.Struct("<Q")  # offset of the last index frame
FOOTER_SIZE = HEADER_SIZE + FOOTER_PAYLOAD.size
_CHUNK = 1 << 20
# Payload bytes a resynchronisation may check behind false frame starts before it gives up: a
# hostile file of fake frame headers would otherwise cost a full-length CRC at every one of them.
RESYNC_BUDGET = 256 << 20


class Kind(IntEnum):
    HEADER = 1
    EVENTS = 2
    INDEX = 3
    STATS = 4
    FOOTER = 5
    EVENTS_ZLIB = 6  # an events payload, zlib-compressed; readers see it as EVENTS (since 1.2)


def frame_crc(meta: bytes, payload: bytes) -> int:
    """CRC-32 over the header's kind/flags/reserved/length bytes, then the payload."""
    return zlib.crc32(payload, zlib.crc32(meta))


def encode_frame(kind: int, payload: bytes) -> bytes:
    meta = struct.pack("<BBHI", kind, 0, 0, len(payload))
    return SYNC + meta + struct.pack("<I", frame_crc(meta, payload)) + payload


def encode_footer(index_offset: int) -> bytes:
    return encode_frame(Kind.FOOTER, FOOTER_PAYLOAD.pack(index_offset))


def read_frame(f: BinaryIO, offset: int, end: int) -> Frame | None:
    """The good frame at exactly `offset`, or None."""
    frame = FrameScanner(f, offset, end).frame_at(offset)
    return frame if isinstance(frame, Frame) else None


@dataclass(slots=True)
class Frame:
    """A good frame. A compressed events frame comes out as EVENTS with its payload decompressed:
    `size` is the payload's length in the file."""

    offset: int
    kind: int
    payload: bytes
    size: int

    @property
    def end(self) -> int:
        return self.offset + HEADER_SIZE + self.size


def _inflate(data: bytes) -> bytes | None:
    """A compressed payload, or None if it is not one zlib stream of at most MAX_FRAME_BYTES (a
    small frame must not inflate into gigabytes)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_FRAME_BYTES)
    except zlib.error:
        return None
    return out if inflater.eof and not inflater.unconsumed_tail and not inflater.unused_data else None


class FrameScanner:
    """Yields the good frames in [offset, end) of an open file, reporting what it skips.

    `final=True` reads a finished (or crashed) file: a partial frame at the end is reported as
    torn. `final=False` reads a file still being written: the scan stops before anything that may
    yet be completed, and `offset` is where the next scan should start.
    """

    def __init__(self, f: BinaryIO, offset: int, end: int, *, final: bool = True):
        self.f = f
        self.offset = offset
        self.end = end
        self.final = final
        self.problems: list[str] = []
        self._buf = b""
        self._buf_at = 0

    def __iter__(self) -> Iterator[Frame]:
        while self.offset < self.end:
            off = self.offset
            frame = self.frame_at(off)
            if isinstance(frame, Frame):
                self.offset = frame.end
                yield frame
                continue
            reason, _could_complete = frame
            nxt = self._find_next(off + 1)
            if nxt is None:
                if not self.final:
                    return  # it may be a frame still being written: look again when the file grows
                torn = reason == "incomplete frame"
                what = "torn frame (the writer stopped mid-frame)" if torn else f"corrupt frame ({reason})"
                self.problems.append(f"{what} at byte {off}: last {self.end - off} bytes ignored")
                self.offset = self.end
                return
            self.problems.append(f"corrupt frame ({reason}) at byte {off}: skipped {nxt - off} bytes to byte {nxt}")
            self.offset = nxt

    def frame_at(self, off: int) -> Frame | tuple[str, bool]:
        """The frame at `off`, or (why not, whether it could still be completed)."""
        if self.end - off < HEADER_SIZE:
            return "incomplete frame", False
        head = self._read(off, HEADER_SIZE)
        if len(head) < HEADER_SIZE:  # the file shrank under us
            return "incomplete frame", False
        sync, kind, _flags, _reserved, length, crc = FRAME_HEADER.unpack(head)
        if sync != SYNC:
            return "no frame header", True
        if length > MAX_FRAME_BYTES:
            return f"frame length {length} over the {MAX_FRAME_BYTES} limit", True
        if off + HEADER_SIZE + length > self.end:
            return "incomplete frame", False
        payload = self._read(off + HEADER_SIZE, length)
        if len(payload) < length:
            return "incomplete frame", False
        if frame_crc(head[4:12], payload) != crc:
            # A frame ending exactly at a growing file's end may still be landing on disk.
            return "checksum mismatch", off + HEADER_SIZE + length < self.end
        if kind == Kind.EVENTS_ZLIB:
            inflated = _inflate(payload)
            if inflated is None:
                return "compressed events that do not decompress", True
            return Frame(off, Kind.EVENTS, inflated, length)
        return Frame(off, kind, payload, length)

    def _find_next(self, pos: int) -> int | None:
        """Offset of the next complete, checksummed frame at or after `pos` (None past the budget)."""
        spent = 0
        while pos <= self.end - HEADER_SIZE:
            self.f.seek(pos)
            chunk = self.f.read(min(_CHUNK, self.end - pos))
            i = chunk.find(SYNC)
            if i < 0:
                pos += max(len(chunk) - len(SYNC) + 1, 1)
                continue
            cand = pos + i
            spent += self._claimed_length(cand)
            if spent > RESYNC_BUDGET:
                self.problems.append(
                    f"gave up resynchronising at byte {cand}: more than "
                    f"{RESYNC_BUDGET >> 20} MiB of false frame starts checked"
                )
                return None
            if isinstance(self.frame_at(cand), Frame):
                return cand
            pos = cand + 1
        return None

    def _claimed_length(self, off: int) -> int:
        """The payload length the frame header at `off` claims: what checking it would read."""
        head = self._read(off, HEADER_SIZE)
        if len(head) < HEADER_SIZE:
            return 0
        length = FRAME_HEADER.unpack(head)[4]
        return length if length <= MAX_FRAME_BYTES else 0

    def _read(self, off: int, n: int) -> bytes:
        # A window of the file, so walking many small frames costs one read per MiB.
        rel = off - self._buf_at
        if 0 <= rel and rel + n <= len(self._buf):
            return self._buf[rel : rel + n]
        self.f.seek(off)
        self._buf = self.f.read(min(max(n, _CHUNK), self.end - off))
        self._buf_at = off
        return self._buf[:n]
