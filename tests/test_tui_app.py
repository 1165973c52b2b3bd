"""The dashboard driven through Pilot: every control, live following, damaged files, bad frames."""

from __future__ import annotations

import os

import numpy as np
import pytest

import tui_synth
from tracer import ExpertsEvent, TraceFormatError, TraceWriter
from tracer.codec import packb
from tui.app import SPEEDS, TickscopeApp
from tui.screens.help import HelpScreen
from tui.screens.request import RequestScreen
from tui.source import LiveSource, ReplaySource, decode_frame
from tui.state import DashboardState
from tui.widgets.heatmap import ExpertHeatmap
from tui.widgets.requests import RequestTable

SIZE = (100, 30)


async def until(pilot, condition, tries: int = 400) -> None:
    """Let the app run until `condition()` holds (bounded, so a broken app fails, not hangs)."""
    for _ in range(tries):
        if condition():
            return
        await pilot.pause(0.02)
    assert condition()


@pytest.fixture
def trace(tmp_path) -> str:
    path = str(tmp_path / "synthetic.msgpack")
    tui_synth.write_trace(path, 120)
    return path


def replay_app(path: str) -> TickscopeApp:
    return TickscopeApp(ReplaySource(path), "replay", autoplay=False)


async def loaded(pilot) -> None:
    await until(pilot, lambda: pilot.app.status == "loaded" and pilot.app.state.n_ticks == 120)


async def test_replay_steps_jumps_and_seeks(trace):
    app = replay_app(trace)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert app.cursor == 0 and not app.playing
        await pilot.press("right", "right", "right")
        assert app.cursor == 3
        await pilot.press("left")
        assert app.cursor == 2
        await pilot.press("end")
        assert app.cursor == 119
        await pilot.press("right")  # stepping past the end stays at the end
        assert app.cursor == 119
        await pilot.press("home")
        assert app.cursor == 0
        await pilot.press("g", *"57", "enter")
        assert app.state.tick_number(app.cursor) == 57
        await pilot.press("g", *"1.0s", "enter")  # the last tick that ended by 1.0 s is tick 49
        assert app.state.tick_number(app.cursor) == 49
        await pilot.press("g", *"nonsense", "enter")
        assert app.state.tick_number(app.cursor) == 49
        await pilot.press("right_square_bracket")  # the only mark (tick 40) is behind: stay
        assert app.state.tick_number(app.cursor) == 49
        await pilot.press("left_square_bracket")
        assert app.state.tick_number(app.cursor) == 40
        assert any(n.message == "burst starts" for n in app._notifications)  # the mark's note is shown


async def test_replay_play_pause_and_speed(trace):
    app = replay_app(trace)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("plus", "plus")
        assert SPEEDS[app.speed_index] == 5.0
        await pilot.press("minus")
        assert SPEEDS[app.speed_index] == 2.0
        for _ in range(len(SPEEDS)):
            await pilot.press("plus")
        assert SPEEDS[app.speed_index] is None  # "max": one tick per frame
        await pilot.press("space")
        assert app.playing
        await until(pilot, lambda: app.cursor > 3)
        await pilot.press("space")
        assert not app.playing
        stopped = app.cursor
        await pilot.pause(0.2)
        assert app.cursor == stopped
        await pilot.press("minus")  # 100x: the 2.4 s recording plays out in a few frames
        await pilot.press("space")  # plays to the end, then stops there by itself
        await until(pilot, lambda: not app.playing)
        assert app.cursor == 119
        for _ in range(len(SPEEDS)):
            await pilot.press("minus")
        assert SPEEDS[app.speed_index] == 0.1


async def test_controls_under_the_mouse_call_the_same_actions(trace):
    app = replay_app(trace)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.click("#buttons", offset=(13, 0))  # " ⏭ " jump to end
        assert app.cursor == 119
        await pilot.click("#buttons", offset=(1, 0))  # " ⏮ " jump to start
        assert app.cursor == 0
        await pilot.click("#scrubber", offset=(1, 0))
        assert 0 < app.cursor < 10


