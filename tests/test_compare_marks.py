"""Marks: notes kept beside a trace, merged by tracer.load, added with `m` in the dashboard."""

from __future__ import annotations

import json

import pytest

import tracer
import tui_synth
from tracer.events import MarkEvent
from tracer.marks import sidecar_path
from tui.app import TickscopeApp
from tui.source import ReplaySource


def test_sidecar_marks_merge_with_the_traces_own(tmp_path):
    path = tmp_path / "t.msgpack"
    tui_synth.write_trace(str(path), 60)
    own = tracer.load(path).marks.height
    t0 = tracer.load(path).header.t0_mono_ns
    saved = tracer.add_mark(path, MarkEvent(t_ns=t0 + 250_000_000, tick=12, text="first"))
    tracer.add_mark(path, MarkEvent(t_ns=t0 + 100_000_000, tick=5, text="earlier"))
    assert saved == sidecar_path(path) and saved.name == "t.msgpack.marks.json"
    marks = tracer.load(path).marks
    assert marks.height == own + 2
    ours = marks.filter(marks["text"].is_in(["first", "earlier"]))
    assert ours["tick"].to_list() == [5, 12]  # in time order, whichever was added first
    assert ours["t_s"].to_list() == [0.1, 0.25]
    assert tracer.load(path).problems == []


def test_a_broken_sidecar_is_reported_not_fatal_and_never_overwritten(tmp_path):
    path = tmp_path / "t.msgpack"
    tui_synth.write_trace(str(path), 30)
    side = sidecar_path(path)
    side.write_text('{"version": 1, "marks": [{"t_ns": 1, "tick": true, "text": "x"}, 5]}')
    marks, problems = tracer.read_marks(path)
    assert marks == [] and len(problems) == 2
    side.write_text("{not json")
    trace = tracer.load(path)
    assert any("marks.json" in p for p in trace.problems)
    with pytest.raises(ValueError, match="cannot be read"):
        tracer.add_mark(path, MarkEvent(t_ns=1, tick=1, text="x"))
    assert side.read_text() == "{not json"


async def test_m_adds_a_note_at_the_current_tick_and_it_persists(tmp_path):
    path = tmp_path / "t.msgpack"
    tui_synth.write_trace(str(path), 120)
    app = TickscopeApp(ReplaySource(str(path)), "replay", autoplay=False)
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(300):
            if app.status == "loaded" and app.state.n_ticks == 120:
                break
            await pilot.pause(0.02)
        await pilot.press("right", "right", "right")
        tick = app.state.tick_number(app.cursor)
        before = len(app.state.marks)
        await pilot.press("m", *"queue grows", "enter")
        await pilot.pause()
        assert len(app.state.marks) == before + 1  # shown on the scrubber at once
    stored = json.loads(sidecar_path(path).read_text())["marks"]
    assert [(m["tick"], m["text"]) for m in stored] == [(tick, "queue grows")]
    loaded = tracer.load(path).marks
    assert loaded.filter(loaded["text"] == "queue grows")["tick"].to_list() == [tick]
    # a new session of the dashboard shows it again
    again = TickscopeApp(ReplaySource(str(path)), "replay", autoplay=False)
    async with again.run_test(size=(100, 30)):
        assert any(m.text == "queue grows" for m in again.state.marks)
