"""The main screen: every panel of one recording at the current tick."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from tui.state import DashboardState
from tui.widgets.charts import SeriesChart
from tui.widgets.controls import MARK_STYLE, ReplayControls, Scrubber
from tui.widgets.header import TraceHeader
from tui.widgets.heatmap import ExpertHeatmap
from tui.widgets.requests import RequestTable
from tui.widgets.stages import StageGantt
from tui.widgets.stats import CostPanel, LatencyPanel, QueuePanel


@dataclass(slots=True)
class FrameInfo:
    """What the app knows beyond the state: how the recording is being watched."""

    path: str
    mode: str
    status: str
    playback: str  # e.g. "▶ 2x", "⏸", "follow"
    heat_span: int  # ticks the heatmap averages over (1 = the current tick)


class DashboardScreen(Screen):
    """Mounted once; `show_frame` updates every panel in place."""

    AUTO_FOCUS = ""  # nothing focused at start: the playback keys are the app's
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (150, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]

    def compose(self) -> ComposeResult:
        yield TraceHeader(id="header")
        with Grid(id="panels"):
            with Vertical(id="timeline", classes="panel") as timeline:
                timeline.border_title = "what a token costs · throughput & batch"
                yield CostPanel(id="cost")
                yield SeriesChart("tokens/s", "throughput", "cyan", id="chart-throughput")
                yield SeriesChart("batch seqs", "seqs", "green", id="chart-seqs")
                yield SeriesChart("batch tokens", "batch_tokens", "magenta", id="chart-tokens")
                yield SeriesChart("queue", "queue_depth", "yellow", id="chart-queue")
                yield SeriesChart("KV used", "kv_used", "blue", id="chart-kv")
            heat = ExpertHeatmap(id="experts", classes="panel")
            heat.border_title = "experts × layers"
            yield heat
            with Vertical(id="load", classes="panel") as load:
                load.border_title = "latency · queue · KV"
                yield LatencyPanel(id="latency")
                yield QueuePanel(id="queue")
            table = RequestTable(id="requests", classes="panel")
            table.border_title = "recent requests"
            yield table
            gantt = StageGantt(id="stages", classes="panel")
            gantt.border_title = "pipeline stages"
            yield gantt
        yield ReplayControls(id="controls")
        yield Footer()

    def show_frame(
        self,
        state: DashboardState,
        index: int,
        info: FrameInfo,
        experts: np.ndarray | None,
        stages: object,
    ) -> None:
        """Update every panel for tick `index`; exceptions propagate so the app can pause."""
        self.query_one(TraceHeader).show(
            path=info.path, mode=info.mode, header=state.header, status=info.status,
            playback=info.playback,
        )  # fmt: skip
        for chart in self.query(SeriesChart):
            chart.show(state, index)
        self.query_one(ExpertHeatmap).show(experts, heat_label(info.heat_span, index, experts))
        self.query_one(StageGantt).show(stages)  # type: ignore[arg-type]
        self.query_one(CostPanel).show(state, index)
        self.query_one(LatencyPanel).show(state, index)
        self.query_one(QueuePanel).show(state, index)
        self.query_one(RequestTable).show(state, index)
        if state.n_ticks:
            label = (
                f"tick {state.tick_number(index)} ({index + 1}/{state.n_ticks}) "
                f"{state.time_at(index):.2f}/{state.duration_s:.2f}s"
            )
        else:
            label = "no ticks yet"
        marks = [(state.index_of_tick(m.tick), MARK_STYLE) for m in state.marks]
        self.query_one(Scrubber).show(index, state.n_ticks, marks, label)


def heat_label(span: int, index: int, experts: np.ndarray | None) -> str:
    """What the heatmap shows: the current tick, or the mean of the span's ticks held in memory
    (saying how many, when fewer than the span's ticks)."""
    if span == 1:
        return "current tick"
    wanted = min(span, index + 1)
    held = len(experts) if experts is not None and np.ndim(experts) == 3 else 0
    return f"mean of last {wanted} ticks" if held >= wanted else f"mean of {held} of last {wanted} ticks"
