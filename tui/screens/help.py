"""The `?` overlay: what each panel shows and every key."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# tickscope

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
in each batch, the queue and KV-cache use (the last two on taller screens). One column is a bucket of ticks: the solid part reaches the bucket's
minimum, the dim part its maximum, so no spike is hidden. The yellow column is the current tick.

**experts × layers** — tokens routed to each expert (columns) of each MoE layer (rows) in the
current tick; each character holds two layers (upper half = upper layer), expert numbers above the
columns. Dark grey is an expert that got nothing; the scale under a roomy map runs from one token
to the busiest cell. *active* is the share of (layer, expert) cells that got a token; *max/mean* the
load imbalance (1.0 = perfect), *balance* its inverse mean/max as vLLM logs it; *hot* names the
busiest experts overall, *hot by layer* each layer's busiest. Over a span (`a`) the map is the
span's mean load, while *active*, *max/mean* and *balance* are means over the span's (tick, layer)
cells, the same figures `tickscope summary` and compare give under those names; *dead* counts
experts that got no token in any tick of it, and the subtitle says how many of the span's ticks
were held. Small batches leave most experts idle: that is where MoE efficiency goes.

**latency · queue · KV** — TTFT (arrival to first token) and TPOT (time per output token after the
first) p50/p99 (and p90 where there is room) over the last seconds of recording; with room, their
distributions over the recording so far (log scale: fastest left, slowest right); the queue, running
sequences, KV-cache use, and requests finished, rejected and preempted.

**pipeline stages** — the current tick's layers split into stages (rows) and its batch into
micro-batches (coloured cells): *modelled* on one device per stage from cells that ran in turn on
one device, or *measured* as they ran in one process per stage (`record --distributed`); the
subtitle says which, and the line under the rows the time scale. ╌ blue is warmup, ╌ red drain,
░ bubbles inside the pipeline. Shown when the trace has stages.

**recent requests** — the latest arrivals as they stood at the current tick: queued, prefill,
decode (`*` = preempted by then), finished, rejected, cancelled. Press `r` (or click a row) and pick
one with ↑ ↓ and enter to see its life as a timeline: arrival, admission, first token, every token,
preemptions and the end. In a long replay, columns drawn as dots are ticks not read yet.

## Keys

| key | does |
|---|---|
| space | play / pause (live: freeze / follow) |
| ← → | step one tick back / forward |
| + − | replay speed 0.1x … 100x, then max (one tick per frame) |
| home end | first / last tick (live: end follows again) |
| g | go to tick N, or time T with an `s` (e.g. `12.5s`) |
| [ ] | previous / next mark |
| m | add a note (a mark) at the current tick; saved beside the trace in `FILE.marks.json` |
| a | heatmap: current tick, or mean of the last 10 / 100 / 1000 ticks |
| r | pick a recent request (↑ ↓, enter: its timeline, escape: back) |
| s | show the stage timeline in place of the heatmap (small terminals) |
| ? | this help |
| q | quit |

The mouse works too: the buttons and the scrubber under the panels.

## Compare (`tickscope compare A B`)

Both recordings side by side on one clock, each with every panel above; the delta table states
the differences over the whole recordings (so far, for one still being written: it is followed
as live mode follows a file). It leads with what a token costs (device time per token, capacity,
modelled bytes per token, experts touched against uniform routing, and $ with `--price` /
`--accelerator`), then the latency each user pays; each figure is judged in its own direction,
and the sentence under the table states the trade-off. The served rate is shown but not judged:
under open-loop arrivals it is the offered load, not efficiency.

| key | does |
|---|---|
| t | align by time since start, or by tick |
| d | show / hide the delta table |
| p | which panels a side shows when not all fit: heatmap, latency, requests, stages |
| Tab | focus side A or B (or click it) |
| m | add a mark at the focused side's current tick (side A when neither has focus) |
| [ ] | previous / next mark of either recording (◆ on the scrubber: A cyan, B magenta) |
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,question_mark,q", "dismiss", "Close help"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(HELP)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
