"""Compare mode through Pilot on two real tiny recordings: lock-step, alignment, the delta table."""

from __future__ import annotations

import gc
import io

import numpy as np
import pytest
from rich.console import Console

import tui_synth
from test_tui_app import until
from tui.app import TickscopeApp
from tui.compare_app import CompareApp
from tui.compare_source import TraceSide
from tui.gc_tuning import GC_THRESHOLDS
from tui.lockstep import LockStep
from tui.screens.compare import SidePanels
from tui.source import ReplaySource
from tui.state import DashboardState
from tui.widgets.delta import CompareHeader, DeltaPanel
from tui.widgets.header import TraceHeader

SIZE = (160, 48)


def text_of(widget) -> str:
    """What a Static shows, as plain text (its content may be a rich Group or Table)."""
    console = Console(width=400, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()


@pytest.fixture
def app(compare_pair) -> CompareApp:
    return CompareApp(TraceSide(compare_pair[0]), TraceSide(compare_pair[1]), autoplay=False)


async def loaded(pilot) -> None:
    await until(pilot, lambda: pilot.app.status == "loaded" and pilot.app.comparison is not None)


async def test_time_alignment_steps_to_the_next_tick_end_of_either_side(app):
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        a, b = app.states
        assert app.lockstep.align == "time" and app.lockstep.indices(a, b) == (0, 0)
        # every tick end of either side, in order: each press moves the clock to the next (how many
        # of them each side has depends on how fast the box recorded them, so nothing else is assumed)
        ends = np.unique(np.concatenate([a.ticks.col("end_s"), b.ticks.col("end_s")]))
        ends = ends[ends > 0]
        for step in range(21):
            await pilot.press("right")
            assert app.lockstep.position == pytest.approx(ends[min(step, len(ends) - 1)])
        ia, ib = app.lockstep.indices(a, b)
        t = app.lockstep.position
        # each side shows the last tick that ended by the shared clock
        assert a.time_at(ia) <= t and (ia + 1 == a.n_ticks or a.time_at(ia + 1) > t)
        assert b.time_at(ib) <= t and (ib + 1 == b.n_ticks or b.time_at(ib + 1) > t)
        await pilot.press("left")
        assert app.lockstep.position < t


async def test_tick_alignment_moves_both_sides_together(app):
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        a, b = app.states
        for _ in range(5):
            await pilot.press("right")
        a_index = app.lockstep.indices(a, b)[0]
        await pilot.press("t")
        assert app.lockstep.align == "tick"
        assert app.lockstep.indices(a, b) == (a_index, a_index)  # A keeps its tick
        await pilot.press("right", "right")
        assert app.lockstep.indices(a, b) == (a_index + 2, a_index + 2)
        await pilot.press("end")
        assert app.lockstep.indices(a, b) == (a.n_ticks - 1, b.n_ticks - 1)
        await pilot.press("t")
        assert app.lockstep.align == "time"


async def test_panels_show_both_recordings_and_what_differs(app, compare_pair):
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("right", "right", "right")
        await pilot.pause()
        sides = list(app.screen.query(SidePanels))
        assert [s.side for s in sides] == ["a", "b"]
        assert compare_pair[0].name in text_of(sides[0].query_one(TraceHeader))
        assert compare_pair[1].name in text_of(sides[1].query_one(TraceHeader))
        header = text_of(app.screen.query_one(CompareHeader))
        assert "scheduler.window_ms 5 → 100" in header
        delta = app.screen.query_one(DeltaPanel)
        assert delta.display  # tall enough: shown under the sides
        assert "TPOT p50" in text_of(delta) and "cheaper per token" in text_of(delta)


async def test_delta_table_takes_the_sides_place_on_a_small_terminal(app):
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        delta, sides = app.screen.query_one(DeltaPanel), app.screen.query_one("#sides")
        assert not delta.display and sides.display
        await pilot.press("d")
        await pilot.pause()
        assert delta.display and not sides.display


async def test_playing_advances_both_in_lock_step_and_stops_at_the_end(app):
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("space")
        await until(pilot, lambda: app.lockstep.position > 0.1)
        a, b = app.states
        ia, ib = app.lockstep.indices(a, b)
        assert ia == a.index_at_time(app.lockstep.position) and ib == b.index_at_time(app.lockstep.position)
        await pilot.press(*["plus"] * 6)  # 100x: the rest of the recording plays in a blink
        await until(pilot, lambda: not app.playing)
        assert app.lockstep.indices(a, b) == (a.n_ticks - 1, b.n_ticks - 1)


def synthetic_state(n: int) -> DashboardState:
    header, events = tui_synth.recording(n)
    state = DashboardState()
    state.set_header(header)
    state.ingest(events)
    return state


def test_lockstep_holds_the_shorter_recording_at_its_end():
    a, b = synthetic_state(50), synthetic_state(120)
    lock = LockStep("tick")
    lock.seek(a, b, 100)
    assert lock.indices(a, b) == (49, 100)
    lock.seek(a, b, 10_000)
    assert lock.position == 119
    lock = LockStep("time")
    lock.seek(a, b, 10_000)
    assert lock.position == pytest.approx(b.duration_s)
    assert lock.indices(a, b) == (49, 119)


@pytest.mark.parametrize("kind", ["dashboard", "compare"])
async def test_both_apps_tune_the_collector_while_running_and_restore_it(kind, compare_pair):
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    if kind == "dashboard":
        source = ReplaySource(compare_pair[0])
        app = TickscopeApp(source, "replay", autoplay=False)
    else:
        app = CompareApp(TraceSide(compare_pair[0]), TraceSide(compare_pair[1]), autoplay=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > frozen
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
    if kind == "dashboard":
        source.close()
