"""The compare screen: two recordings side by side, the same panels for each, and the delta table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from tracer.compare import ConfigDifference
from tui.state import DashboardState
from tui.widgets.charts import SeriesChart
from tui.widgets.controls import ReplayControls, Scrubber
from tui.widgets.delta import CompareHeader, DeltaPanel
from tui.widgets.header import TraceHeader
from tui.widgets.heatmap import ExpertHeatmap
from tui.widgets.stats import LatencyPanel, QueuePanel

SIDES = ("a", "b")


@dataclass(slots=True)
class SideFrame:
    """One side's part of a compare frame."""

    state: DashboardState
    index: int
    path: str
    status: str
    experts: np.ndarray | None


class SidePanels(Vertical):
    """Every per-recording panel of one side, the dashboard's own widgets."""

    def __init__(self, side: str, **kwargs) -> None:
        super().__init__(id=f"side-{side}", classes="side", **kwargs)
        self.side = side

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

    def show(self, frame: SideFrame, playback: str) -> None:
        state, index = frame.state, frame.index
        self.query_one(TraceHeader).show(
            path=frame.path, mode=self.side.upper(), header=state.header, status=frame.status,
            playback=playback,
        )  # fmt: skip
        for chart in self.query(SeriesChart):
            chart.show(state, index)
        self.query_one(ExpertHeatmap).show(frame.experts, "current tick")
        self.query_one(LatencyPanel).show(state, index)
        self.query_one(QueuePanel).show(state, index)


class CompareScreen(Screen):
    """Mounted once; `show_frame` updates both sides, the header and the scrubber in place."""

    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (150, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (40, "-tall")]

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

    def show_header(self, names: tuple[str, str], diffs: tuple[ConfigDifference, ...] | None, status: str) -> None:
        self.query_one(CompareHeader).show(names[0], names[1], diffs, status)

    def show_frame(self, frames: tuple[SideFrame, SideFrame], playback: str, scrub: tuple[int, int, list[int], str]) -> None:
        """Update both sides and the scrubber; exceptions propagate so the app can pause."""
        for side, frame in zip(SIDES, frames):
            self.query_one(f"#side-{side}", SidePanels).show(frame, playback)
        self.query_one(Scrubber).show(*scrub)
