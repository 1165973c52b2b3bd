"""Experts x layers heatmap in half-block cells, with the load figures that matter under it."""

from __future__ import annotations

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.color import Color, Gradient
from textual.widgets import Static

from tui.state import expert_stats
from tui.widgets.panel import Panel

# Cold to hot; zero gets its own colour so an idle expert never reads as "a little load".
SCALE = Gradient((0.0, "#1f3b73"), (0.45, "#2aa198"), (0.75, "#e8c547"), (1.0, "#ff4d3d"))
IDLE = Color.parse("#262626")
GUTTER = 3  # layer numbers on the left
STATS_LINES = 2


def fit(counts: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale a [layers, experts] matrix to at most rows x cols cells, and each row's layer.

    Too many layers or experts: max-pool, so a hot expert never averages away. Too few: repeat
    cells, so a small model still fills the panel.
    """
    layers, experts = counts.shape
    rows, cols = max(rows, 1), max(cols, 1)
    ry = -(-layers // rows)
    rx = -(-experts // cols)
    pad = np.zeros((-(-layers // ry) * ry, -(-experts // rx) * rx), dtype=np.float64)
    pad[:layers, :experts] = counts
    grid = pad.reshape(pad.shape[0] // ry, ry, pad.shape[1] // rx, rx).max(axis=(1, 3))
    first_layer = np.arange(grid.shape[0]) * ry
    up_y = max(rows // grid.shape[0], 1)
    up_x = max(cols // grid.shape[1], 1)
    grid = np.repeat(np.repeat(grid, up_y, axis=0), up_x, axis=1)
    return grid, np.repeat(first_layer, up_y)


def cell_color(value: float, peak: float) -> Color:
    return IDLE if value <= 0 else SCALE.get_color(min(value / peak, 1.0))


def heatmap(counts: np.ndarray, width: int, height: int) -> Text:
    """Half-block rendering: each character is two cells, upper = foreground, lower = background."""
    text = Text(no_wrap=True, overflow="crop")
    if height <= 0 or width <= GUTTER:
        return text
    grid, layer_of_row = fit(counts, height * 2, width - GUTTER)
    peak = float(grid.max()) or 1.0
    shown = -1
    for r in range(0, grid.shape[0], 2):
        layer = int(layer_of_row[r])
        text.append(f"{layer:>2} " if layer != shown else "   ", style="dim")
        shown = layer
        upper = grid[r]
        lower = grid[r + 1] if r + 1 < grid.shape[0] else None
        for c in range(grid.shape[1]):
            fg = cell_color(upper[c], peak).rich_color
            bg = cell_color(lower[c], peak).rich_color if lower is not None else None
            text.append("▀", Style(color=fg, bgcolor=bg))
        if r + 2 < grid.shape[0]:
            text.append("\n")
    return text


def stats_text(counts: np.ndarray) -> Text:
    stats = expert_stats(counts)
    text = Text(no_wrap=True, overflow="ellipsis")
    for label, value in (
        ("active ", f"{stats.active_share:.0%}"),
        ("  max/mean ", f"{stats.imbalance:.2f}×"),
        ("  bal ", f"{stats.balancedness:.2f}"),
        ("\nidle ", f"{stats.idle_experts}"),
    ):
        text.append(label, style="dim")
        text.append(value, style="bold")
    text.append("  hot ", style="dim")
    text.append(" ".join(f"L{layer}E{expert}:{n:.0f}" for layer, expert, n in stats.hottest) or "—")
    return text


class ExpertHeatmap(Panel, Static):
    """Tokens routed to each expert (columns) of each layer (rows) in the current tick or span."""

    def show(self, counts: np.ndarray | None, what: str) -> None:
        self.border_subtitle = what
        if counts is None:
            self.update(Text("no expert load for this tick", style="dim italic"))
            return
        counts = np.asarray(counts, dtype=np.float64)
        if counts.ndim != 2 or counts.size == 0:
            self.update(Text(f"expert load of unexpected shape {counts.shape}", style="red"))
            return
        width, height = self.size.width, self.size.height
        rows = max(height - STATS_LINES, 1)
        frame = Text("\n").join([heatmap(counts, width, rows), stats_text(counts)])
        frame.no_wrap, frame.overflow = True, "ellipsis"
        self.update(frame)