async def test_heat_span_stages_help_and_quit(trace):
    app = replay_app(trace)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await pilot.press("end", "a")
        assert app.heat_span == 10
        await pilot.pause()
        assert "mean of last 10" in app.query_one(ExpertHeatmap).border_subtitle
        await pilot.press("s")
        assert app.dashboard.has_class("show-stages")
        assert app.query_one("#stages").display and not app.query_one("#experts").display
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.screen is app.dashboard
        await pilot.press("q")
    assert app.return_code == 0


async def test_a_frame_that_fails_pauses_and_says_so(trace, monkeypatch):
    app = replay_app(trace)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("space")
        assert app.playing

        def broken(*args, **kwargs):
            raise RuntimeError("cannot draw this")

        monkeypatch.setattr(ExpertHeatmap, "show", broken)
        await until(pilot, lambda: not app.playing)
        assert any("cannot draw this" in n.message for n in app._notifications)
        assert app.is_running


def write_ticks(writer: TraceWriter, start: int, count: int) -> None:
    for event in tui_synth.ticks(start, count):
        writer.emit(event)
    assert writer.flush(timeout=5)


async def test_live_follows_a_growing_file(live):
    path, writer = live
    write_ticks(writer, 0, 30)
    app = TickscopeApp(LiveSource(path), "live")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.state.n_ticks == 30)
        assert app.playing and app.cursor == 29 and app.status == "live"
        write_ticks(writer, 30, 30)
        await until(pilot, lambda: app.state.n_ticks == 60)
        assert app.cursor == 59  # following the end
        await pilot.press("left")  # stepping back stops following...
        assert not app.playing and app.cursor == 58
        write_ticks(writer, 60, 10)
        await until(pilot, lambda: app.state.n_ticks == 70)
        assert app.cursor == 58  # ...so new ticks do not move the view
        await pilot.press("end")
        assert app.playing and app.cursor == 69
        await pilot.press("space")
        assert not app.playing


def test_live_source_states(tmp_path, monkeypatch):
    source = LiveSource(str(tmp_path / "nothing-yet.msgpack"))
    assert source.poll() == [] and source.status() == "waiting"
    writer = TraceWriter(source.path, tui_synth.header())
    write_ticks(writer, 0, 3)
    assert len(source.poll()) > 0 and source.status() == "live"
    with monkeypatch.context() as m:
        m.setattr("tui.source.time.monotonic", lambda: source._last_growth + 60)
        assert source.status() == "idle"
    writer.close()  # the footer of a clean close is what says "ended"
    source.poll()
    assert source.status() == "ended"
    source.close()


async def test_live_shows_ended_when_the_writer_closes(live):
    path, writer = live
    write_ticks(writer, 0, 10)
    app = TickscopeApp(LiveSource(path), "live")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.state.n_ticks == 10 and app.status == "live")
        write_ticks(writer, 10, 5)
        writer.close()
        await until(pilot, lambda: app.status == "ended")
        assert app.state.n_ticks == 15 and app.cursor == 14
        await pilot.pause()
        assert " ended " in str(app.query_one("#header").render())


async def test_live_reads_older_detail_back_through_the_growing_index(live):
    path, writer = live
    for start in range(0, 60, 20):  # three flushes: three events frames
        write_ticks(writer, start, 20)
    recorded = {e.tick: e.counts for e in tui_synth.ticks(0, 20) if isinstance(e, ExpertsEvent)}
    app = TickscopeApp(LiveSource(path), "live")
    app.state = DashboardState(detail_capacity=8)  # only the last few ticks stay in memory
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.state.n_ticks == 60)
        assert app.state.detail(app.state.index_of_tick(5)) is None
        await pilot.press("g", *"5", "enter")
        await pilot.pause()
        detail = app.state.detail(app.cursor)
        assert app.state.tick_number(app.cursor) == 5
        assert detail is not None and np.array_equal(detail.experts, recorded[5])


@pytest.mark.parametrize("damage", ["truncated", "replaced"])
async def test_live_survives_a_truncated_or_replaced_file(live, tmp_path, damage):
    path, writer = live
    write_ticks(writer, 0, 20)
    app = TickscopeApp(LiveSource(path), "live")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.state.n_ticks == 20)
        if damage == "truncated":
            os.truncate(path, 64)
        else:
            other = str(tmp_path / "other.msgpack")
            tui_synth.write_trace(other, 5)
            os.replace(other, path)
        await until(pilot, lambda: app.status == damage)
        assert any(damage in n.message for n in app._notifications)
        assert app.is_running and app.state.n_ticks == 20  # what was read stays on screen
        await pilot.press("left")
        assert app.cursor == 18


