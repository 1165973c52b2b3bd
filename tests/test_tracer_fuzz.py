"""Hostile and damaged files: only TraceFormatError (or a clean read) ever comes out, in bounded memory."""

import struct
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer import TraceFormatError, TraceTail, TraceWriter, load, open_trace, summarize
from tracer.codec import encode_header
from tracer.events import SessionHeader
from tracer.framing import MAGIC, Kind, encode_frame
from tracer.synth import synthetic_session

MEMORY_LIMIT = 64 << 20


def valid_trace() -> bytes:
    header, events = synthetic_session(12, layers=2, experts=4)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.msgpack"
        with TraceWriter(path, header) as w:
            for i, ev in enumerate(events):
                w.emit(ev)
                if i % 9 == 0:
                    w.flush()
        return path.read_bytes()


VALID = valid_trace()


def read_everything(data: bytes) -> None:
    """Every way of reading a file; returns normally or raises TraceFormatError."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.msgpack"
        path.write_bytes(data)
        tracemalloc.start()
        try:
            try:
                with open_trace(path) as r:
                    list(r.events())
                    _ = r.tick_count  # a property: reading it is the check
                    list(r.events_from_tick(3))
                    r.tick_at(0.01)
                summarize(load(path))
            except TraceFormatError as exc:
                assert "\n" not in str(exc)
            tail = TraceTail(path)
            try:
                tail.poll()
                tail.poll()
            except TraceFormatError:
                pass
            finally:
                tail.close()
            assert tracemalloc.get_traced_memory()[1] < MEMORY_LIMIT
        finally:
            tracemalloc.stop()


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(VALID) - 1), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, len(VALID) - 1), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.integers(0, len(VALID)), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, len(VALID) - 1), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, len(VALID)), st.just(0)),
)


def mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, pos, arg in ops:
        pos = min(pos, len(buf))
        if op == "flip" and pos < len(buf):
            buf[pos] ^= 1 << arg
        elif op == "set":
            buf[pos : pos + len(arg)] = arg
        elif op == "insert":
            buf[pos:pos] = arg
        elif op == "delete":
            del buf[pos : pos + arg]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_traces_only_raise_trace_format_error(ops):
    read_everything(mutate(VALID, ops))


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_after_the_magic(tail):
    read_everything(MAGIC + tail)


def _events_frame(payload: bytes) -> bytes:
    return encode_frame(Kind.EVENTS, payload)


HEADER = MAGIC + encode_frame(Kind.HEADER, encode_header(SessionHeader(0, 0)))


@pytest.mark.parametrize(
    "body",
    [
        # A frame header claiming the largest allowed payload, with nothing behind it.
        b"\xf1TKS" + struct.pack("<BBHII", Kind.EVENTS, 0, 0, 16 << 20, 0),
        # A frame header claiming 4 GiB.
        b"\xf1TKS" + struct.pack("<BBHII", Kind.EVENTS, 0, 0, 0xFFFFFFFF, 0),
        # A checksummed frame whose msgpack claims a 4 GiB binary and a 4-billion-item array.
        _events_frame(b"\x91\x94\x02\x00\x92\x01\x01\xc6\xff\xff\xff\xff"),
        _events_frame(b"\xdd\xff\xff\xff\xff"),
        # An experts array claiming a huge shape over a few bytes.
        _events_frame(msgpack.packb([[2, 0, [1 << 20, 1 << 20], b"\0" * 16]])),
        # Nesting far deeper than any decoder stack.
        _events_frame(b"\x91" * 100_000),
        # Types that are not ours: an ext value, a map with a non-string key, floats for ints.
        _events_frame(b"\x91\xd4\x05\x00"),
        _events_frame(msgpack.packb([{1: 2}])),
        _events_frame(msgpack.packb([[1] + [0.5] * 12])),
        # The same inside compressed events frames, and a compressed frame that inflates past the limit.
        encode_frame(Kind.EVENTS_ZLIB, zlib.compress(b"\x91" * 100_000)),
        encode_frame(Kind.EVENTS_ZLIB, zlib.compress(b"\xdd\xff\xff\xff\xff")),
        encode_frame(Kind.EVENTS_ZLIB, zlib.compress(b"\x91" * (17 << 20), 9)),
        # Index and footer frames that point nowhere.
        encode_frame(Kind.INDEX, msgpack.packb({"prev": 5, "entries": b"\0" * 56}))
        + encode_frame(Kind.FOOTER, struct.pack("<Q", 3)),
        encode_frame(Kind.FOOTER, struct.pack("<Q", 1 << 62)),
    ],
)
def test_hostile_frames(body):
    read_everything(HEADER + body)


def test_hostile_header_config():
    nested = msgpack.packb({"format_version": [1, 0], "t0_mono_ns": 0, "t0_wall_ns": 0, "config": [1]})
    with pytest.raises(TraceFormatError, match="config"):
        read_everything_strict(MAGIC + encode_frame(Kind.HEADER, nested))


def read_everything_strict(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.msgpack"
        path.write_bytes(data)
        open_trace(path).close()


def test_resynchronising_past_many_false_frame_starts_gives_up_within_its_budget(monkeypatch):
    """Each fake header claims 64 KiB behind it: checking them all would CRC ~1 GiB for this 1 MiB file."""
    monkeypatch.setattr("tracer.framing.RESYNC_BUDGET", 1 << 20)
    fake = b"\xf1TKS" + struct.pack("<BBHII", Kind.EVENTS, 0, 0, 64 << 10, 0)
    good = encode_frame(Kind.EVENTS, msgpack.packb([[5, 1, 0, "first"]]))
    path = Path(tempfile.mkdtemp()) / "hostile.msgpack"
    path.write_bytes(HEADER + good + b"\0" + fake * (1 << 16) + good)
    with open_trace(path) as r:
        assert [ev.text for ev in r.events()] == ["first"]
        assert any("gave up resynchronising" in p for p in r.problems)
