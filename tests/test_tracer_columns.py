"""tracer.load decodes frames straight into columns: it must give what the event objects give."""

from pathlib import Path

import msgpack
import numpy as np
import pytest
from polars.testing import assert_frame_equal

from tracer import (
    BatchEvent,
    ExpertsEvent,
    MarkEvent,
    RequestEvent,
    StageEvent,
    Trace,
    TraceWriter,
    add_mark,
    from_events,
    load,
    open_trace,
)
from tracer.codec import encode_event
from tracer.framing import MAGIC, Kind, encode_frame
from tracer.synth import synthetic_session

SYNC = b"\xf1TKS"

EVENTS_KINDS = (Kind.EVENTS, Kind.EVENTS_ZLIB)


def every_kind() -> tuple:
    """A synthetic session plus what it lacks: batches, preemptions, a changed expert shape,
    measured-only stages, a request without a finish, a finish without token times."""
    header, events = synthetic_session(300, layers=3, experts=8, stages=2, micro_batches=3)
    rng = np.random.default_rng(7)
    extra = []
    for tick in range(0, 300, 3):
        n = int(rng.integers(0, 5))
        extra.append(
            BatchEvent(
                tick,
                rng.integers(0, 50, n).astype(np.int64),
                rng.integers(0, 9, n).astype(np.int32),
                rng.integers(0, 2, n).astype(np.int32),
                rng.integers(0, 3, n).astype(np.int16),
            )
        )
    t = events[-1].t_ns
    extra += [
        RequestEvent(3, "preempt", t, tick=299, reason="kv full"),
        RequestEvent(3, "admit", t + 1, tick=299),
        RequestEvent(10_000, "arrive", t + 2, prompt_tokens=7),  # still waiting when the recording stopped
        RequestEvent(10_001, "arrive", t + 3, prompt_tokens=4),
        RequestEvent(10_001, "finish", t + 9, status="rejected", reason="queue full"),
        ExpertsEvent(300, np.arange(10, dtype=np.int32).reshape(2, 5)),  # shape changed: no expert_load stack
        StageEvent(300, *(np.full((1, 2), k, dtype=np.int64) for k in range(4)), modelled=False),
        StageEvent(301, *(np.zeros((0, 2), dtype=np.int64) for _ in range(4))),
        MarkEvent(t + 4, 300, "the end"),
    ]
    return header, events + extra


def write(path: Path, header, events) -> bytes:
    with TraceWriter(path, header) as w:
        for i, ev in enumerate(events):
            w.emit(ev)
            if i % 37 == 0:
                w.flush()  # many small frames, so there are middle ones to damage
    return path.read_bytes()


def events_frames(data: bytes) -> list[int]:
    out, at = [], data.find(SYNC, len(MAGIC))
    while at >= 0:
        if data[at + 4] in EVENTS_KINDS:
            out.append(at)
        at = data.find(SYNC, at + 1)
    return out


def assert_same(fast: Trace, slow: Trace) -> None:
    for name in ("ticks", "requests", "experts", "stages", "marks", "batches", "scrapes"):
        assert_frame_equal(getattr(fast, name), getattr(slow, name), check_exact=True)
    for name in ("itl_s", "expert_ticks"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert (fast.expert_load is None) == (slow.expert_load is None)
    if fast.expert_load is not None:
        assert fast.expert_load.dtype == slow.expert_load.dtype and np.array_equal(fast.expert_load, slow.expert_load)
    assert fast.problems == slow.problems and fast.dropped == slow.dropped


def via_events(path: Path, sidecar: tuple[MarkEvent, ...] = ()) -> Trace:
    with open_trace(path) as r:
        trace = from_events(r.header, list(r.events()) + list(sidecar))
        trace.dropped, trace.problems = dict(r.dropped), list(r.problems)
    return trace


@pytest.mark.parametrize("shape_change", [False, True])
def test_load_equals_the_event_objects(tmp_path, shape_change):
    header, events = every_kind()
    if not shape_change:
        events = [e for e in events if not (type(e) is ExpertsEvent and e.counts.shape != (3, 8))]
    path = tmp_path / "t.msgpack"
    write(path, header, events)
    fast, slow = load(path), via_events(path)
    assert_same(fast, slow)
    assert (fast.expert_load is None) == shape_change
    assert fast.batches.height and fast.requests.get_column("preemptions").sum() >= 1
    assert fast.stages.get_column("modelled").n_unique() == 2


def test_damaged_trace_loads_the_same(tmp_path):
    header, events = every_kind()
    path = tmp_path / "t.msgpack"
    data = bytearray(write(path, header, events))
    frames = events_frames(bytes(data))
    middle = frames[len(frames) // 2]
    data[middle + 16 + 5] ^= 0xFF  # a corrupt middle frame: its CRC no longer matches
    # A frame with a good CRC and a bad event in it, after good ones: the whole frame is skipped.
    bad = [encode_event(events[0]), [1, 5, 6], [7, "future code"], encode_event(events[1])]
    bad_frame = encode_frame(Kind.EVENTS, msgpack.packb(bad, use_bin_type=True))
    last = frames[-1]
    torn = bytes(data[:last]) + bad_frame + bytes(data[last : last + 40])  # the last frame torn mid-payload
    path.write_bytes(torn)
    note = MarkEvent(header.t0_mono_ns + 5, 0, "beside the trace")  # sorts among the trace's own marks
    add_mark(path, note)
    fast = load(path)
    assert_same(fast, via_events(path, (note,)))
    assert "beside the trace" in fast.marks.get_column("text").to_list()
    assert any("corrupt frame" in p for p in fast.problems)
    assert any("tick event too short" in p for p in fast.problems)
    assert any("torn" in p for p in fast.problems)


def test_newer_fields_and_unknown_codes_are_ignored(tmp_path):
    header, events = synthetic_session(5)
    path = tmp_path / "t.msgpack"
    write(path, header, events)
    items = [encode_event(e) + ["a later field"] for e in events] + [[99, "an event from the future"]]
    path.write_bytes(path.read_bytes() + encode_frame(Kind.EVENTS, msgpack.packb(items, use_bin_type=True)))
    assert_same(load(path), via_events(path))
