"""Replay controls: clickable buttons that call the app's actions, and the scrubber."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widgets import Static

from tui.playback import PlaybackApp

# Each control runs the same action as its key binding, so mouse and keyboard cannot drift apart.
BUTTONS = (
    ("⏮", "app.jump_start"),
    ("◀", "app.step(-1)"),
    ("⏯", "app.toggle_play"),
    ("▶", "app.step(1)"),
    ("⏭", "app.jump_end"),
    ("−", "app.slower"),
    ("+", "app.faster"),
)


MARK_STYLE = "magenta"
BOTH_STYLE = "bold yellow"  # marks of different kinds (compare: both recordings) in one column


class ControlButtons(Static):
    def on_mount(self) -> None:
        parts = [Content.from_markup(f"[@click='{action}'] {glyph} [/]") for glyph, action in BUTTONS]
        self.update(Content("").join(parts))


class Scrubber(Static):
    """Where the current tick sits in the whole recording; marks shown, click to seek."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._bar_width = 0  # columns of the bar itself, for turning a click into a position

    def show(self, index: int, total: int, marks: Iterable[tuple[int, str]], label: str) -> None:
        """`marks` as (position, style), positions in the units of `index` (0 .. total-1)."""
        width = max(self.size.width - len(label) - 1, 4)
        scale = (width - 1) / max(total - 1, 1)
        pos = int(index * scale) if total else 0
        styles: dict[int, str] = {}
        for at, style in marks:
            if 0 <= at < total:
                column = int(at * scale)
                # two kinds of mark in one column: say so rather than hide one
                styles[column] = style if styles.get(column, style) == style else BOTH_STYLE
        text = Text(no_wrap=True, overflow="crop")
        for col in range(width):
            if col == pos:
                text.append("●", style="bold yellow")
            elif col in styles:
                text.append("◆", style=styles[col])
            elif col < pos:
                text.append("━", style="cyan")
            else:
                text.append("─", style="dim")
        text.append(" " + label, style="bold")
        self._bar_width = width
        self.update(text, layout=False)  # one line, always: no relayout per frame

    def on_click(self, event: events.Click) -> None:
        if self._bar_width and 0 <= event.x < self._bar_width:
            app = self.app
            assert isinstance(app, PlaybackApp)  # only the playback apps mount a scrubber
            app.action_seek_fraction(event.x / max(self._bar_width - 1, 1))


class ReplayControls(Horizontal):
    def compose(self) -> ComposeResult:
        yield ControlButtons(id="buttons")
        yield Scrubber(id="scrubber")
