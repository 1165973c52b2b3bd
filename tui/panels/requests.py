"""The recent requests as they stood at the current tick, each one's timeline a key away."""

from __future__ import annotations

from tui.panels.spec import PanelSpec, one_widget
from tui.widgets.requests import RequestTable

HELP = """\
**recent requests** — the latest arrivals as they stood at the current tick: queued, prefill,
decode (`*` = preempted by then), finished, rejected, cancelled. Press `r` (or click a row) and pick
one with ↑ ↓ and enter to see its life as a timeline: arrival, admission, first token, every token,
preemptions and the end. In a long replay, columns drawn as dots are ticks not read yet."""

PANEL = PanelSpec("requests", "recent requests", HELP, one_widget(RequestTable))
