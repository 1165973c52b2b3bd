"""Compare mode's panels per side (stages, requests), panel groups by size, marks, growing traces."""

from __future__ import annotations

import json
import os
import time

import tracer
import tui_synth
from test_compare_screen import text_of
from test_tui_app import until, write_ticks
from tracer.events import MarkEvent
from tracer.marks import sidecar_path
from tui.compare_app import CompareApp
from tui.compare_source import STOPPED, TraceSide
from tui.screens.compare import SidePanels
from tui.widgets.controls import Scrubber
from tui.widgets.requests import RequestTable
from tui.widgets.stages import StageGantt


def synthetic_pair(tmp_path, n: int = 120) -> tuple[str, str]:
    """Two finished synthetic recordings with stage timings; each has the trace's own mark at tick 40."""
    paths = []
    for name in ("a", "b"):
        path = str(tmp_path / f"{name}.msgpack")
        tui_synth.write_trace(path, n)
        paths.append(path)
    return paths[0], paths[1]


def visible(app: CompareApp, side: str) -> set[str]:
    """Which panel groups side `side` shows."""
    panels = app.screen.query_one(f"#side-{side}", SidePanels)
    kinds = ("experts", "load", "requests", "stages")
    return {kind for kind in kinds if panels.query_one(f".side-{kind}").display}


async def loaded(pilot) -> None:
    await until(pilot, lambda: pilot.app.status == "loaded" and pilot.app.comparison is not None)


async def test_p_cycles_the_panel_groups_on_a_small_terminal(tmp_path):
    app = CompareApp(*(TraceSide(p) for p in synthetic_pair(tmp_path)), autoplay=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await pilot.press(*["right"] * 10)
        seen = []
        for _ in range(4):
            seen.append(visible(app, "a"))
            assert visible(app, "b") == seen[-1]  # both sides show the same panels
            await pilot.press("p")
            await pilot.pause()
        assert seen == [{"experts"}, {"load"}, {"requests"}, {"stages"}]
        assert visible(app, "a") == {"experts"}  # round again
        await pilot.press("p", "p", "p")
        await pilot.pause()
        gantt = app.screen.query_one("#b-stages", StageGantt)
        assert "modelled" in str(gantt.border_subtitle) and gantt._lines  # drawn once it shows


async def test_tall_terminals_keep_the_heatmap_and_show_everything_without_the_delta_table(tmp_path):
    app = CompareApp(*(TraceSide(p) for p in synthetic_pair(tmp_path)), autoplay=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot)
        assert visible(app, "a") == {"experts", "load"}
        await pilot.press(*["right"] * 10, "p")
        await pilot.pause()
        assert visible(app, "a") == {"experts", "requests"}
        table = app.screen.query_one("#a-requests", RequestTable)
        assert len(table._rows) > 3  # recent requests of side A, as of its current tick
        await pilot.press("d")  # the delta table's room fits every panel
        await pilot.pause()
        assert visible(app, "a") == visible(app, "b") == {"experts", "load", "requests", "stages"}
    roomy = CompareApp(*(TraceSide(p) for p in synthetic_pair(tmp_path)), autoplay=False)
    async with roomy.run_test(size=(200, 60)) as pilot:
        await loaded(pilot)
        assert roomy.screen.query_one("#delta").display
        assert visible(roomy, "a") == {"experts", "load", "requests", "stages"}


async def test_marks_of_both_sides_show_jump_and_m_marks_the_focused_side(tmp_path):
    a, b = synthetic_pair(tmp_path)
    t0 = tui_synth.T0
    tracer.add_mark(b, MarkEvent(t_ns=t0 + 80 * tui_synth.TICK_NS, tick=80, text="b's note"))
    app = CompareApp(TraceSide(a), TraceSide(b), autoplay=False, align="tick")
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot)
        scrub = app.screen.query_one(Scrubber)
        assert text_of(scrub).count("◆") == 2  # tick 40 of both sides share a column; tick 80 of B
        await pilot.press("right_square_bracket")
        assert app.lockstep.indices(*app.states) == (40, 40)
        await pilot.press("right_square_bracket")
        assert app.states[1].tick_number(app.lockstep.indices(*app.states)[1]) == 80
        await pilot.press("left_square_bracket")
        assert app.lockstep.position == 40
        # nothing focused: the mark goes to A
        await pilot.press("m", *"on a", "enter")
        await pilot.pause()
        # Tab focuses side B's panels... (A first, then its table, then B)
        while not app.screen.query_one("#side-b", SidePanels).has_focus:
            await pilot.press("tab")
        await pilot.press("right", "m", *"on b", "enter")
        await pilot.pause()
    marks_a = json.loads(sidecar_path(a).read_text())["marks"]
    marks_b = json.loads(sidecar_path(b).read_text())["marks"]
    assert [(m["tick"], m["text"]) for m in marks_a] == [(40, "on a")]
    assert [(m["tick"], m["text"]) for m in marks_b] == [(80, "b's note"), (41, "on b")]


