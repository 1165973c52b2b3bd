"""What a token costs, and the recording's throughput and batches over time: the first panel."""

from __future__ import annotations

from textual.widget import Widget

from tui.panels.spec import PanelSpec
from tui.widgets.charts import SeriesChart
from tui.widgets.panel import PanelGroup
from tui.widgets.stats import CostPanel

HELP = """\
**what a token costs** — the article's claim as numbers, for the current tick and the last 10 s:
*device* is busy device time per token (prefill + decode), the measured cost (a pipelined tick
counts its modelled makespan once per stage device); *bytes* what a tick reads per token, modelled
from the trace alone (every dense weight once a tick, each layer's distinct active experts, the
KV cache), the same on any machine; *experts* the distinct experts a layer touched against what
uniform routing would touch for those tokens, E·(1−(1−k/E)^T), so a gap is what the router's skew
saves; *capacity* tokens per busy second, what the device would serve at this batch mix were it
never idle (not the served rate: under open-loop load that is the arrivals); *device/out* the cost
per output token. With `--price` a measured $ per million output tokens; with `--accelerator NAME`
the same ticks costed on that accelerator (roofline: max(bytes/bandwidth, FLOPs/peak)), labelled
modelled. Small batches read the same weights for fewer tokens: that is the cost of running alone.

**throughput & batch** — sampled tokens per second of each tick, a request's first token (sampled
at the end of its prefill) included, over the time since the previous tick ended, so the
collection window counts, sequences and tokens (prefill + decode)
in each batch, the queue and KV-cache use (the last two on taller screens). One column is a bucket
of ticks: the solid part reaches the bucket's minimum, the dim part its maximum, so no spike is
hidden. The yellow column is the current tick."""

# (label, series, colour): the charts every view shows, then the ones only the dashboard has room
# for (and only on its taller screens: the `taller` class).
CHARTS = (("tokens/s", "throughput", "cyan"), ("batch seqs", "seqs", "green"))
TALLER_CHARTS = (
    ("batch tokens", "batch_tokens", "magenta"),
    ("queue", "queue_depth", "yellow"),
    ("KV used", "kv_used", "blue"),
)


def build(compact: bool, *, id: str, classes: str) -> Widget:
    """The cost figures over the charts; a compare side has the delta table for costs, and shares
    the width with the other side: the first two charts alone."""
    if compact:
        return PanelGroup(*(SeriesChart(*chart) for chart in CHARTS), id=id, classes=classes)
    return PanelGroup(
        CostPanel(),
        *(SeriesChart(*chart) for chart in CHARTS),
        *(SeriesChart(*chart, classes="taller") for chart in TALLER_CHARTS),
        id=id,
        classes=classes,
    )


PANEL = PanelSpec(
    "timeline", "what a token costs · throughput & batch", HELP, build,
    compact_title="throughput & batch", cycles=False,
)  # fmt: skip