async def test_live_waits_for_a_file_that_does_not_exist_yet(tmp_path):
    path = str(tmp_path / "later.msgpack")
    app = TickscopeApp(LiveSource(path), "live")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.status == "waiting")
        tui_synth.write_trace(path, 5)
        await until(pilot, lambda: app.state.n_ticks == 5)


def test_a_replay_reads_its_frames_through_the_index_the_current_one_first(tmp_path):
    path = str(tmp_path / "long.msgpack")
    tui_synth.write_trace(path, 2000)  # several events frames
    header, events = tui_synth.recording(2000)
    whole = DashboardState()
    whole.set_header(header)
    whole.ingest(events)
    source = ReplaySource(path)
    try:
        state = DashboardState()
        state.set_header(source.header)
        state.set_layout(source.layout())
        assert len(source.layout()) >= 3 and state.n_ticks == 2000
        fetched = source.fetch(1500)  # what a seek does: only the frame holding the tick
        state.ingest_frame(fetched)
        index = state.index_of_tick(1500)
        assert state.tick_number(index) == 1500 and 0 < state.loaded_share < 1
        assert np.array_equal(state.detail(index).experts, whole.detail(whole.index_of_tick(1500)).experts)
        source.focus(1500)
        first = source.poll()  # the frames before the current one come next: the latency window
        assert first and first[0].frame == fetched.frame - 1
        charts = ("throughput", "batch_tokens", "seqs")
        for data in first:
            state.ingest_frame(data)
        while not source.done:
            for data in source.poll():
                state.ingest_frame(data)
                for name in charts:  # the buckets follow each frame read, bucket by bucket
                    state.series(name, 0, 37)
        assert state.loaded_share == 1
        for name in ("tick", "end_s", "seqs", "decode_tokens", "queue_depth", "throughput", "batch_tokens"):
            assert np.array_equal(state.values(name), whole.values(name)), name
        for name in charts:
            kept, fresh = state.series(name, 1999, 37), whole.series(name, 1999, 37)
            assert np.array_equal(kept.lo, fresh.lo) and np.array_equal(kept.hi, fresh.hi), name
            assert kept.peak == fresh.peak and kept.cursor_bucket == fresh.cursor_bucket == 36
        assert state.counters(1999) == whole.counters(1999)
        assert state.recent_requests(1999, 10) == whole.recent_requests(1999, 10)
    finally:
        source.close()


def test_decode_frame_refuses_malformed_tick_fields():
    payload = packb([[1, 0, "start", 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]])
    with pytest.raises(TraceFormatError):
        decode_frame(payload, 0, detail=False)


async def test_a_request_picked_in_the_table_opens_its_timeline(trace):
    app = replay_app(trace)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("g", *"60", "enter", "r")
        table = app.query_one(RequestTable)
        assert table.has_focus
        await pilot.press("down", "right")  # the table moves its cursor; right still steps
        assert app.state.tick_number(app.cursor) == 61
        await pilot.pause()
        picked = table.picked
        assert picked is not None
        await pilot.press("enter")
        assert isinstance(app.screen, RequestScreen) and app.screen.life.request == picked
        await pilot.press("escape")
        assert app.screen is app.dashboard
        await pilot.click(RequestTable, offset=(3, 2))  # a click on the first row opens it
        await pilot.pause()
        assert isinstance(app.screen, RequestScreen)
        assert app.screen.life.request == app.state.recent_requests(app.cursor, 1)[0].request


async def test_heatmap_over_a_span_counts_dead_experts(trace):
    app = replay_app(trace)
    async with app.run_test(size=(160, 48)) as pilot:  # room for the per-layer line
        await loaded(pilot)
        await pilot.press("end")
        heat = app.query_one(ExpertHeatmap)
        assert "idle" in "".join(s.text for s in heat._lines)
        await pilot.press("a")
        await pilot.pause()
        text = "".join(s.text for s in heat._lines)
        assert "dead" in text and "hot by layer" in text
