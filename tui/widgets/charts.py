"""Time-series bar charts: one column per bucket of ticks, min and max kept, current tick marked."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.strip import Strip

from tui.state import Series, series_fields
from tui.widgets.lines import LinesWidget, runs, text_lines
from tui.widgets.panel import Frame

EIGHTHS = " ▁▂▃▄▅▆▇█"
CURSOR = Style.parse("bold yellow on grey23")
NOT_LOADED = Style.parse("grey30")


def fmt_value(value: float) -> str:
    """Short human number: 950, 12.3k, 4.1M ("…" for a tick not read yet)."""
    if not np.isfinite(value):
        return "…"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"


@lru_cache(maxsize=64)
def _styles(color: str) -> tuple[Style, Style]:
    return Style.parse(color), Style.parse(f"{color} dim")


def bar_chart(series: Series, width: int, height: int, color: str) -> list[Strip]:
    """Bars `height` rows high; the part below each bucket's min solid, up to its max dim.

    Keeping the max visible is what stops a spike vanishing when many ticks share one column.
    A bucket of ticks not read yet shows as a dot on the baseline.
    """
    if height <= 0 or width <= 0:
        return []
    solid_style, dim_style = _styles(color)
    peak = series.peak if series.peak > 0 else 1.0
    scale = height * 8 / peak
    missing = np.isnan(series.hi[:width])
    hi = np.ceil(np.nan_to_num(series.hi[:width]) * scale).astype(int)
    lo = np.floor(np.nan_to_num(series.lo[:width]) * scale).astype(int)
    lines = []
    for row in range(height - 1, -1, -1):
        base = row * 8
        fill = np.clip(hi - base, 0, 8).tolist()
        solid = (lo >= base + 8).tolist()
        cells = []
        for col, f in enumerate(fill):
            if col == series.cursor_bucket:
                cells.append((EIGHTHS[f] if f else "│", CURSOR))
            elif row == 0 and missing[col]:
                cells.append(("·", NOT_LOADED))
            else:
                cells.append((EIGHTHS[f], solid_style if solid[col] else dim_style))
        lines.append(runs(cells))
    return lines


class SeriesChart(LinesWidget):
    """A labelled chart of one per-tick series over the whole recording known so far."""

    def __init__(self, label: str, series: str, color: str, unit: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = label
        self.series_name = series
        self.needs = series_fields(series)
        self.color = color
        self.unit = unit

    def show(self, frame: Frame) -> None:
        state, index = frame.state, frame.index
        width, height = self.size.width, self.size.height
        series = state.series(self.series_name, index, max(width, 1))
        now = float(state.values(self.series_name)[index]) if state.n_ticks else 0.0
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append(self.label, style=f"bold {self.color}")
        title.append(f"  now {fmt_value(now)}{self.unit}", style="bold")
        title.append(f"  peak {fmt_value(series.peak)}{self.unit}", style="dim")
        self.set_lines(text_lines(self.app.console, title, width) + bar_chart(series, width, height - 1, self.color))
