"""The dashboard driven through Pilot: every control, live following, damaged files, bad frames."""

from __future__ import annotations

import os

import pytest

import tui_synth
from tracer import TraceWriter
from tui.app import SPEEDS, TickscopeApp
from tui.screens.help import HelpScreen
from tui.source import LiveSource, ReplaySource
from tui.widgets.heatmap import ExpertHeatmap

SIZE = (100, 30)


async def until(pilot, condition, tries: int = 300) -> None:
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


async def test_live_follows_a_growing_file(tmp_path):
    path = str(tmp_path / "live.msgpack")
    writer = TraceWriter(path, tui_synth.header())
    try:
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
    finally:
        writer.close()


def test_live_source_states(tmp_path, monkeypatch):
    source = LiveSource(str(tmp_path / "nothing-yet.msgpack"))
    assert source.poll() == [] and source.status() == "waiting"
    tui_synth.write_trace(source.path, 3)
    assert len(source.poll()) > 0 and source.status() == "live"
    monkeypatch.setattr(source._tail, "finished", True)  # the writer's footer was read
    assert source.status() == "ended"
    monkeypatch.setattr(source._tail, "finished", False)
    monkeypatch.setattr("tui.source.time.monotonic", lambda: source._last_growth + 60)
    assert source.status() == "idle"


@pytest.mark.parametrize("damage", ["truncated", "replaced"])
async def test_live_survives_a_truncated_or_replaced_file(tmp_path, damage):
    path = str(tmp_path / "live.msgpack")
    writer = TraceWriter(path, tui_synth.header())
    try:
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
    finally:
        writer.close()


async def test_live_waits_for_a_file_that_does_not_exist_yet(tmp_path):
    path = str(tmp_path / "later.msgpack")
    app = TickscopeApp(LiveSource(path), "live")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.status == "waiting")
        tui_synth.write_trace(path, 5)
        await until(pilot, lambda: app.state.n_ticks == 5)
