"""Compare mode: two recordings in one app, side by side, playing in lock-step.

The same widgets and `DashboardState` as the dashboard, one state per side; `LockStep` turns one
position into each side's current tick. Both files are read by worker threads (only messages
leave them); the whole-recording delta table is computed by a third worker from `tracer.load`, so
a big pair of recordings shows its panels long before its table.
"""

from __future__ import annotations

import os
import threading
import time

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import get_current_worker

import tracer
from tracer.compare import Comparison, compare, config_diff
from tracer.report import trace_names
from tui.app import DEFAULT_SPEED, FRAME_S, POLL_S, SPEEDS, speed_label
from tui.compare_source import TraceSide
from tui.lockstep import LockStep
from tui.messages import ComparisonReady, PanelResized, SideUpdate, SourceFailed
from tui.screens.compare import CompareScreen, SideFrame
from tui.screens.help import HelpScreen
from tui.state import DashboardState

CHUNKS_IN_FLIGHT = 2  # per side: chunks read but not yet ingested by the UI thread
SCRUB_STEPS = 1000  # time alignment: positions the scrubber resolves


class CompareApp(App[None]):
    """Two replays, one clock. `t` switches between aligning by time and by tick."""

    CSS_PATH = ["tickscope.tcss", "compare.tcss"]
    TITLE = "tickscope compare"
    STEP = Binding.Group("Step", compact=True)
    SPEED = Binding.Group("Speed", compact=True)
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("space", "toggle_play", "Play/Pause"),
        Binding("left", "step(-1)", "Back", key_display="←", group=STEP),
        Binding("right", "step(1)", "On", key_display="→", group=STEP),
        Binding("minus", "slower", "Slower", key_display="-", group=SPEED),
        Binding("plus,equals_sign", "faster", "Faster", key_display="+", group=SPEED),
        Binding("home", "jump_start", "Start"),
        Binding("end", "jump_end", "End"),
        Binding("t", "toggle_align", "Align time/tick"),
        Binding("d", "toggle_delta", "Delta table"),
    ]

    playing: reactive[bool] = reactive(False)
    speed_index: reactive[int] = reactive(DEFAULT_SPEED)
    status: reactive[str] = reactive("loading")

    def __init__(self, a: TraceSide, b: TraceSide, *, autoplay: bool = True, align: str = "time") -> None:
        super().__init__()
        self.sources = (a, b)
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
        self._side_status = ["loading", "loading"]
        self._slots = (threading.Semaphore(CHUNKS_IN_FLIGHT), threading.Semaphore(CHUNKS_IN_FLIGHT))
        self._wall = 0.0
        self._frame_pending = False
        self._last_error = ""

    # -- lifecycle ----------------------------------------------------------------------------

    def get_default_screen(self) -> Screen:
        return self.compare_screen

    def on_mount(self) -> None:
        self._clock = self.set_interval(FRAME_S, self._advance, pause=True)
        for side in (0, 1):
            self._read_side(side)
        self._compute_comparison()
        self._schedule_frame()

    def on_resize(self) -> None:
        self._schedule_frame()

    def on_panel_resized(self, message: PanelResized) -> None:
        self._schedule_frame()

    @work(thread=True, exit_on_error=False)
    def _read_side(self, side: int) -> None:
        """Read one side to its end; each chunk waits for a free slot, so memory stays bounded."""
        worker = get_current_worker()
        source, slots = self.sources[side], self._slots[side]

        def post(message: SideUpdate) -> bool:
            while not slots.acquire(timeout=POLL_S):
                if worker.is_cancelled:  # never wait past the app quitting
                    return False
            self.post_message(message)
            return True

        try:
            for events in source.chunks():
                if not post(SideUpdate(side, events, False, "")):
                    return
        except Exception as exc:  # a bad trace must not take the app down
            self.post_message(SourceFailed(f"{self.names[side]}: {type(exc).__name__}: {exc}"))
            return
        problems = source.problems
        post(SideUpdate(side, [], True, f"{len(problems)} damaged part(s) skipped" if problems else ""))

    @work(thread=True, exit_on_error=False)
    def _compute_comparison(self) -> None:
        paths = [s.path for s in self.sources]
        if not all(os.path.isfile(p) for p in paths):
            self.post_message(ComparisonReady(None, "the delta table needs both recordings as files"))
            return
        try:
            a, b = (tracer.load(p) for p in paths)
            self.post_message(ComparisonReady(compare(a, b, a_name=self.names[0], b_name=self.names[1])))
        except Exception as exc:  # shown in the panel; the side-by-side view still works
            self.post_message(ComparisonReady(None, f"cannot compare: {type(exc).__name__}: {exc}"))

    def on_side_update(self, message: SideUpdate) -> None:
        try:
            self.states[message.side].ingest(message.events)
        finally:
            self._slots[message.side].release()
        self._side_status[message.side] = ("loaded" if message.done else "loading") + (
            f", {message.problems}" if message.problems else ""
        )
        self._done[message.side] = message.done
        if all(self._done):
            self.status = "loaded"
            self.playing = self.autoplay
        self._schedule_frame()

    def on_comparison_ready(self, message: ComparisonReady) -> None:
        self.comparison = message.comparison
        self.compare_screen.query_one("#delta").show(message.comparison, message.error)  # type: ignore[attr-defined]

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
        if not self.lockstep.advance(*self.states, wall, SPEEDS[self.speed_index]):
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
        self.compare_screen.toggle_class("show-delta")

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
                SideFrame(state, index, source.path, status, self._experts(side, index))
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

    def _experts(self, side: int, index: int):
        """The current tick's expert counts, fetched from the trace when no longer held."""
        state = self.states[side]
        if not state.n_ticks:
            return None
        tick = state.tick_number(index)
        detail = state.detail(index)
        if detail is None or detail.experts is None:
            state.put_detail(tick, self.sources[side].experts(tick), None)
            detail = state.detail(index)
        return detail.experts if detail is not None else None

    def _scrub(self, indices: tuple[int, int]) -> tuple[int, int, list[int], str]:
        """Scrubber position, total, mark positions and label, in the alignment's own units."""
        a, b = self.states
        ls = self.lockstep
        labels = []
        for name, state, index in zip("AB", self.states, indices):
            labels.append(f"{name} tick {state.tick_number(index)}" if state.n_ticks else f"{name} —")
        if ls.align == "tick":
            total = max(a.n_ticks, b.n_ticks)
            marks = [s.index_of_tick(m.tick) for s in self.states for m in s.marks]
            label = f"tick #{int(ls.position)} · " + " · ".join(labels)
            return int(ls.position), total, marks, label
        length = ls.length(a, b)
        scale = (SCRUB_STEPS - 1) / length if length > 0 else 0.0
        marks = [
            round((m.t_ns - s.header.t0_mono_ns) / 1e9 * scale)
            for s in self.states if s.header is not None for m in s.marks
        ]
        label = f"{ls.position:.2f}/{length:.2f}s · " + " · ".join(labels)
        return round(ls.position * scale), SCRUB_STEPS, marks, label


def run_compare(a: str, b: str, *, align: str = "time") -> None:
    """Open two recordings side by side. Both are opened first, so a missing or malformed file
    raises (`TraceFormatError`, `OSError`) before the terminal is taken over."""
    sides = [TraceSide(a)]
    try:
        sides.append(TraceSide(b))
        CompareApp(sides[0], sides[1], align=align).run()
    finally:
        for side in sides:
            side.close()
