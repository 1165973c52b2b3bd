"""The main screen: every panel of one recording at the current tick."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid
from textual.screen import Screen
from textual.widgets import Footer

from tui.panels import PANELS
from tui.widgets.controls import MARK_STYLE, ReplayControls, Scrubber
from tui.widgets.header import TraceHeader, Watching
from tui.widgets.panel import Frame, show_panels


class DashboardScreen(Screen[None]):
    """Mounted once; `show_frame` updates every panel in place."""

    AUTO_FOCUS = ""  # nothing focused at start: the playback keys are the app's
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (150, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]

    def __init__(self) -> None:
        super().__init__()
        self.panels = [panel.make(False, id=panel.key, classes="panel") for panel in PANELS]

    def compose(self) -> ComposeResult:
        yield TraceHeader(id="header")
        with Grid(id="panels"):
            yield from self.panels
        yield ReplayControls(id="controls")
        yield Footer()

    def show_frame(self, frame: Frame, watching: Watching) -> None:
        """Update every panel for the frame's tick; exceptions propagate so the app can pause."""
        state, index = frame.state, frame.index
        self.query_one(TraceHeader).show(watching, state.header)
        show_panels(self.panels, frame)
        if state.n_ticks:
            label = (
                f"tick {state.tick_number(index)} ({index + 1}/{state.n_ticks}) "
                f"{state.time_at(index):.2f}/{state.duration_s:.2f}s"
            )
        else:
            label = "no ticks yet"
        marks = [(state.index_of_tick(m.tick), MARK_STYLE) for m in state.marks]
        self.query_one(Scrubber).show(index, state.n_ticks, marks, label)
