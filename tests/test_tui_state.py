"""DashboardState and its helpers, without Textual."""

from __future__ import annotations

import numpy as np
import pytest

import tui_synth
from tracer.events import RequestEvent, SessionHeader, StageEvent
from tui.state import (
    DashboardState,
    config_summary,
    downsample,
    expert_stats,
    frame_from_events,
    stage_stats,
)


@pytest.fixture(scope="module")
def state() -> DashboardState:
    header, events = tui_synth.recording(120)
    s = DashboardState()
    s.set_header(header)
    s.ingest(events)
    return s


def test_downsample_keeps_a_one_tick_spike():
    values = np.ones(10_000)
    values[4321] = 50.0
    series = downsample(values, 80, cursor=9_999)
    assert len(series.hi) == 80
    assert series.hi.max() == 50.0 and series.lo.min() == 1.0
    assert series.cursor_bucket == 79


def test_downsample_fewer_values_than_buckets_is_one_per_value():
    series = downsample(np.arange(5.0), 80, cursor=2)
    assert list(series.hi) == [0, 1, 2, 3, 4] and series.cursor_bucket == 2


def test_state_ticks_and_times(state: DashboardState):
    assert state.n_ticks == 120
    assert state.tick_number(119) == 119
    assert state.time_at(0) == pytest.approx(0.018)
    assert state.index_at_time(1.0) == state.index_of_tick(49)
    assert state.index_of_tick(10_000) == 119


def test_requests_as_of_a_tick_do_not_see_the_future(state: DashboardState):
    rows = state.recent_requests(20, limit=8)
    assert [r.request for r in rows] == list(range(20, 12, -1))
    by_id = {r.request: r for r in rows}
    assert by_id[20].state == "queued" and by_id[20].ttft_s is None
    assert by_id[14].state == "finished" and by_id[14].output_tokens == 6
    assert by_id[14].tpot_s == pytest.approx(0.0202)
    assert by_id[16].state == "decode"  # its finish is in the file, but after tick 20


def test_counters_and_latency(state: DashboardState):
    counts = state.counters(119)
    assert counts["rejected"] == sum(1 for r in range(114) if r % 13 == 12)
    assert counts["preempted"] == 4
    lat = state.latency(119)
    assert lat.ttft_p50 == pytest.approx(0.034999)  # arrive +1µs, first token next tick +15ms
    assert lat.tpot_p99 == pytest.approx(0.0202)
    assert state.latency(0).ttft_p50 is None  # nothing had a first token yet


def test_detail_cache_is_bounded():
    header, events = tui_synth.recording(50)
    s = DashboardState(detail_capacity=10)
    s.set_header(header)
    s.ingest(events)
    assert s.detail(s.index_of_tick(49)).experts is not None
    assert s.detail(s.index_of_tick(5)) is None


def test_expert_stats():
    counts = np.array([[4, 0, 0, 0], [1, 1, 1, 1]])
    stats = expert_stats(counts)
    assert stats.active_share == pytest.approx(5 / 8)
    assert stats.imbalance == pytest.approx((4.0 + 1.0) / 2)
    assert stats.balancedness == pytest.approx((0.25 + 1.0) / 2)
    assert stats.idle_experts == 3
    assert stats.hottest[0] == (0, 0, 4.0)


def test_stage_stats_finds_warmup_drain_and_bubbles():
    ms = 1_000_000
    start = np.array([[0, 1 * ms], [1 * ms, 3 * ms]])
    end = np.array([[1 * ms, 2 * ms], [2 * ms, 4 * ms]])
    stats = stage_stats(StageEvent(0, start, end, start, end))
    assert stats.makespan_ns == 4 * ms
    assert stats.compute_ns == 4 * ms
    assert stats.warmup_ns == 1 * ms  # stage 1 waits for the first micro-batch
    assert stats.drain_ns == 2 * ms  # stage 0 idles after its last
    assert stats.bubble_ns == 1 * ms  # stage 1 waits between micro-batches
    assert stats.idle_share == pytest.approx(0.5)


