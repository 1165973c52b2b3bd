"""Widgets that draw precomputed lines (Textual's line API).

A frame of the dashboard redraws every panel; building Rich `Text` with a span per cell and letting
Textual convert it costs milliseconds a panel. These widgets are handed ready `Strip`s, made of
runs of same-styled cells, and only repaint (never re-layout) when a new frame comes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip
from textual.widget import Widget

from tui.widgets.panel import Panel


def runs(cells: Iterable[tuple[str, Style]]) -> Strip:
    """One line from (character, style) cells, neighbours of one style merged into one segment."""
    segments: list[Segment] = []
    chars: list[str] = []
    current: Style | None = None
    for char, style in cells:
        if style is not current and style != current:
            if chars:
                segments.append(Segment("".join(chars), current))
            chars, current = [], style
        chars.append(char)
    if chars:
        segments.append(Segment("".join(chars), current))
    return Strip(segments)


def text_lines(console: Console, text: Text, width: int) -> list[Strip]:
    """Rich text (a few short lines: titles, figures) as strips cut to `width`."""
    options = console.options.update(width=max(width, 1), no_wrap=True, overflow="ellipsis", height=None)
    return [Strip(line) for line in console.render_lines(text, options, pad=False, new_lines=False)]


class LinesWidget(Panel, Widget):
    """Shows the strips last given to `set_lines`, cropped or padded to its width."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lines: list[Strip] = []

    def set_lines(self, lines: list[Strip]) -> None:
        self._lines = lines
        self.refresh()

    def set_text(self, text: Text) -> None:
        self.set_lines(text_lines(self.app.console, text, self.size.width))

    def show_missing(self, line: str) -> None:
        self.set_text(Text(line, style="dim italic", no_wrap=False))

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y >= len(self._lines):
            return Strip.blank(width, self.rich_style)
        line = self._lines[y]
        if line.cell_length == width:
            # As it is: crop_extend would keep the strip in its own cache, one more cycle for the
            # garbage collector per line per frame.
            return line
        return line.crop_extend(0, width, self.rich_style)
