"""The `?` overlay: what each panel shows and every key."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

from tui.panels import PANELS

# The panels' paragraphs come from the registry, in layout order, and so do the panels `p` cycles.
KEYS = """\
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
| p | which panels a side shows when not all fit: {cycled} |
| Tab | focus side A or B (or click it) |
| m | add a mark at the focused side's current tick (side A when neither has focus) |
| [ ] | previous / next mark of either recording (◆ on the scrubber: A cyan, B magenta) |
"""

CYCLED = ", ".join(panel.title for panel in PANELS if panel.cycles)
HELP = "\n\n".join(("# tickscope", *(panel.help for panel in PANELS), KEYS.format(cycled=CYCLED)))


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,question_mark,q", "dismiss", "Close help"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(HELP)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