def test_config_summary_names_cuda_graphs_beside_the_device():
    cfg = {"device_name": "NVIDIA H100", "decode_graphs": "cuda graphs", "scheduler": {"decode_compile": "inductor"}}
    assert config_summary(SessionHeader(0, 0, cfg))["device"] == "NVIDIA H100, CUDA graphs (compiled)"
    cfg |= {"decode_graphs": "off"}
    assert config_summary(SessionHeader(0, 0, cfg))["device"] == "NVIDIA H100"


def test_config_summary_tolerates_missing_keys():
    assert config_summary(None)["model"] == "?"
    summary = config_summary(tui_synth.header())
    assert summary["policy"] == "window 5ms max16"
    assert summary["model"] == "tiny 6L×16E top2"


def test_a_replay_layout_fills_rows_from_frames_read_in_any_order():
    header, events = tui_synth.recording(30)
    whole = DashboardState()
    whole.set_header(header)
    whole.ingest(events)
    # Three "frames" of ten ticks each, as index entries would describe them.
    frames = [
        [
            e
            for e in events
            if getattr(e, "tick", -1) // 10 == f
            or (isinstance(e, RequestEvent) and e.t_ns // tui_synth.TICK_NS - 50 == f)
        ]
        for f in range(3)
    ]

    def t(tick: int) -> int:
        return tui_synth.T0 + tick * tui_synth.TICK_NS + 5_000_000

    entries = np.array([[f, 10 * f, 10 * f + 9, 10, t(10 * f), t(10 * f + 9), 0] for f in range(3)])
    s = DashboardState()
    s.set_header(header)
    s.set_layout(entries)
    assert s.n_ticks == 30 and s.loaded_share == 0
    assert s.tick_number(25) == 25 and s.index_of_tick(17) == 17  # estimated from the index
    s.ingest_frame(frame_from_events(frames[2], header.t0_mono_ns, frame=2))
    assert s.frame_loaded(2) and not s.frame_loaded(0) and s.loaded_share == pytest.approx(1 / 3)
    assert np.isnan(s.values("seqs")[:20]).all()
    assert np.array_equal(s.values("seqs")[20:], whole.values("seqs")[20:])
    series = s.series("seqs", 25, 30)
    assert np.isnan(series.hi[:20]).all() and series.peak == whole.values("seqs")[20:].max()
    s.ingest_frame(frame_from_events(frames[2], header.t0_mono_ns, frame=2))  # read twice: no effect
    for f in (0, 1):
        s.ingest_frame(frame_from_events(frames[f], header.t0_mono_ns, frame=f))
    assert s.loaded_share == 1
    for name in ("tick", "start_s", "end_s", "seqs", "queue_depth", "kv_used"):
        assert np.array_equal(s.values(name), whole.values(name)), name


def test_request_life_holds_every_moment(state: DashboardState):
    life = state.request_life(14)
    assert life.status == "finished" and life.output_tokens == 6
    assert [what for _, what in life.events()] == ["arrive", "admit", "first token", "finished"]
    assert life.token_s == pytest.approx(life.arrive_s + np.arange(1, 7) * 0.02)
    preempted = state.request_life(22)  # preempted at tick 24
    assert "preempt" in [what for _, what in preempted.events()]
    assert state.request_life(10_000) is None


def test_expert_stats_name_the_hottest_expert_of_each_layer():
    counts = np.array([[4, 0, 1, 0], [0, 2, 0, 3]])
    stats = expert_stats(counts)
    assert stats.hottest_per_layer == [(0, 4.0), (3, 3.0)]
    assert stats.idle_experts == 4  # over a span's mean: dead in every tick of it


def test_config_summary_names_a_window_only_for_a_policy_that_has_one():
    def policy(**sched):
        return config_summary(SessionHeader(0, 0, {"scheduler": sched}))["policy"]

    assert policy(policy="window", window_ms=5, has_window=True) == "window 5ms"
    assert policy(policy="static", window_ms=5, has_window=False) == "static"
    assert policy(policy="continuous", window_ms=0) == "continuous"  # an older trace: no has_window
    assert policy(policy="window", window_ms=200) == "window 200ms"
