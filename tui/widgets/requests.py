"""The recent-requests table: a window of the latest arrivals, never every row of the recording."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from tui.state import DashboardState
from tui.widgets.stats import fmt_s
from tui.widgets.panel import Panel

STATE_STYLES = {
    "finished": "green",
    "rejected": "bold red",
    "cancelled": "red",
    "decode": "cyan",
    "prefill": "blue",
    "queued": "yellow",
}
# Widths that fit the panel at 80 columns with no cell padding (numbers right-aligned to them).
COLUMNS = (("id", 5), (" state", 9), ("prompt", 6), ("out", 4), ("TTFT", 7), ("TPOT", 7))


class RequestTable(Panel, DataTable):
    """The most recent requests as they stood at the current tick (rows refilled in place)."""

    # Not focusable: the table's own arrow/home/end bindings would take the playback keys.
    can_focus = False

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.cell_padding = 0
        self.show_cursor = False  # nothing to select yet; a highlighted row would only mislead
        self.zebra_stripes = True
        for name, width in COLUMNS:
            label = Text(name, justify="left" if name == " state" else "right")
            self.add_column(label, key=name, width=width)

    def show(self, state: DashboardState, index: int) -> None:
        # Only as many rows as fit: a long recording has far too many for a DataTable.
        limit = max(self.size.height - 1, 1)
        rows = state.recent_requests(index, limit) if state.n_ticks else []
        self.clear()
        for r in rows:
            self.add_row(
                Text(str(r.request), justify="right"),
                Text(" " + r.state, style=STATE_STYLES.get(r.state.rstrip("*"), "")),
                Text(str(r.prompt_tokens), justify="right"),
                Text("…" if r.output_tokens is None else str(r.output_tokens), justify="right"),
                Text(fmt_s(r.ttft_s), justify="right"),
                Text(fmt_s(r.tpot_s), justify="right"),
                key=str(r.request),
            )
        self.border_subtitle = f"{state.counters(index)['arrived'] if state.n_ticks else 0} arrived"
