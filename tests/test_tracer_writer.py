"""TraceWriter: everything emitted comes back, in order; the queue-full policy; closing."""

import threading

import numpy as np
import pytest

from tracer import MarkEvent, RequestEvent, SessionHeader, StageEvent, TickEvent, TraceWriter, open_trace
from tracer.framing import FOOTER_SIZE, Kind
from tracer.synth import synthetic_session


def same_events(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert type(x) is type(y)
        for name in x.__slots__:
            u, v = getattr(x, name), getattr(y, name)
            assert np.array_equal(u, v) if isinstance(u, np.ndarray) else u == v


def test_everything_emitted_is_read_back_in_order(tmp_path):
    header, events = synthetic_session(300)
    path = tmp_path / "t.msgpack"
    with TraceWriter(path, header) as w:
        for ev in events:
            w.emit(ev)
    assert w.dropped == 0
    with open_trace(path) as r:
        assert r.header == header
        same_events(list(r.events()), events)
        assert r.problems == []
        assert not r.index.rebuilt and r.tick_count == 300


def test_many_small_frames_and_periodic_index(tmp_path, monkeypatch):
    monkeypatch.setattr("tracer.writer.MAX_EVENTS_PER_FRAME", 3)
    monkeypatch.setattr("tracer.writer.INDEX_EVERY", 4)
    header, events = synthetic_session(40)
    path = tmp_path / "t.msgpack"
    with TraceWriter(path, header) as w:
        for ev in events:
            w.emit(ev)
    with open_trace(path) as r:
        same_events(list(r.events()), events)
        assert len(r.index.entries) > 4 * 3 and not r.index.rebuilt
        assert r.tick_count == 40


def test_header_is_on_disk_before_the_first_event(tmp_path):
    path = tmp_path / "t.msgpack"
    with TraceWriter(path, SessionHeader(1, 2, {"k": "v"})):
        with open_trace(path) as r:
            assert r.header.config == {"k": "v"}
            assert list(r.events()) == []


def test_flush_makes_events_readable_before_close(tmp_path):
    path = tmp_path / "t.msgpack"
    with TraceWriter(path, SessionHeader(0, 0), flush_interval_s=10) as w:
        w.emit(MarkEvent(1, 0, "before flush"))
        assert w.flush(timeout=10)
        with open_trace(path) as r:
            assert list(r.events()) == [MarkEvent(1, 0, "before flush")]


def test_close_is_idempotent_and_ends_with_a_footer(tmp_path):
    path = tmp_path / "t.msgpack"
    w = TraceWriter(path, SessionHeader(0, 0))
    w.close()
    w.close()
    data = path.read_bytes()
    assert data[-FOOTER_SIZE:][4] == Kind.FOOTER
    with pytest.raises(ValueError, match="closed"):
        w.emit(MarkEvent(0, 0, "late"))


def test_unstorable_config_fails_in_the_constructor(tmp_path):
    with pytest.raises(TypeError):
        TraceWriter(tmp_path / "t.msgpack", SessionHeader(0, 0, {"x": object()}))


def test_invalid_events_are_counted_not_fatal(tmp_path):
    path = tmp_path / "t.msgpack"
    with TraceWriter(path, SessionHeader(0, 0)) as w:
        w.emit("not an event")
        w.emit(MarkEvent(0, 0, "fine"))
    assert w.dropped_by_kind == {"invalid": 1}
    with open_trace(path) as r:
        assert list(r.events()) == [MarkEvent(0, 0, "fine")]
        assert r.dropped == {"invalid": 1}


def test_full_queue_drops_low_priority_events_never_requests(tmp_path, monkeypatch):
    # Hold the writer thread inside a write so the queue cannot drain.
    gate = threading.Event()
    entered = threading.Event()
    from tracer import writer as writer_mod

    real_drain = writer_mod.TraceWriter._drain

    def slow_drain(self):
        if self._q:
            entered.set()
            gate.wait(10)
        real_drain(self)

    monkeypatch.setattr(writer_mod.TraceWriter, "_drain", slow_drain)
    path = tmp_path / "t.msgpack"
    stage = np.zeros((1, 1), dtype=np.int64)
    w = TraceWriter(path, SessionHeader(0, 0), queue_max=8, block_s=0.001, flush_interval_s=0.01)
    w.emit(MarkEvent(0, 0, "first"))
    assert entered.wait(10)
    for i in range(12):  # 7 fit beside the mark; the rest meet the stage limit (queue_max)
        w.emit(StageEvent(i, stage, stage, stage, stage))
    for i in range(2):  # ticks still fit: their limit is a quarter higher
        w.emit(TickEvent(i, *[0] * 12))
    for i in range(30):  # requests always fit
        w.emit(RequestEvent(i, "arrive", i))
    w.emit(TickEvent(2, *[0] * 12))  # now past the tick limit too
    gate.set()
    w.close()
    assert w.dropped_by_kind == {"stage": 5, "tick": 1}
    assert w.dropped == 6
    with open_trace(path) as r:
        events = list(r.events())
        assert r.dropped == {"stage": 5, "tick": 1}
    assert [type(e).__name__ for e in events].count("RequestEvent") == 30
    assert [e.tick for e in events if type(e) is StageEvent] == list(range(7))
    assert [e.tick for e in events if type(e) is TickEvent] == [0, 1]


def test_header_a_reader_would_refuse_is_refused_at_once(tmp_path):
    with pytest.raises(ValueError, match="cannot be stored"):
        TraceWriter(tmp_path / "t.msgpack", SessionHeader(0, 0, {"layers": {0: "int keys"}}))


def test_overlong_text_is_cut_so_its_frame_stays_readable(tmp_path):
    path = tmp_path / "t.msgpack"
    with TraceWriter(path, SessionHeader(0, 0)) as w:
        w.emit(MarkEvent(0, 0, "ü" * 100_000))
        w.emit(MarkEvent(1, 1, "short"))
    with open_trace(path) as r:
        got = list(r.events())
    assert len(got) == 2 and 0 < len(got[0].text) < 100_000 and got[1].text == "short"
