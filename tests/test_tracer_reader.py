"""open_trace: refusing non-traces, surviving damage, and seeking through the index."""

import os
import zlib

import pytest

from tracer import MarkEvent, SessionHeader, TickEvent, TraceFormatError, TraceWriter, open_trace
from tracer.codec import encode_event, encode_header
from tracer.framing import FOOTER_SIZE, HEADER_SIZE, MAGIC, Kind, encode_frame
from tracer.synth import synthetic_session

EVENTS_KINDS = (Kind.EVENTS, Kind.EVENTS_ZLIB)


def write(path, events, header=None, **kw):
    header = header or SessionHeader(1000, 2000, {"x": 1})
    with TraceWriter(path, header, **kw) as w:
        for ev in events:
            w.emit(ev)
            if isinstance(ev, MarkEvent):
                w.flush()  # one frame per mark: these tests need several frames
    return path


def marks(n):
    return [MarkEvent(i, i, f"mark {i}") for i in range(n)]


def frame_offsets(data):
    """Offsets of every frame after the magic, walking the length fields."""
    out, off = [], len(MAGIC)
    while off + HEADER_SIZE <= len(data):
        out.append(off)
        off += HEADER_SIZE + int.from_bytes(data[off + 8 : off + 12], "little")
    return out


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "bad magic|truncated"),
        (b"hello, I am a text file\n", "bad magic"),
        (MAGIC, "truncated"),
        (MAGIC + b"\0" * 64, "session header"),
        (MAGIC + encode_frame(Kind.EVENTS, b"\x90"), "first frame is not the session header"),
        (MAGIC + encode_frame(Kind.HEADER, b"\xc1"), "undecodable"),
        (MAGIC + encode_frame(Kind.HEADER, encode_header(SessionHeader(0, 0, {}, (2, 0)))), r"2\.0 is newer"),
    ],
)
def test_non_traces_raise_trace_format_error_with_place(tmp_path, content, match):
    path = tmp_path / "bad.msgpack"
    path.write_bytes(content)
    with pytest.raises(TraceFormatError, match=match) as info:
        open_trace(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(TraceFormatError, match="not a regular file"):
        open_trace(tmp_path)
    with pytest.raises(FileNotFoundError):
        open_trace(tmp_path / "nope.msgpack")


def test_torn_tail_is_reported_and_everything_before_it_read(tmp_path):
    path = write(tmp_path / "t.msgpack", marks(5))
    data = path.read_bytes()
    last_events = [o for o in frame_offsets(data) if data[o + 4] in EVENTS_KINDS][-1]
    path.write_bytes(data[: last_events + HEADER_SIZE + 5])  # killed mid-way through the last events frame
    with open_trace(path) as r:
        assert list(r.events()) == marks(4)
        assert len(r.problems) == 1 and "torn" in r.problems[0] and f"byte {last_events}" in r.problems[0]


def test_corrupt_middle_frame_is_skipped_with_its_offset(tmp_path):
    path = write(tmp_path / "t.msgpack", marks(5))
    data = bytearray(path.read_bytes())
    second = [o for o in frame_offsets(data) if data[o + 4] in EVENTS_KINDS][1]
    data[second + HEADER_SIZE + 3] ^= 0x01  # one bit flipped in the payload
    path.write_bytes(bytes(data))
    with open_trace(path) as r:
        got = list(r.events())
        assert got == marks(1) + marks(5)[2:]
        assert any(f"at byte {second}" in p and "checksum" in p for p in r.problems)


def test_garbage_inserted_between_frames_is_skipped(tmp_path):
    path = write(tmp_path / "t.msgpack", marks(3))
    data = path.read_bytes()
    cut = [o for o in frame_offsets(data) if data[o + 4] in EVENTS_KINDS][1]
    path.write_bytes(data[:cut] + b"\xf1TKS garbage that looks like a sync word" + data[cut:])
    with open_trace(path) as r:
        assert list(r.events()) == marks(3)
        assert any(f"at byte {cut}" in p for p in r.problems)


def test_compressed_and_plain_events_frames_read_the_same(tmp_path):
    header, events = synthetic_session(200)
    plain = write(tmp_path / "plain.msgpack", events, header, compress=False)
    packed = write(tmp_path / "packed.msgpack", events, header)
    kinds = {p: {p.read_bytes()[o + 4] for o in frame_offsets(p.read_bytes())} for p in (plain, packed)}
    assert Kind.EVENTS in kinds[plain] and Kind.EVENTS_ZLIB not in kinds[plain]
    assert Kind.EVENTS_ZLIB in kinds[packed] and Kind.EVENTS not in kinds[packed]
    assert packed.stat().st_size * 2 < plain.stat().st_size
    with open_trace(plain) as a, open_trace(packed) as b:
        assert list(map(encode_event, b.events())) == list(map(encode_event, a.events()))
        from_tick = [list(map(encode_event, r.events_from_tick(150))) for r in (a, b)]  # seeks through the index
        assert from_tick[0] and from_tick[0] == from_tick[1]
        assert not a.problems and not b.problems


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"not zlib at all", "not a zlib stream"),
        (zlib.compress(b"\x00" * (17 << 20), 9), "inflates past 16 MiB"),
        (zlib.compress(b"\x90") + b"tail", "bytes after the stream"),
    ],
)
def test_compressed_frame_that_does_not_decompress_is_skipped(tmp_path, payload, why):
    path = write(tmp_path / "t.msgpack", marks(3))
    data = path.read_bytes()
    cut = [o for o in frame_offsets(data) if data[o + 4] in EVENTS_KINDS][1]
    path.write_bytes(data[:cut] + encode_frame(Kind.EVENTS_ZLIB, payload) + data[cut:])  # a good CRC
    with open_trace(path) as r:
        assert list(r.events()) == marks(3), why
        assert any(f"at byte {cut}" in p and "do not decompress" in p for p in r.problems), why


