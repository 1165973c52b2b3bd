"""Latency percentiles and distributions, over the queue, KV-cache and request counters."""

from __future__ import annotations

from textual.widget import Widget

from tui.panels.spec import PanelSpec
from tui.widgets.panel import PanelGroup
from tui.widgets.stats import LatencyPanel, QueuePanel

HELP = """\
**latency · queue · KV** — TTFT (arrival to first token) and TPOT (time per output token after the
first) p50/p99 (and p90 where there is room) over the last seconds of recording; with room, their
distributions over the recording so far (log scale: fastest left, slowest right); the queue, running
sequences, KV-cache use, and requests finished, rejected and preempted. A watched server
(`tickscope watch`) shows its own TTFT, ITL and E2E percentiles and its finished requests and
generated tokens per second over the interval that ended at the current scrape.

Any panel, or line of one, that the recording has no data for (a watched server reports no forward
time, no expert load, maybe no KV size) says *no data* and why, instead of drawing zeros."""


def build(compact: bool, *, id: str, classes: str) -> Widget:
    return PanelGroup(LatencyPanel(), QueuePanel(), id=id, classes=classes)


PANEL = PanelSpec("load", "latency · queue · KV", HELP, build)
