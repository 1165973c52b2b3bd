"""Compare mode's controls: the dashboard's buttons, and a scrubber that shows both recordings' marks.

A's marks are drawn in A's colour and B's in B's (the colours of the compare header), so a note
on the scrubber says whose it is before `[` / `]` jumps to it.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from tui.widgets.controls import ControlButtons

SIDE_STYLES = {"A": "bold cyan", "B": "bold magenta"}  # as the compare header names them


class CompareScrubber(Static):
    """Where the shared position sits; each side's marks shown, click to seek."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._bar_width = 0  # columns of the bar itself, for turning a click into a position

    def show(self, position: int, total: int, marks: list[tuple[int, str]], label: str) -> None:
        """`marks` as (position, "A" or "B"), in the same units as `position` (0 .. total-1)."""
        width = max(self.size.width - len(label) - 1, 4)
        scale = (width - 1) / max(total - 1, 1)
        pos = int(position * scale) if total else 0
        columns: dict[int, str] = {}
        for at, side in marks:
            if 0 <= at < total:
                column = int(at * scale)
                # both sides marked the same column: say so rather than hide one
                columns[column] = side if columns.get(column, side) == side else "AB"
        text = Text(no_wrap=True, overflow="crop")
        for col in range(width):
            side = columns.get(col)
            if col == pos:
                text.append("●", style="bold yellow")
            elif side is not None:
                text.append("◆", style=SIDE_STYLES.get(side, "bold yellow"))
            elif col < pos:
                text.append("━", style="cyan")
            else:
                text.append("─", style="dim")
        text.append(" " + label, style="bold")
        self._bar_width = width
        self.update(text, layout=False)  # one line, always: no relayout per frame

    def on_click(self, event: events.Click) -> None:
        if self._bar_width and 0 <= event.x < self._bar_width:
            self.app.action_seek_fraction(event.x / max(self._bar_width - 1, 1))  # type: ignore[attr-defined]


class CompareControls(Horizontal):
    def compose(self) -> ComposeResult:
        yield ControlButtons(id="buttons")
        yield CompareScrubber(id="scrubber")