def test_seek_uses_the_footer_index(tmp_path):
    header, events = synthetic_session(120)
    path = tmp_path / "t.msgpack"
    with TraceWriter(path, header) as w:
        for i, ev in enumerate(events):
            w.emit(ev)
            if i % 37 == 0:
                w.flush()
    with open_trace(path) as r:
        assert not r.index.rebuilt and r.tick_count == 120
        everything = list(r.events())
        for n in (0, 1, 59, 119):
            got = [e for e in r.events_from_tick(n) if type(e) is TickEvent]
            assert [e.tick for e in got] == list(range(n, 120))
        assert list(r.events_from_tick(120)) == []
        # Request and mark events from the seek point on come along too.
        tail = list(r.events_from_tick(60))
        assert tail[-1] == everything[-1]


def test_tick_at_time(tmp_path):
    header, events = synthetic_session(100)
    path = tmp_path / "t.msgpack"
    write(path, events, header)
    ticks = [e for e in events if type(e) is TickEvent]
    with open_trace(path) as r:
        for tick in (0, 10, 99):
            t_s = (ticks[tick].start_ns - header.t0_mono_ns) / 1e9
            assert r.tick_at(t_s) == tick
            assert r.tick_at(t_s + 1e-6) == tick
        assert r.tick_at(1e6) == 99
        assert r.tick_at(-1.0) is None


@pytest.mark.parametrize("progress", [False, True])
def test_index_rebuilt_when_the_writer_was_killed(tmp_path, monkeypatch, progress):
    monkeypatch.setattr("tracer.writer.INDEX_EVERY", 3)
    header, events = synthetic_session(80)
    path = tmp_path / "t.msgpack"
    with TraceWriter(path, header) as w:
        for i, ev in enumerate(events):
            w.emit(ev)
            if i % 20 == 0:
                w.flush()
    data = path.read_bytes()
    with open_trace(path) as r:
        full = r.index.entries.copy()
    path.write_bytes(data[:-FOOTER_SIZE])  # no footer: as if killed before close
    with open_trace(path, progress=progress) as r:
        assert r.index.rebuilt
        assert (r.index.entries == full).all()
        assert [e.tick for e in r.events_from_tick(70) if type(e) is TickEvent] == list(range(70, 80))


def test_damaged_footer_pointer_falls_back_to_rebuild(tmp_path):
    header, events = synthetic_session(30)
    path = write(tmp_path / "t.msgpack", events, header)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the footer's checksum no longer matches
    path.write_bytes(bytes(data))
    with open_trace(path) as r:
        assert r.index.rebuilt and r.tick_count == 30


def test_reader_snapshot_ignores_bytes_appended_after_open(tmp_path):
    path = write(tmp_path / "t.msgpack", marks(2))
    r = open_trace(path)
    with open(path, "ab") as f:
        f.write(os.urandom(100))
    assert list(r.events()) == marks(2)
    r.close()


def test_events_for_a_range_of_ticks(tmp_path):
    header, events = synthetic_session(50)
    path = write(tmp_path / "t.msgpack", events, header)
    with open_trace(path) as r:
        got = list(r.events_for_ticks(10, 12))
    assert sorted({e.tick for e in got if type(e) is TickEvent}) == [10, 11, 12]
    assert all(e.tick <= 12 for e in got if hasattr(e, "counts"))


def test_rebuilding_the_index_reports_damage_too(tmp_path):
    path = write(tmp_path / "t.msgpack", marks(4))
    data = path.read_bytes()
    path.write_bytes(data[: -FOOTER_SIZE - 3])  # no footer, and the last index frame torn
    with open_trace(path) as r:
        assert r.tick_count == 0 and r.index.rebuilt
        assert len(r.problems) == 1 and "torn" in r.problems[0]
