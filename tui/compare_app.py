"""Compare mode: two recordings in one app, side by side, playing in lock-step.

The same widgets and `DashboardState` as the dashboard, one state per side; `LockStep` turns one
position into each side's current tick. Both files are read by worker threads (only messages
leave them): a finished recording once, a growing one followed as live mode follows it. The
whole-recording delta table is computed by a third worker from `tracer.load`, so a big pair of
recordings shows its panels long before its table; while a side grows it is recomputed now and
then, and once more when that side ends.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import get_current_worker

import tracer
from tracer.compare import Comparison, Costing, compare, config_diff
from tracer.events import MarkEvent, StageEvent
from tracer.report import trace_names
from tui.app import DEFAULT_SPEED, FRAME_S, POLL_S, SPEEDS, speed_label
from tui.compare_source import TraceSide
from tui.gc_tuning import GcTuning
from tui.lockstep import LockStep
from tui.messages import ComparisonReady, PanelResized, SideUpdate, SourceFailed
from tui.screens.compare import CompareScreen, SideFrame, SidePanels
from tui.screens.help import HelpScreen
from tui.screens.mark import MarkScreen
from tui.state import DashboardState

CHUNKS_IN_FLIGHT = 2  # per side: chunks read but not yet ingested by the UI thread
SCRUB_STEPS = 1000  # time alignment: positions the scrubber resolves
# A growing side's delta table is recomputed at most this often: `tracer.load` reads the whole file.
RECOMPARE_S = 5.0
SIDE_NAMES = ("A", "B")
# each side's marks on the shared scrubber get a colour of their own, so a note says whose it is
SIDE_STYLES = {"A": "bold cyan", "B": "bold magenta"}


class CompareApp(App[None]):
    """Two replays, one clock. `t` switches between aligning by time and by tick."""

    CSS_PATH = ["tickscope.tcss", "compare.tcss"]
    TITLE = "tickscope compare"
    STEP = Binding.Group("Step", compact=True)
    SPEED = Binding.Group("Speed", compact=True)
    MARK = Binding.Group("Mark", compact=True)
    # The compare keys come before home/end: an 80-column footer shows only the first few.
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("space", "toggle_play", "Play/Pause"),
        Binding("left", "step(-1)", "Back", key_display="←", group=STEP),
        Binding("right", "step(1)", "On", key_display="→", group=STEP),
        Binding("d", "toggle_delta", "Delta table"),
        Binding("p", "cycle_panels", "Panels"),
        Binding("t", "toggle_align", "Align time/tick"),
        Binding("left_square_bracket", "mark(-1)", "Prev mark", key_display="[", group=MARK),
        Binding("right_square_bracket", "mark(1)", "Next mark", key_display="]", group=MARK),
        Binding("m", "add_mark", "Add mark (focused side, else A)", group=MARK),
        Binding("minus", "slower", "Slower", key_display="-", group=SPEED),
        Binding("plus,equals_sign", "faster", "Faster", key_display="+", group=SPEED),
        Binding("home", "jump_start", "Start"),
        Binding("end", "jump_end", "End"),
    ]

    playing: reactive[bool] = reactive(False)
    speed_index: reactive[int] = reactive(DEFAULT_SPEED)
    status: reactive[str] = reactive("loading")

    def __init__(self, a: TraceSide, b: TraceSide, *, autoplay: bool = True, align: str = "time",
                 costing: Costing | None = None) -> None:
        super().__init__()
        self.sources = (a, b)
        self.costing = costing  # what the delta table's cost rows are costed on
        self.states = (DashboardState(), DashboardState())
        for state, source in zip(self.states, self.sources):
            state.set_header(source.header)
            state.marks.extend(tracer.read_marks(source.path)[0])  # notes kept beside the trace
        self.names = trace_names(a.path, b.path)
        self.lockstep = LockStep(align=align)
        self.autoplay = autoplay
        self.compare_screen = CompareScreen()
        self.comparison: Comparison | None = None
        self._done = [False, False]
        self._caught_up = [False, False]  # read to the end the file had (a growing one goes on)
        self._side_status = ["loading", "loading"]
        self._comparing = False
        self._compared_at = 0.0  # monotonic time the last comparison started
        self._stale = False  # a side grew (or ended) since the last comparison started
        self._slots = (threading.Semaphore(CHUNKS_IN_FLIGHT), threading.Semaphore(CHUNKS_IN_FLIGHT))
        self._wall = 0.0
        self._frame_pending = False
        self._last_error = ""
        self._gc = GcTuning()  # see tui/gc_tuning.py: no 50-130 ms full collections mid-frame

    # -- lifecycle ----------------------------------------------------------------------------

    def get_default_screen(self) -> Screen:
        return self.compare_screen

    def on_mount(self) -> None:
        self._gc.apply()
        self._clock = self.set_interval(FRAME_S, self._advance, pause=True)
        for side in (0, 1):
            self._read_side(side)
        self._start_comparison()
        self._schedule_frame()

    def on_unmount(self) -> None:
        self._gc.restore()

    def on_resize(self) -> None:
        self._schedule_frame()

    def on_panel_resized(self, message: PanelResized) -> None:
        self._schedule_frame()

    @work(thread=True, exit_on_error=False)
    def _read_side(self, side: int) -> None:
        """Read one side: a finished recording to its end, a growing one for as long as it grows.
        Each post waits for a free slot, so memory stays bounded."""
        worker = get_current_worker()
        source, slots = self.sources[side], self._slots[side]

        def post(message: SideUpdate) -> bool:
            while not slots.acquire(timeout=POLL_S):
                if worker.is_cancelled:  # never wait past the app quitting
                    return False
            self.post_message(message)
            return True

        try:
            if not source.following:
                for events in source.chunks():
                    if not post(SideUpdate(side, events, False, "loading")):
                        return
                post(SideUpdate(side, [], True, source.status()))
                return
            last_status = ""
            while not worker.is_cancelled:
                frames = source.poll()
                status, done = source.status(), source.done
                if frames or status != last_status:  # `done` follows the status
                    if not post(SideUpdate(side, frames, done, status)):
                        return
                    last_status = status
                if source.finished:  # a side that only stopped is still polled: it may go on
                    return
                if not frames:
                    time.sleep(POLL_S)
        except Exception as exc:  # a bad trace must not take the app down
            self.post_message(SourceFailed(f"{self.names[side]}: {type(exc).__name__}: {exc}"))

    @work(thread=True, exit_on_error=False)
    def _compute_comparison(self) -> None:
        paths = [s.path for s in self.sources]
        if not all(os.path.isfile(p) for p in paths):
            self.post_message(ComparisonReady(None, "the delta table needs both recordings as files"))
            return
        try:
            a, b = (tracer.load(p) for p in paths)
            comparison = compare(a, b, a_name=self.names[0], b_name=self.names[1], costing=self.costing)
            self.post_message(ComparisonReady(comparison))
        except Exception as exc:  # shown in the panel; the side-by-side view still works
            self.post_message(ComparisonReady(None, f"cannot compare: {type(exc).__name__}: {exc}"))

    def _start_comparison(self) -> None:
        self._comparing, self._stale = True, False
        self._compared_at = time.monotonic()
        self._compute_comparison()

    def _maybe_recompare(self) -> None:
        """A growing side changes the figures: compare again, one worker at a time, and not more
        often than RECOMPARE_S unless every side has ended (the final figures, at once)."""
        if self._comparing or not self._stale:
            return
        if all(self._done) or time.monotonic() - self._compared_at >= RECOMPARE_S:
            self._start_comparison()
        else:
            self.set_timer(RECOMPARE_S, self._maybe_recompare)

    def on_side_update(self, message: SideUpdate) -> None:
        side = message.side
        try:
            ticks = self.states[side].n_ticks
            self.states[side].ingest(message.items)
        finally:
            self._slots[side].release()
        self._side_status[side] = message.status
        ended = message.done and not self._done[side]
        self._done[side] = message.done
        if self.sources[side].following:
            self._caught_up[side] = True  # each poll reads to the end the file has now
            self._stale = self._stale or self.states[side].n_ticks != ticks or ended
        else:
            self._caught_up[side] = message.done
        if all(self._caught_up) and self.status == "loading":
            self.playing = self.autoplay
        if all(self._caught_up):
            self.status = "loaded" if all(self._done) else "following"
        self._maybe_recompare()
        self._schedule_frame()

    def on_comparison_ready(self, message: ComparisonReady) -> None:
        self._comparing = False
        self.comparison = message.comparison
        delta = self.compare_screen.query_one("#delta")
        growing = [n for n, s, done in zip(SIDE_NAMES, self.sources, self._done) if s.following and not done]
        delta.border_title = "delta over the whole recordings (d: toggle)" if not growing else (
            f"delta so far: {' and '.join(growing)} still recording (d: toggle)"
        )
        delta.show(message.comparison, message.error)  # type: ignore[attr-defined]
        self._maybe_recompare()

    def on_source_failed(self, message: SourceFailed) -> None:
        self.status = "error"
        self.notify(message.error, title="cannot read the trace", severity="error", timeout=10)

    def watch_status(self) -> None:
        self._schedule_frame()

    # -- playback -----------------------------------------------------------------------------

    def watch_playing(self, playing: bool) -> None:
        self._wall = time.monotonic()
        if playing:
            self._clock.resume()
        else:
            self._clock.pause()
        self._schedule_frame()

    def watch_speed_index(self) -> None:
        self._schedule_frame()

    def _advance(self) -> None:
        now = time.monotonic()
        wall, self._wall = now - self._wall, now
        # At the end, a growing recording holds the clock there to follow it; else playing stops.
        if not self.lockstep.advance(*self.states, wall, SPEEDS[self.speed_index]) and all(self._done):
            self.playing = False
        self._schedule_frame()

    def action_toggle_play(self) -> None:
        a, b = self.states
        if not self.playing and self.lockstep.position >= self.lockstep.length(a, b):
            self.lockstep.seek(a, b, 0.0)  # play at the end starts over
        self.playing = not self.playing

    def action_step(self, delta: int) -> None:
        self.playing = False
        self.lockstep.step(*self.states, delta)
        self._schedule_frame()

    def action_faster(self) -> None:
        self.speed_index = min(self.speed_index + 1, len(SPEEDS) - 1)

    def action_slower(self) -> None:
        self.speed_index = max(self.speed_index - 1, 0)

    def action_jump_start(self) -> None:
        self.lockstep.seek(*self.states, 0.0)
        self._schedule_frame()

    def action_jump_end(self) -> None:
        a, b = self.states
        self.lockstep.seek(a, b, self.lockstep.length(a, b))
        self._schedule_frame()

    def action_seek_fraction(self, fraction: float) -> None:
        a, b = self.states
        self.lockstep.seek(a, b, fraction * self.lockstep.length(a, b))
        self._schedule_frame()

    def action_toggle_align(self) -> None:
        self.lockstep.toggle(*self.states)
        self.notify(f"aligned by {self.lockstep.align}", timeout=2)
        self._schedule_frame()

    def action_toggle_delta(self) -> None:
        self.compare_screen.toggle_delta()

    def action_cycle_panels(self) -> None:
        group = self.compare_screen.cycle_panels(any(s.has_stages for s in self.states))
        if group is None:
            self.notify("every panel is shown at this size", timeout=2)

    # -- marks --------------------------------------------------------------------------------

    def _mark_positions(self) -> list[tuple[float, str, MarkEvent]]:
        """Both sides' marks as (position in the alignment's units, side, mark), in order. A mark
        sits where its side shows its tick: that tick's ordinal, or the time it ended."""
        out = []
        for name, state in zip(SIDE_NAMES, self.states):
            if not state.n_ticks:
                continue
            for mark in state.marks:
                index = state.index_of_tick(mark.tick)
                out.append((float(index) if self.lockstep.align == "tick" else state.time_at(index), name, mark))
        return sorted(out, key=lambda m: m[0])

    def action_mark(self, direction: int) -> None:
        marks = self._mark_positions()
        if not marks:
            self.notify("no marks in either recording")
            return
        here = self.lockstep.position
        # a hair past the position: a mark the clock sits on is not the next one
        targets = [m for m in marks if (m[0] > here + 1e-9 if direction > 0 else m[0] < here - 1e-9)]
        if not targets:
            return
        position, side, mark = targets[0] if direction > 0 else targets[-1]
        self.playing = False
        self.lockstep.seek(*self.states, position)
        self.notify(f"{side} tick {mark.tick}: {mark.text}", timeout=3)
        self._schedule_frame()

    def _focused_side(self) -> int:
        """The side holding the focus (Tab or a click on it); A when neither does."""
        node = self.focused
        while node is not None and not isinstance(node, SidePanels):
            node = node.parent  # type: ignore[assignment]
        return SIDE_NAMES.index(node.side.upper()) if isinstance(node, SidePanels) else 0

    def action_add_mark(self) -> None:
        side = self._focused_side()
        state, path = self.states[side], self.sources[side].path
        if not state.n_ticks or not os.path.isfile(path):
            self.notify("marks need a recorded tick in a trace file", severity="warning")
            return
        index = self.lockstep.indices(*self.states)[side]  # where `m` was pressed, even if play goes on
        tick, t_s = state.tick_number(index), state.time_at(index)
        mark = MarkEvent(t_ns=state.t0_ns + round(t_s * 1e9), tick=tick, text="")
        where = f"{SIDE_NAMES[side]} tick {tick} ({t_s:.2f} s)"
        self.push_screen(MarkScreen(where), lambda text: self._save_mark(side, mark, text))

    def _save_mark(self, side: int, mark: MarkEvent, text: str | None) -> None:
        if not text:
            return
        mark = MarkEvent(t_ns=mark.t_ns, tick=mark.tick, text=text)
        try:
            # Beside the trace, never in it: a trace file is append-only and may be someone else's.
            saved = tracer.add_mark(self.sources[side].path, mark)
        except (OSError, ValueError) as exc:
            self.notify(f"mark not saved: {exc}", severity="error")
            return
        self.states[side].marks.append(mark)
        self.notify(f"{SIDE_NAMES[side]}: mark saved in {os.path.basename(saved)}", timeout=3)
        self._schedule_frame()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # -- frames -------------------------------------------------------------------------------

    def _schedule_frame(self) -> None:
        if not self._frame_pending:
            self._frame_pending = True
            self.call_later(self._render_frame)

    def playback_label(self) -> str:
        return f"{'▶' if self.playing else '⏸'} {speed_label(SPEEDS[self.speed_index])} · by {self.lockstep.align}"

    def _render_frame(self) -> None:
        self._frame_pending = False
        if not self.compare_screen.is_mounted:
            return
        a, b = self.states
        diffs = None
        if a.header is not None and b.header is not None:
            diffs = config_diff(a.header.config or {}, b.header.config or {})
        self.compare_screen.show_header(self.names, diffs, self.status)
        try:
            indices = self.lockstep.indices(a, b)
            frames = tuple(
                SideFrame(state, index, source.path, status, *self._detail(side, index))
                for side, (state, index, source, status)
                in enumerate(zip(self.states, indices, self.sources, self._side_status))
            )
            self.compare_screen.show_frame(frames, self.playback_label(), self._scrub(indices))  # type: ignore[arg-type]
        except Exception as exc:  # one bad tick must not end the session: pause and say so
            self.playing = False
            error = f"compare frame failed: {type(exc).__name__}: {exc}"
            if error != self._last_error:
                self._last_error = error
                self.log.error(error)
                self.notify(error, title="paused", severity="error", timeout=10)

    def _detail(self, side: int, index: int) -> tuple[np.ndarray | None, StageEvent | None]:
        """The current tick's expert counts and stage cells, read again from the trace when the
        state no longer holds them."""
        state = self.states[side]
        if not state.n_ticks:
            return None, None
        tick = state.tick_number(index)
        detail = state.detail(index)
        if detail is None:
            state.put_detail(tick, *self.sources[side].detail(tick))
            detail = state.detail(index)
        return (detail.experts, detail.stages) if detail is not None else (None, None)

    def _scrub(self, indices: tuple[int, int]) -> tuple[int, int, list[tuple[int, str]], str]:
        """Scrubber position, total, each side's mark positions and the label, in the alignment's
        own units (tick ordinals, or SCRUB_STEPS steps of the time line)."""
        a, b = self.states
        ls = self.lockstep
        labels = []
        for name, state, index in zip(SIDE_NAMES, self.states, indices):
            labels.append(f"{name} tick {state.tick_number(index)}" if state.n_ticks else f"{name} —")
        marks = self._mark_positions()
        if ls.align == "tick":
            total = max(a.n_ticks, b.n_ticks)
            label = f"tick #{int(ls.position)} · " + " · ".join(labels)
            return int(ls.position), total, [(int(p), SIDE_STYLES[side]) for p, side, _ in marks], label
        length = ls.length(a, b)
        scale = (SCRUB_STEPS - 1) / length if length > 0 else 0.0
        label = f"{ls.position:.2f}/{length:.2f}s · " + " · ".join(labels)
        return round(ls.position * scale), SCRUB_STEPS, [(round(p * scale), SIDE_STYLES[side]) for p, side, _ in marks], label


def run_compare(a: str, b: str, *, align: str = "time", costing: Costing | None = None) -> None:
    """Open two recordings side by side, the delta table costed as `costing` asks. Both are opened
    first, so a missing or malformed file raises (`TraceFormatError`, `OSError`) before the terminal
    is taken over."""
    sides = [TraceSide(a)]
    try:
        sides.append(TraceSide(b))
        CompareApp(sides[0], sides[1], align=align, costing=costing).run()
    finally:
        for side in sides:
            side.close()
