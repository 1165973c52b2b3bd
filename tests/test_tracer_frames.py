"""tracer.load / from_events: the DataFrames and the per-request latency definitions."""

import numpy as np
import polars as pl
import pytest

from tracer import (
    ExpertsEvent,
    MarkEvent,
    RequestEvent,
    SessionHeader,
    StageEvent,
    TickEvent,
    TraceWriter,
    from_events,
    load,
)
from tracer.synth import synthetic_session

T0 = 10_000_000_000
MS = 1_000_000


def req(rid, phase, t_ms, **kw):
    return RequestEvent(rid, phase, T0 + int(t_ms * MS), **kw)


def sample():
    header = SessionHeader(T0, 0, {})
    counts = np.array([[3, 0, 1], [0, 0, 4]], dtype=np.int32)
    st = np.array([[0, 5]], dtype=np.int64) * MS
    events = [
        req(1, "arrive", 0, prompt_tokens=10),
        req(1, "admit", 2, tick=0),
        TickEvent(0, T0 + 2 * MS, T0 + 6 * MS, 2 * MS, 1, 10, 0, 0, 1, 10, 100, 4 * MS, 1),
        ExpertsEvent(0, counts),
        StageEvent(0, st, st + MS, st, st + 2 * MS),
        req(1, "first_token", 6, tick=0),
        req(1, "preempt", 8, tick=1, reason="kv full"),
        req(1, "admit", 9, tick=2),
        req(
            1,
            "finish",
            16,
            output_tokens=3,
            status="finished",
            token_us=np.array([6000, 11000, 16000], dtype=np.uint32),
        ),
        req(2, "arrive", 1, prompt_tokens=5),
        req(2, "finish", 1.5, status="rejected", reason="queue full"),
        MarkEvent(T0 + 3 * MS, 0, "note"),
    ]
    return header, events


def test_ticks_frame():
    t = from_events(*sample())
    row = t.ticks.row(0, named=True)
    assert row["tick"] == 0 and row["start_s"] == pytest.approx(0.002) and row["end_s"] == pytest.approx(0.006)
    assert row["wait_s"] == pytest.approx(0.002) and row["forward_s"] == pytest.approx(0.004)
    assert (row["seqs"], row["prefill_tokens"], row["kv_used"], row["kv_capacity"]) == (1, 10, 10, 100)


def test_requests_frame_latencies():
    t = from_events(*sample())
    r1, r2 = t.requests.sort("request").iter_rows(named=True)
    assert r1["arrival_s"] == 0 and r1["admit_s"] == pytest.approx(0.002)  # the first admission
    assert r1["ttft_s"] == pytest.approx(0.006) and r1["e2e_s"] == pytest.approx(0.016)
    assert r1["tpot_s"] == pytest.approx((0.016 - 0.006) / 2)  # the first token excluded
    assert r1["queue_wait_s"] == pytest.approx(0.002)
    assert (r1["prompt_tokens"], r1["output_tokens"], r1["status"], r1["preemptions"]) == (10, 3, "finished", 1)
    assert r2["status"] == "rejected" and r2["reason"] == "queue full"
    assert r2["ttft_s"] is None and r2["tpot_s"] is None and r2["admit_s"] is None
    assert t.itl_s == pytest.approx([0.005, 0.005])


def test_ttft_falls_back_to_token_times_without_a_first_token_event():
    header, events = sample()
    events = [e for e in events if not (type(e) is RequestEvent and e.phase == "first_token")]
    assert from_events(header, events).requests.row(0, named=True)["ttft_s"] == pytest.approx(0.006)


def test_experts_long_form_and_stages_and_marks():
    t = from_events(*sample())
    assert t.experts.columns == ["tick", "layer", "expert", "tokens"]
    assert t.experts.filter((pl.col("layer") == 1) & (pl.col("expert") == 2)).item(0, "tokens") == 4
    assert t.experts.get_column("tokens").sum() == 8 and t.experts.height == 6
    assert t.expert_load.shape == (1, 2, 3)
    stage = t.stages.row(1, named=True)
    assert (stage["stage"], stage["micro_batch"]) == (0, 1)
    assert stage["tick_start_s"] == pytest.approx(0.002) and stage["modelled_end_s"] == pytest.approx(0.007)
    assert t.marks.row(0) == (pytest.approx(0.003), 0, "note")


def test_experts_with_changing_shapes():
    header = SessionHeader(0, 0)
    t = from_events(header, [ExpertsEvent(0, np.ones((1, 2), np.int32)), ExpertsEvent(1, np.ones((2, 3), np.int32))])
    assert t.experts.height == 8 and t.expert_load is None


def test_empty_trace_has_typed_empty_frames():
    t = from_events(SessionHeader(0, 0), [])
    for df in (t.ticks, t.requests, t.experts, t.stages, t.marks):
        assert df.height == 0
    assert t.ticks.schema["start_s"] == pl.Float64 and len(t.itl_s) == 0


def test_load_from_file_equals_from_events(tmp_path):
    header, events = synthetic_session(60)
    path = tmp_path / "t.msgpack"
    with TraceWriter(path, header) as w:
        for ev in events:
            w.emit(ev)
    a, b = load(path), from_events(header, events)
    for name in ("ticks", "requests", "experts", "stages", "marks"):
        assert getattr(a, name).equals(getattr(b, name)), name
    assert np.array_equal(a.itl_s, b.itl_s) and a.path == str(path) and a.problems == []
