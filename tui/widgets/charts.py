"""Time-series bar charts: one column per bucket of ticks, min and max kept, current tick marked."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.widgets import Static

from tui.state import DashboardState, Series
from tui.widgets.panel import Panel

EIGHTHS = " ▁▂▃▄▅▆▇█"


def fmt_value(value: float) -> str:
    """Short human number: 950, 12.3k, 4.1M."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"


def bar_chart(series: Series, width: int, height: int, color: str) -> Text:
    """Bars `height` rows high; the part below each bucket's min solid, up to its max dim.

    Keeping the max visible is what stops a spike vanishing when many ticks share one column.
    """
    text = Text(no_wrap=True, overflow="crop")
    if height <= 0 or width <= 0:
        return text
    peak = series.peak if series.peak > 0 else 1.0
    scale = height * 8 / peak
    hi = np.ceil(series.hi[:width] * scale).astype(int)
    lo = np.floor(series.lo[:width] * scale).astype(int)
    for row in range(height - 1, -1, -1):
        base = row * 8
        for col in range(len(hi)):
            fill = int(min(max(hi[col] - base, 0), 8))
            solid = lo[col] >= base + 8
            style = color if solid else f"{color} dim"
            if col == series.cursor_bucket:
                style = "bold yellow on grey23"
            text.append(EIGHTHS[fill] if fill or col != series.cursor_bucket else "│", style)
        if row:
            text.append("\n")
    return text


class SeriesChart(Panel, Static):
    """A labelled chart of one per-tick series over the whole recording known so far."""

    def __init__(self, label: str, series: str, color: str, unit: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.label = label
        self.series_name = series
        self.color = color
        self.unit = unit

    def show(self, state: DashboardState, index: int) -> None:
        width, height = self.size.width, self.size.height
        series = state.series(self.series_name, index, max(width, 1))
        now = float(state.values(self.series_name)[index]) if state.n_ticks else 0.0
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append(self.label, style=f"bold {self.color}")
        title.append(f"  now {fmt_value(now)}{self.unit}", style="bold")
        title.append(f"  peak {fmt_value(series.peak)}{self.unit}", style="dim")
        chart = bar_chart(series, width, height - 1, self.color)
        frame = Text("\n").join([title, chart]) if height > 1 else title
        frame.no_wrap = True
        self.update(frame)