async def test_a_recording_still_being_written_is_followed(tmp_path, live):
    finished = str(tmp_path / "done.msgpack")
    tui_synth.write_trace(finished, 60)
    growing, writer = live
    write_ticks(writer, 0, 30)
    side = TraceSide(growing)
    assert side.following and not TraceSide(finished).following
    app = CompareApp(TraceSide(finished), side, autoplay=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.states[1].n_ticks == 30 and app.comparison is not None)
        assert app.status == "following"
        assert "still recording" in str(app.screen.query_one("#delta").border_title)
        write_ticks(writer, 30, 50)
        await until(pilot, lambda: app.states[1].n_ticks == 80)
        await pilot.press("end")  # B is now the longer recording: the clock reaches its new end
        assert app.lockstep.indices(*app.states) == (59, 79)
        writer.close()
        await until(pilot, lambda: app.status == "loaded" and not app._comparing)
        assert "whole recordings" in str(app.screen.query_one("#delta").border_title)
        batch = app.comparison.delta("mean_batch_seqs")
        assert batch.b == tracer.summarize(tracer.load(growing))["mean_batch_seqs"]  # final figures


async def test_the_requests_table_keeps_tpot_on_an_80_column_terminal(tmp_path):
    app = CompareApp(*(TraceSide(p) for p in synthetic_pair(tmp_path)), autoplay=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await pilot.press(*["right"] * 60, "p", "p")  # on to the requests group
        await pilot.pause()
        table = app.screen.query_one("#a-requests", RequestTable)
        assert table.display and table.size.width < 42
        header, *rows = [strip.text for strip in table._lines]
        assert header.split() == ["id", "state", "out", "TTFT", "TPOT"]  # the prompt length gave way
        assert len(header) <= table.size.width
        finished = [row for row in rows if " finished " in row]
        assert finished and all(len(row) <= table.size.width and row.endswith("ms") for row in finished)
        await pilot.resize_terminal(160, 48)
        await pilot.pause()
        assert table._lines[0].text.split() == ["id", "state", "prompt", "out", "TTFT", "TPOT"]


async def test_a_recording_whose_writer_died_ends_without_its_footer(tmp_path, live):
    finished = str(tmp_path / "done.msgpack")
    tui_synth.write_trace(finished, 60)
    crashed, writer = live
    write_ticks(writer, 0, 40)  # flushed, then abandoned: no index, no footer
    os.utime(crashed, (time.time() - 60, time.time() - 60))  # as if it died a minute ago
    side = TraceSide(crashed, stopped_after_s=5)
    assert side.following
    app = CompareApp(TraceSide(finished), side, autoplay=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.status == "loaded" and app.comparison is not None and not app._comparing)
        assert app.feeds[1].status == STOPPED and app.states[1].n_ticks == 40
        assert "whole recordings" in str(app.screen.query_one("#delta").border_title)
        batch = app.comparison.delta("mean_batch_seqs")
        assert batch.b == tracer.summarize(tracer.load(crashed))["mean_batch_seqs"]  # final figures
        write_ticks(writer, 40, 10)  # it was only a pause: followed again
        await until(pilot, lambda: app.states[1].n_ticks == 50 and app.status == "following")
        assert app.feeds[1].status in ("live", "idle")
