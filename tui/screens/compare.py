"""The compare screen: two recordings side by side, the same panels for each, and the delta table.

Each side holds every dashboard panel. What fits depends on the terminal's height, so the panels
come in groups: on a short terminal a side shows the throughput chart and one more panel, on a
taller one the chart, the heatmap and one more; `p` cycles which (the screen's `panels-*` class).
On a roomy terminal, or a tall one with the delta table hidden, every panel is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from tracer.compare import ConfigDifference
from tracer.events import StageEvent
from tui.screens.request import RequestScreen
from tui.state import DashboardState
from tui.widgets.charts import SeriesChart
from tui.widgets.controls import ReplayControls, Scrubber
from tui.widgets.delta import CompareHeader, DeltaPanel
from tui.widgets.header import TraceHeader
from tui.widgets.heatmap import ExpertHeatmap
from tui.widgets.requests import RequestTable
from tui.widgets.stages import StageGantt
from tui.widgets.stats import LatencyPanel, QueuePanel

SIDES = ("a", "b")
# Panel groups `p` cycles through, in order; "experts" alone is shown only on short terminals.
PANEL_GROUPS = ("experts", "latency", "requests", "stages")
TALL_ROWS = 40  # from here the heatmap always shows (the screen's -tall breakpoint)
ROOMY_ROWS = 56  # from here every panel shows, the delta table too


@dataclass(slots=True)
class SideFrame:
    """One side's part of a compare frame."""

    state: DashboardState
    index: int
    path: str
    status: str
    experts: np.ndarray | None
    stages: StageEvent | None


class SidePanels(Vertical):
    """Every per-recording panel of one side, the dashboard's own widgets.

    Focusable (Tab, or a click), so that `m` knows which recording a new mark belongs to.
    """

    can_focus = True

    def __init__(self, side: str, **kwargs) -> None:
        super().__init__(id=f"side-{side}", classes="side", **kwargs)
        self.side = side
        self._shown: tuple[DashboardState, int] | None = None  # for a request picked in the table

    def compose(self) -> ComposeResult:
        s = self.side
        yield TraceHeader(classes="side-header")
        with Vertical(classes="panel side-timeline") as timeline:
            timeline.border_title = "throughput & batch"
            yield SeriesChart("tokens/s", "throughput", "cyan", id=f"{s}-throughput")
            yield SeriesChart("batch seqs", "seqs", "green", id=f"{s}-seqs")
        heat = ExpertHeatmap(id=f"{s}-experts", classes="panel side-experts")
        heat.border_title = "experts × layers"
        yield heat
        with Vertical(classes="panel side-load") as load:
            load.border_title = "latency · queue · KV"
            yield LatencyPanel(id=f"{s}-latency")
            yield QueuePanel(id=f"{s}-queue")
        table = RequestTable(id=f"{s}-requests", classes="panel side-requests")
        table.border_title = "recent requests"
        yield table
        gantt = StageGantt(id=f"{s}-stages", classes="panel side-stages")
        gantt.border_title = "pipeline stages"
        yield gantt

    def show(self, frame: SideFrame, playback: str) -> None:
        """Update the panels on screen; hidden ones are drawn when they appear (their resize
        asks for a frame)."""
        state, index = frame.state, frame.index
        self._shown = (state, index)
        self.query_one(TraceHeader).show(
            path=frame.path, mode=self.side.upper(), header=state.header, status=frame.status,
            playback=playback,
        )  # fmt: skip
        if self.query_one(".side-timeline").display:
            for chart in self.query(SeriesChart):
                chart.show(state, index)
        heat = self.query_one(ExpertHeatmap)
        if heat.display:
            heat.show(frame.experts, "current tick")
        if self.query_one(".side-load").display:
            self.query_one(LatencyPanel).show(state, index)
            self.query_one(QueuePanel).show(state, index)
        table = self.query_one(RequestTable)
        if table.display:
            table.show(state, index)
        gantt = self.query_one(StageGantt)
        if gantt.display:
            gantt.show(frame.stages)

    def on_request_table_chosen(self, message: RequestTable.Chosen) -> None:
        message.stop()
        if self._shown is None:
            return
        state, index = self._shown
        life = state.request_life(message.request)
        if life is not None:
            self.app.push_screen(RequestScreen(life, state.time_at(index)))


class CompareScreen(Screen):
    """Mounted once; `show_frame` updates both sides, the header and the scrubber in place."""

    AUTO_FOCUS = ""  # nothing focused at start: the playback keys are the app's, marks go to A
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (150, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (TALL_ROWS, "-tall")]

    def __init__(self) -> None:
        super().__init__(classes="panels-experts")
        self.panel_group = "experts"

    def compose(self) -> ComposeResult:
        yield CompareHeader(id="compare-header")
        with Horizontal(id="sides"):
            for side in SIDES:
                yield SidePanels(side)
        delta = DeltaPanel(id="delta", classes="panel")
        delta.border_title = "delta over the whole recordings (d: toggle)"
        yield delta
        yield ReplayControls(id="controls")
        yield Footer()

    def on_resize(self) -> None:
        self._update_roomy()

    def toggle_delta(self) -> None:
        self.toggle_class("show-delta")
        self._update_roomy()

    def _update_roomy(self) -> None:
        # On a tall terminal, `d` hides the delta table: the room it leaves fits every panel.
        height = self.size.height
        self.set_class(height >= ROOMY_ROWS or (height >= TALL_ROWS and self.has_class("show-delta")), "-roomy")

    def panel_cycle(self, has_stages: bool) -> tuple[str, ...]:
        """The groups `p` goes through at this size: none when every panel is shown."""
        if self.has_class("-roomy"):
            return ()
        groups = PANEL_GROUPS if self.size.height < TALL_ROWS else PANEL_GROUPS[1:]
        return tuple(g for g in groups if has_stages or g != "stages")

    def cycle_panels(self, has_stages: bool) -> str | None:
        """Show the next panel group; returns its name, or None when all are shown already."""
        groups = self.panel_cycle(has_stages)
        if not groups:
            return None
        # A group not in this size's cycle ("experts" on a tall terminal, where the heatmap is
        # always there) shows the cycle's first group, so the next press moves past that one.
        at = groups.index(self.panel_group) if self.panel_group in groups else 0
        following = groups[(at + 1) % len(groups)]
        self.remove_class(f"panels-{self.panel_group}")
        self.panel_group = following
        self.add_class(f"panels-{following}")
        return following

    def show_header(self, names: tuple[str, str], diffs: tuple[ConfigDifference, ...] | None, status: str) -> None:
        self.query_one(CompareHeader).show(names[0], names[1], diffs, status)

    def show_frame(
        self,
        frames: tuple[SideFrame, SideFrame],
        playback: str,
        scrub: tuple[int, int, list[tuple[int, str]], str],
    ) -> None:
        """Update both sides and the scrubber; exceptions propagate so the app can pause."""
        self.set_class(any(f.state.has_stages for f in frames), "has-stages")
        for side, frame in zip(SIDES, frames):
            self.query_one(f"#side-{side}", SidePanels).show(frame, playback)
        self.query_one(Scrubber).show(*scrub)
