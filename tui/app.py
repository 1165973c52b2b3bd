"""The tickscope dashboard: one app that watches a recording live or replays it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, cast

from textual.binding import Binding
from textual.reactive import var
from textual.screen import Screen

from tracer.cost import Accelerator
from tracer.events import MarkEvent
from tui import keys
from tui.playback import SPEEDS, Feed, PlaybackApp
from tui.screens.dashboard import DashboardScreen
from tui.screens.goto import GotoScreen
from tui.source import Source, open_source
from tui.state import DashboardState
from tui.widgets.header import Watching
from tui.widgets.requests import RequestTable

Mode = Literal["live", "replay"]  # follow a recording as it grows, or play a finished one back
HEAT_SPANS = (1, 10, 100, 1000)  # ticks the heatmap can average over


class TickscopeApp(PlaybackApp):
    """Live mode follows a growing trace; replay mode plays a finished one under user control."""

    CSS_PATH = "tickscope.tcss"
    TITLE = "tickscope"
    BINDINGS = [
        *keys.PLAY,
        *keys.step("Back a tick", "On a tick"),
        *keys.SPEED,
        *keys.JUMP,
        Binding("g", "goto", "Go to"),
        *keys.mark("Add mark"),
        Binding("a", "heat_span", "Heat span"),
        Binding("s", "toggle_stages", "Stages"),
        Binding("r", "focus_requests", "Requests"),
    ]

    cursor: var[int] = var(0)  # index of the current tick in the state
    heat_span: var[int] = var(1)

    def __init__(
        self,
        source: Source,
        mode: Mode,
        *,
        autoplay: bool = True,
        accelerator: Accelerator | None = None,
        price: float | None = None,
    ) -> None:
        feed = Feed(source)
        feed.state.accelerator, feed.state.price = accelerator, price  # what-if costing (cost panel)
        super().__init__([feed], autoplay=autoplay)
        self.mode = mode
        self.dashboard = DashboardScreen()
        self._play_t = 0.0  # recording seconds the replay clock stands at

    @property
    def feed(self) -> Feed:
        return self.feeds[0]

    @property
    def state(self) -> DashboardState:
        return self.feed.state

    @state.setter
    def state(self, state: DashboardState) -> None:
        self.feed.state = state  # one of the caller's making (a smaller detail cache), before it runs

    def get_default_screen(self) -> Screen[None]:
        return self.dashboard

    def _started(self) -> None:
        self.playing = self.mode == "live" or self.autoplay

    def _fed(self, feed: Feed, *, grew: bool, ended: bool) -> None:
        self.status = feed.status
        if self.mode == "live" and self.playing and self.state.n_ticks:
            self.cursor = self.state.n_ticks - 1
        self.dashboard.set_class(self.state.has_stages, "has-stages")

    # -- playback -----------------------------------------------------------------------------

    def watch_playing(self, playing: bool) -> None:
        if self.mode == "replay":
            self._run_clock(playing)
        elif playing and self.state.n_ticks:
            self.cursor = self.state.n_ticks - 1
        self._schedule_frame()

    def watch_cursor(self) -> None:
        self._schedule_frame()

    def watch_heat_span(self) -> None:
        self._schedule_frame()

    def _reset_clock(self) -> None:
        self._play_t = self.state.time_at(self.cursor)
        super()._reset_clock()

    def _advance(self) -> None:
        """One replay frame: move the cursor to where the recorded clock has got to."""
        self._hold_loaders()
        n = self.state.n_ticks
        if n == 0:
            return
        speed = SPEEDS[self.speed_index]
        if speed is None:
            target = self.cursor + 1
        else:
            self._play_t += self._elapsed() * speed
            target = max(self.cursor, self.state.index_at_time(self._play_t))
        if target >= n - 1:
            target = n - 1
            if self.feed.source.done:
                self.playing = False
        self.cursor = target

    def _seek(self, index: int) -> None:
        """Jump to a tick index; in live mode, anything but the end stops following."""
        n = self.state.n_ticks
        self._hold_loaders()
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

    def _position(self) -> float:
        return self.cursor

    def _position_of(self, feed: Feed, index: int) -> float:
        return index

    def _go_to_marks(self, position: float, marks: list[tuple[Feed, MarkEvent]]) -> None:
        self._seek(int(position))
        notes = [mark.text for _, mark in marks if mark.text]
        if notes:
            self.notify("; ".join(notes), title=f"tick {marks[0][1].tick}", timeout=4)

    def _mark_target(self) -> tuple[Feed, int]:
        return self.feed, self.cursor

    def action_heat_span(self) -> None:
        self.heat_span = HEAT_SPANS[(HEAT_SPANS.index(self.heat_span) + 1) % len(HEAT_SPANS)]

    def action_toggle_stages(self) -> None:
        self.dashboard.toggle_class("show-stages")

    def action_focus_requests(self) -> None:
        self.dashboard.query_one(RequestTable).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Speed means nothing when following a live file: hide those keys there.
        if action in ("faster", "slower") and self.mode != "replay":
            return False
        return True

    # -- frames -------------------------------------------------------------------------------

    def playback_label(self) -> str:
        if self.mode == "live":
            return "● following" if self.playing else "⏸ paused"
        return super().playback_label()

    def _frame_name(self) -> str:
        return f"frame at tick index {self.cursor}"

    def _draw(self) -> None:
        if not self.dashboard.is_mounted:
            return
        status = self.status
        if status == "loading" and self.state.laid_out:
            status = f"loading {self.state.loaded_share:.0%}"
        watching = Watching(self.feed.source.path, self.mode, status, self.playback_label())
        self.dashboard.show_frame(self._frame(self.feed, self.cursor, self.heat_span), watching)


def run_dashboard(
    path: str,
    mode: str,
    *,
    on_quit: Callable[[], None] | None = None,
    costing: Callable[[dict[str, Any]], tuple[Accelerator | None, float | None]] | None = None,
) -> None:
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
        # open_source has refused any other mode
        TickscopeApp(source, cast(Mode, mode), accelerator=accelerator, price=price).run()
    finally:
        source.close()
        if on_quit is not None:
            on_quit()
