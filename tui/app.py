"""The tickscope dashboard: one app that watches a recording live or replays it."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import var
from textual.screen import Screen
from textual.worker import get_current_worker

import tracer
from tracer.cost import Accelerator
from tracer.events import MarkEvent

from tui.gc_tuning import GcTuning
from tui.messages import PanelResized, SourceFailed, SourceUpdate
from tui.screens.dashboard import DashboardScreen, FrameInfo
from tui.screens.goto import GotoScreen
from tui.screens.help import HelpScreen
from tui.screens.mark import MarkScreen
from tui.screens.request import RequestScreen
from tui.source import POLL_BUDGET_S, Source, fetch_missing, open_source
from tui.state import DashboardState
from tui.widgets.requests import RequestTable

# Replay speeds, slowest first; None plays one tick per frame whatever the recorded timing.
SPEEDS: tuple[float | None, ...] = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, None)
DEFAULT_SPEED = SPEEDS.index(1.0)
FRAME_S = 1 / 30  # replay frame interval: smooth enough, and leaves the UI thread room
POLL_S = 0.1  # live: how often an unchanged file is polled again (lag stays under 250 ms)
HEAT_SPANS = (1, 10, 100, 1000)  # ticks the heatmap can average over
CHUNKS_IN_FLIGHT = 2  # back-pressure: polls read but not yet ingested by the UI thread
BUSY_S = 0.5  # after a seek or step, the background loader holds back for this long
BAD_STATES = {"truncated": "the trace file was truncated", "replaced": "the trace file was replaced"}


def speed_label(speed: float | None) -> str:
    return "max" if speed is None else f"{speed:g}x"


class TickscopeApp(App[None]):
    """Live mode follows a growing trace; replay mode plays a finished one under user control."""

    CSS_PATH = "tickscope.tcss"
    TITLE = "tickscope"
    STEP = Binding.Group("Step", compact=True)
    SPEED = Binding.Group("Speed", compact=True)
    MARK = Binding.Group("Mark", compact=True)
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("space", "toggle_play", "Play/Pause"),
        Binding("left", "step(-1)", "Back a tick", key_display="←", group=STEP),
        Binding("right", "step(1)", "On a tick", key_display="→", group=STEP),
        Binding("minus", "slower", "Slower", key_display="-", group=SPEED),
        Binding("plus,equals_sign", "faster", "Faster", key_display="+", group=SPEED),
        Binding("home", "jump_start", "Start"),
        Binding("end", "jump_end", "End"),
        Binding("g", "goto", "Go to"),
        Binding("left_square_bracket", "mark(-1)", "Prev mark", key_display="[", group=MARK),
        Binding("right_square_bracket", "mark(1)", "Next mark", key_display="]", group=MARK),
        Binding("m", "add_mark", "Add mark", group=MARK),
        Binding("a", "heat_span", "Heat span"),
        Binding("s", "toggle_stages", "Stages"),
        Binding("r", "focus_requests", "Requests"),
    ]

    # `var`, not `reactive`: a reactive on the app repaints the whole screen when it changes (a
    # full-screen update per step); the watchers below ask for a frame that updates the panels.
    cursor: var[int] = var(0)  # index of the current tick in the state
    playing: var[bool] = var(False)  # replay: the clock runs; live: following the end
    speed_index: var[int] = var(DEFAULT_SPEED)
    heat_span: var[int] = var(1)
    status: var[str] = var("loading")

    def __init__(self, source: Source, mode: str, *, autoplay: bool = True,
                 accelerator: Accelerator | None = None, price: float | None = None) -> None:
        super().__init__()
        self.source = source
        self.mode = mode
        self.state = DashboardState()
        self.state.accelerator, self.state.price = accelerator, price  # what-if costing (cost panel)
        self.autoplay = autoplay
        self.dashboard = DashboardScreen()
        self._chunk_slots = threading.Semaphore(CHUNKS_IN_FLIGHT)
        self._play_t = 0.0  # recording seconds the replay clock stands at
        self._play_wall = 0.0
        self._frame_pending = False
        self._last_error = ""
        # Until when the loader holds back (monotonic seconds): set on the UI thread, read by the
        # worker (a float assignment: no lock needed).
        self._busy_until = 0.0
        self._gc = GcTuning()  # see tui/gc_tuning.py: no 50-130 ms full collections mid-frame

    # -- lifecycle ----------------------------------------------------------------------------

    def get_default_screen(self) -> Screen:
        return self.dashboard

    def on_mount(self) -> None:
        self._gc.apply()
        layout = self.source.layout()
        if layout is not None:  # a replay: every tick has its place before any frame is read
            self.state.set_header(self.source.header)  # type: ignore[arg-type]
            self.state.set_layout(layout)
        self.state.marks.extend(tracer.read_marks(self.source.path)[0])  # notes kept beside the trace
        self._clock = self.set_interval(FRAME_S, self._advance, pause=True)
        self.playing = self.mode == "live" or self.autoplay
        self._read_source()
        self._schedule_frame()

    def on_unmount(self) -> None:
        self._gc.restore()

    def on_resize(self) -> None:
        self._schedule_frame()

    @work(thread=True, exclusive=True, group="source", exit_on_error=False)
    def _read_source(self) -> None:
        """Poll the source for as long as the app runs; only messages leave this thread.

        A replay read to its end is still polled: its source decodes the detail of the frames
        around the tick in view ahead of time. While the user plays or seeks, the loader takes
        one frame at a time and pauses in between, leaving the interpreter to the UI thread.
        """
        worker = get_current_worker()
        last_status = ""
        told_done = False
        while not worker.is_cancelled:
            busy = self.mode == "replay" and time.monotonic() < self._busy_until
            try:
                frames = self.source.poll(0.0 if busy else POLL_BUDGET_S)
                status = self.source.status()
            except Exception as exc:  # a bad trace must not take the app down
                self.post_message(SourceFailed(f"{type(exc).__name__}: {exc}"))
                return
            done = self.source.done
            if frames or status != last_status or done != told_done:
                # Wait for the UI thread to catch up, but never past a cancel (the app quitting).
                while not self._chunk_slots.acquire(timeout=POLL_S):
                    if worker.is_cancelled:
                        return
                self.post_message(SourceUpdate(frames, self.source.header, status, done))
                last_status, told_done = status, done
            if busy or not frames:
                time.sleep(POLL_S)

    def on_source_update(self, message: SourceUpdate) -> None:
        try:
            if message.header is not None and self.state.header is None:
                self.state.set_header(message.header)
            for frame in message.frames:
                self.state.ingest_frame(frame)
        finally:
            self._chunk_slots.release()
        if self.mode == "replay" and not message.done:
            self.status = "loading"
        else:
            self.status = message.status
        if self.mode == "live" and self.playing and self.state.n_ticks:
            self.cursor = self.state.n_ticks - 1
        self.dashboard.set_class(self.state.has_stages, "has-stages")
        self._schedule_frame()

    def on_panel_resized(self, message: PanelResized) -> None:
        self._schedule_frame()

    def on_source_failed(self, message: SourceFailed) -> None:
        self.status = "error"
        self.notify(message.error, title="cannot read the trace", severity="error", timeout=10)

    def watch_status(self, old: str, new: str) -> None:
        if new in BAD_STATES and old != new:
            self.notify(
                f"{BAD_STATES[new]}; showing what was read before", severity="warning", timeout=10
            )
        self._schedule_frame()

    # -- playback -----------------------------------------------------------------------------

    def watch_playing(self, playing: bool) -> None:
        if self.mode == "replay":
            self._reset_clock()
            if playing:
                self._clock.resume()
            else:
                self._clock.pause()
        elif playing and self.state.n_ticks:
            self.cursor = self.state.n_ticks - 1
        self._schedule_frame()

    def watch_cursor(self) -> None:
        self._schedule_frame()

    def watch_speed_index(self) -> None:
        self._reset_clock()
        self._schedule_frame()

    def watch_heat_span(self) -> None:
        self._schedule_frame()

    def _reset_clock(self) -> None:
        self._play_t = self.state.time_at(self.cursor)
        self._play_wall = time.monotonic()

    def _advance(self) -> None:
        """One replay frame: move the cursor to where the recorded clock has got to."""
        self._busy_until = time.monotonic() + BUSY_S
        n = self.state.n_ticks
        if n == 0:
            return
        speed = SPEEDS[self.speed_index]
        if speed is None:
            target = self.cursor + 1
        else:
            now = time.monotonic()
            self._play_t += (now - self._play_wall) * speed
            self._play_wall = now
            target = max(self.cursor, self.state.index_at_time(self._play_t))
        if target >= n - 1:
            target = n - 1
            if self.source.done:
                self.playing = False
        self.cursor = target

    def _seek(self, index: int) -> None:
        """Jump to a tick index; in live mode, anything but the end stops following."""
        n = self.state.n_ticks
        self._busy_until = time.monotonic() + BUSY_S
        self.cursor = min(max(index, 0), max(n - 1, 0))
        self._reset_clock()
        if self.mode == "live" and self.cursor < n - 1:
            self.playing = False

    # -- actions (bindings and the control buttons both call these) ---------------------------

    def action_toggle_play(self) -> None:
        if self.mode == "replay" and not self.playing and self.cursor >= self.state.n_ticks - 1:
            self._seek(0)  # play at the end starts over, as media players do
        self.playing = not self.playing

    def action_step(self, delta: int) -> None:
        if self.mode == "replay":
            self.playing = False
        self._seek(self.cursor + delta)

    def action_faster(self) -> None:
        self.speed_index = min(self.speed_index + 1, len(SPEEDS) - 1)

    def action_slower(self) -> None:
        self.speed_index = max(self.speed_index - 1, 0)

    def action_jump_start(self) -> None:
        self._seek(0)

    def action_jump_end(self) -> None:
        self._seek(self.state.n_ticks - 1)
        if self.mode == "live":
            self.playing = True

    def action_seek_fraction(self, fraction: float) -> None:
        self._seek(round(fraction * (self.state.n_ticks - 1)))

    def action_goto(self) -> None:
        self.push_screen(GotoScreen(), self._goto)

    def _goto(self, text: str | None) -> None:
        if not text:
            return
        try:
            if text.lower().endswith("s"):
                index = self.state.index_at_time(float(text[:-1]))
            else:
                index = self.state.index_of_tick(int(text))
        except ValueError:
            self.notify(f"not a tick or a time: {text!r}", severity="warning")
            return
        self._seek(index)

    def action_mark(self, direction: int) -> None:
        if not self.state.n_ticks or not self.state.marks:
            self.notify("no marks in this recording")
            return
        here = self.state.tick_number(self.cursor)
        ticks = sorted({m.tick for m in self.state.marks})
        targets = [t for t in ticks if (t > here if direction > 0 else t < here)]
        if targets:
            target = targets[0] if direction > 0 else targets[-1]
            self._seek(self.state.index_of_tick(target))
            notes = [m.text for m in self.state.marks if m.tick == target and m.text]
            if notes:
                self.notify("; ".join(notes), title=f"tick {target}", timeout=4)

    def action_add_mark(self) -> None:
        if not self.state.n_ticks or not os.path.isfile(self.source.path):
            self.notify("marks need a recorded tick in a trace file", severity="warning")
            return
        index = self.cursor  # where `m` was pressed, even if a live view moves on meanwhile
        tick, t_s = self.state.tick_number(index), self.state.time_at(index)
        mark = MarkEvent(t_ns=self.state.t0_ns + round(t_s * 1e9), tick=tick, text="")
        self.push_screen(MarkScreen(f"tick {tick} ({t_s:.2f} s)"), lambda text: self._save_mark(mark, text))

    def _save_mark(self, mark: MarkEvent, text: str | None) -> None:
        if not text:
            return
        mark = MarkEvent(t_ns=mark.t_ns, tick=mark.tick, text=text)
        try:
            # Beside the trace, never in it: a trace file is append-only and may be someone else's.
            saved = tracer.add_mark(self.source.path, mark)
        except (OSError, ValueError) as exc:
            self.notify(f"mark not saved: {exc}", severity="error")
            return
        self.state.marks.append(mark)
        self.notify(f"mark saved in {os.path.basename(saved)}", timeout=3)
        self._schedule_frame()

    def action_heat_span(self) -> None:
        self.heat_span = HEAT_SPANS[(HEAT_SPANS.index(self.heat_span) + 1) % len(HEAT_SPANS)]

    def action_toggle_stages(self) -> None:
        self.dashboard.toggle_class("show-stages")

    def action_focus_requests(self) -> None:
        self.dashboard.query_one(RequestTable).focus()

    def on_request_table_chosen(self, message: RequestTable.Chosen) -> None:
        life = self.state.request_life(message.request)
        if life is not None:
            self.push_screen(RequestScreen(life, self.state.time_at(self.cursor)))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Speed means nothing when following a live file: hide those keys there.
        if action in ("faster", "slower") and self.mode != "replay":
            return False
        return True

    # -- frames -------------------------------------------------------------------------------

    def _schedule_frame(self) -> None:
        """Coalesce every change made while handling one message into one frame."""
        if not self._frame_pending:
            self._frame_pending = True
            self.call_later(self._render_frame)

    def playback_label(self) -> str:
        if self.mode == "live":
            return "● following" if self.playing else "⏸ paused"
        return f"{'▶' if self.playing else '⏸'} {speed_label(SPEEDS[self.speed_index])}"

    def _render_frame(self) -> None:
        self._frame_pending = False
        if not self.dashboard.is_mounted:
            return
        index = self.cursor
        status = self.status
        if status == "loading" and self.state.laid_out:
            status = f"loading {self.state.loaded_share:.0%}"
        info = FrameInfo(
            path=self.source.path,
            mode=self.mode,
            status=status,
            playback=self.playback_label(),
            heat_span=self.heat_span,
        )
        try:
            experts, stages = self._detail(index)
            self.dashboard.show_frame(self.state, index, info, experts, stages)
        except Exception as exc:  # one bad tick must not end the session: pause and say so
            self.playing = False
            error = f"frame at tick index {index} failed: {type(exc).__name__}: {exc}"
            if error != self._last_error:
                self._last_error = error
                self.log.error(error)
                self.notify(error, title="paused", severity="error", timeout=10)

    def _detail(self, index: int) -> tuple[object, object]:
        """Expert counts (over the heat span: the [ticks, layers, experts] stack of those held) and
        stage cells for tick `index`."""
        if not self.state.n_ticks:
            return None, None
        lo = max(index - self.heat_span + 1, 0)
        self.state.pin(lo, index)
        fetch_missing(self.state, self.source, lo, index)
        self.source.focus(self.state.tick_number(index))
        detail = self.state.detail(index)
        stages = detail.stages if detail is not None else None
        if self.heat_span > 1:
            experts = self.state.span_experts(lo, index)
        else:
            experts = detail.experts if detail is not None else None
        return experts, stages


def run_dashboard(path: str, mode: str, *, on_quit: Callable[[], None] | None = None,
                  costing: Callable[[dict], tuple[Accelerator | None, float | None]] | None = None) -> None:
    """Open `path` ("live": follow it as it grows; "replay": play it back) in the dashboard.

    The source is opened before the terminal is taken over, so a missing or malformed file
    raises `TraceFormatError` / `OSError` (or `ValueError` for an unknown mode) for the command
    line to print as one line. `on_quit` runs after the app has exited and the terminal is back,
    however it exited (the demo uses it to stop its recording). `costing` turns the header's
    configuration into the accelerator and price the cost panel models (and may refuse them).
    """
    source = open_source(path, mode)
    try:
        accelerator, price = costing(source.header.config) if costing and source.header else (None, None)
        TickscopeApp(source, mode, accelerator=accelerator, price=price).run()
    finally:
        source.close()
        if on_quit is not None:
            on_quit()
