"""Replay controls: clickable buttons that call the app's actions, and the scrubber."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widgets import Static

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


class ControlButtons(Static):
    def on_mount(self) -> None:
        parts = [Content.from_markup(f"[@click='{action}'] {glyph} [/]") for glyph, action in BUTTONS]
        self.update(Content("").join(parts))


class Scrubber(Static):
    """Where the current tick sits in the whole recording; marks shown, click to seek."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._bar_width = 0  # columns of the bar itself, for turning a click into a position

    def show(self, index: int, total: int, mark_ticks: list[int], label: str) -> None:
        width = max(self.size.width - len(label) - 1, 4)
        text = Text(no_wrap=True, overflow="crop")
        pos = int(index * (width - 1) / max(total - 1, 1)) if total else 0
        marks = {int(m * (width - 1) / max(total - 1, 1)) for m in mark_ticks if 0 <= m < total}
        for col in range(width):
            if col == pos:
                text.append("●", style="bold yellow")
            elif col in marks:
                text.append("◆", style="magenta")
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


class ReplayControls(Horizontal):
    def compose(self) -> ComposeResult:
        yield ControlButtons(id="buttons")
        yield Scrubber(id="scrubber")
