"""The recent-requests table: a window of the latest arrivals, never every row of the recording.

Focus it (`r`, Tab or a click) to pick a request with the arrow keys; enter or a click opens its
timeline as of the tick the table shows. Left/right, home/end and space stay the app's playback
keys even while it has focus.
Drawn as lines (not a DataTable): it is redrawn on every frame of a replay.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.strip import Strip

from tui.screens.request import RequestScreen
from tui.state import RequestRow
from tui.widgets.lines import LinesWidget, runs
from tui.widgets.panel import Frame
from tui.widgets.stats import fmt_s

STATE_STYLES = {
    "finished": "green",
    "rejected": "bold red",
    "cancelled": "red",
    "decode": "cyan",
    "prefill": "blue",
    "queued": "yellow",
}
# Column widths (numbers right-aligned to them).
COLUMNS = (("id", 5), (" state", 10), ("prompt", 6), ("out", 5), ("TTFT", 8), ("TPOT", 8))
FULL_WIDTH = sum(width for _, width in COLUMNS)
# Narrower than every column (the panel at 80 columns, or a compare side) the prompt length goes,
# so TPOT is not cut off: it never changes over a request's life, and its timeline shows it.
NARROW_DROP = "prompt"
HEADER = Style.parse("bold")
ZEBRA = Style.parse("on #1c1c1c")
CURSOR = Style.parse("reverse")


@lru_cache(maxsize=256)
def _style(spec: str, background: Style | None) -> Style:
    style = Style.parse(spec) if spec else Style()
    return style + background if background is not None else style


def shown_columns(width: int) -> tuple[int, ...]:
    """Indices of the COLUMNS a table `width` cells wide shows."""
    return tuple(i for i, (name, _) in enumerate(COLUMNS) if width >= FULL_WIDTH or name != NARROW_DROP)


def cells(row: RequestRow, shown: tuple[int, ...]) -> list[tuple[str, str]]:
    """The row's `shown` columns as (text, style), padded to the column widths."""
    values = (
        (str(row.request), ""),
        (" " + row.state, STATE_STYLES.get(row.state.rstrip("*"), "")),
        (str(row.prompt_tokens), ""),
        ("…" if row.output_tokens is None else str(row.output_tokens), ""),
        (fmt_s(row.ttft_s), ""),
        (fmt_s(row.tpot_s), ""),
    )
    out = []
    for i in shown:
        (name, width), (text, style) = COLUMNS[i], values[i]
        text = text[:width]
        out.append((text.ljust(width) if name == " state" else text.rjust(width), style))
    return out


def line(parts: list[tuple[str, str]], background: Style | None) -> Strip:
    return runs((char, _style(style, background)) for text, style in parts for char in text)


class RequestTable(LinesWidget):
    """The most recent requests as they stood at the current tick."""

    needs = ("requests",)

    can_focus = True
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("enter", "choose", "Timeline"),
        Binding("escape", "leave", "Leave table"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rows: list[RequestRow] = []
        self._cursor = 0
        self._picked: int | None = None  # the request under the cursor, kept across frames
        self._frame: Frame | None = None  # the frame shown: whose requests, and as of when

    @property
    def picked(self) -> int | None:
        return self._picked if self.has_focus else None

    def show(self, frame: Frame) -> None:
        state, index = frame.state, frame.index
        self._frame = frame
        # Only as many rows as fit: a long recording has far too many to list.
        limit = max(self.size.height - 1, 1)
        self._rows = state.recent_requests(index, limit) if state.n_ticks else []
        ids = [r.request for r in self._rows]
        if self._picked in ids:  # stay on the picked request while it is in view...
            self._cursor = ids.index(self._picked)
        else:  # ...else on the same line
            self._cursor = min(self._cursor, max(len(ids) - 1, 0))
        self._draw()
        self.border_subtitle = f"{state.counters(index)['arrived'] if state.n_ticks else 0} arrived"

    def _draw(self) -> None:
        shown = shown_columns(self.size.width)
        header = []
        for name, width in (COLUMNS[i] for i in shown):
            header.append((name.rjust(width) if name != " state" else name.ljust(width), "bold"))
        lines = [line(header, None)]
        for i, row in enumerate(self._rows):
            background = CURSOR if self.has_focus and i == self._cursor else ZEBRA if i % 2 else None
            lines.append(line(cells(row, shown), background))
        self.set_lines(lines)

    def _pick(self, cursor: int) -> None:
        if self._rows:
            self._cursor = min(max(cursor, 0), len(self._rows) - 1)
            self._picked = self._rows[self._cursor].request
        self._draw()

    def on_focus(self) -> None:
        self._pick(self._cursor)

    def on_blur(self) -> None:
        self._draw()

    def action_cursor(self, delta: int) -> None:
        self._pick(self._cursor + delta)

    def action_choose(self) -> None:
        if not self._rows or self._frame is None:
            return
        state, index = self._frame.state, self._frame.index
        life = state.request_life(self._rows[self._cursor].request)
        if life is not None:
            self.app.push_screen(RequestScreen(life, state.time_at(index)))

    def action_leave(self) -> None:
        self.screen.set_focus(None)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is not None and 1 <= offset.y <= len(self._rows):
            self.focus()
            self._pick(offset.y - 1)
            self.action_choose()
