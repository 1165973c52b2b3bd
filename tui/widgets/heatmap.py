"""Experts x layers heatmap in half-block cells, with the load figures that matter under it."""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np
from rich.color import Color as RichColor
from rich.style import Style
from rich.text import Text
from textual.color import Color, Gradient
from textual.strip import Strip

from tui.state import ExpertStats, expert_stats
from tui.widgets.lines import LinesWidget, runs, text_lines
from tui.widgets.panel import Frame

# Cold to hot; zero gets its own colour so an idle expert never reads as "a little load".
SCALE = Gradient((0.0, "#1f3b73"), (0.45, "#2aa198"), (0.75, "#e8c547"), (1.0, "#ff4d3d"))
IDLE = Color.parse("#262626")
LEVELS = 48  # colour steps: finer than the eye tells apart in a cell, few enough to cache styles
GUTTER = 3  # layer numbers on the left
GUTTER_STYLE = Style.parse("dim")


def fit(counts: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale a [layers, experts] matrix to at most rows x cols cells; each row's first layer and
    each column's first expert.

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
    first_expert = np.arange(grid.shape[1]) * rx
    up_y = max(rows // grid.shape[0], 1)
    up_x = max(cols // grid.shape[1], 1)
    grid = np.repeat(np.repeat(grid, up_y, axis=0), up_x, axis=1)
    return grid, np.repeat(first_layer, up_y), np.repeat(first_expert, up_x)


@cache
def _level_color(level: int) -> RichColor:
    """Level 0 is idle; 1..LEVELS spread over the scale."""
    return (IDLE if level == 0 else SCALE.get_color((level - 1) / (LEVELS - 1))).rich_color


@lru_cache(maxsize=4096)
def _cell_style(upper: int, lower: int) -> Style:
    return Style(color=_level_color(upper), bgcolor=_level_color(lower) if lower >= 0 else None)


def levels(grid: np.ndarray, peak: float) -> np.ndarray:
    scaled = 1 + np.ceil(np.clip(grid / peak, 0, 1) * (LEVELS - 1)).astype(int)
    return np.where(grid > 0, np.minimum(scaled, LEVELS), 0)


def heatmap(counts: np.ndarray, width: int, height: int, *, labels: bool = False) -> list[Strip]:
    """Half-block rendering: each character is two cells, upper = foreground, lower = background.

    Each layer is named once, on the middle line of its rows; with `labels`, a first line names
    the experts above their columns (as many as fit, a space apart).
    """
    if height <= int(labels) or width <= GUTTER:
        return []
    grid, layer_of_row, expert_of_col = fit(counts, (height - int(labels)) * 2, width - GUTTER)
    lv = levels(grid, float(grid.max()) or 1.0)
    lines = [expert_labels(expert_of_col)] if labels else []
    line_layer = layer_of_row[::2]
    for i, r in enumerate(range(0, grid.shape[0], 2)):
        layer = int(line_layer[i])
        same = np.flatnonzero(line_layer == layer)
        gutter = f"{layer:>2} " if i == same[len(same) // 2] else "   "
        upper = lv[r].tolist()
        lower = lv[r + 1].tolist() if r + 1 < grid.shape[0] else [-1] * len(upper)
        cells = [(c, GUTTER_STYLE) for c in gutter]
        cells += [("▀", _cell_style(u, d)) for u, d in zip(upper, lower)]
        lines.append(runs(cells))
    return lines


def expert_labels(expert_of_col: np.ndarray) -> Strip:
    """Expert numbers over the columns where each expert's cells start, skipping any that would
    touch the previous label."""
    chars = [" "] * (GUTTER + len(expert_of_col))
    chars[:GUTTER] = "E".ljust(GUTTER)
    free = GUTTER
    for col in np.flatnonzero(np.diff(expert_of_col, prepend=-1)).tolist():
        label = str(int(expert_of_col[col]))
        at = GUTTER + col
        if at >= free and at + len(label) <= len(chars):
            chars[at : at + len(label)] = label
            free = at + len(label) + 1
    return runs((c, GUTTER_STYLE) for c in chars)


def legend(peak: float, width: int) -> Strip:
    """The colour scale: idle, then one token up to the map's peak."""
    steps = max(min(width - GUTTER - 24, 32), 4)
    cells = [(c, GUTTER_STYLE) for c in " " * GUTTER + "idle "]
    cells.append(("█", Style(color=_level_color(0))))
    cells += [(c, GUTTER_STYLE) for c in "  low "]
    cells += [("█", Style(color=_level_color(1 + round(i * (LEVELS - 1) / (steps - 1))))) for i in range(steps)]
    cells += [(c, GUTTER_STYLE) for c in f" {peak:.3g} tokens"]
    return runs(cells)


def stats_text(stats: ExpertStats, span: bool, per_layer: bool) -> Text:
    """The figures under the map. Over a span, an expert with no token in any of its ticks is
    "dead"; in one tick it is merely "idle"."""
    text = Text(no_wrap=True, overflow="ellipsis")
    for label, value in (
        ("active ", f"{stats.active_share:.0%}"),
        ("  max/mean ", f"{stats.imbalance:.2f}×"),
        ("  bal ", f"{stats.balancedness:.2f}"),
        ("\ndead " if span else "\nidle ", f"{stats.idle_experts}"),
    ):
        text.append(label, style="dim")
        text.append(value, style="bold red" if label.startswith("\ndead") and stats.idle_experts else "bold")
    text.append("  hot ", style="dim")
    text.append(" ".join(f"L{layer}E{expert}:{n:.3g}" for layer, expert, n in stats.hottest) or "—")
    if per_layer:
        text.append("\nhot by layer ", style="dim")
        hot = (f"{layer}:E{expert}" for layer, (expert, n) in enumerate(stats.hottest_per_layer) if n > 0)
        text.append(" ".join(hot) or "—")
    return text


def heat_label(span: int, index: int, experts: np.ndarray | None) -> str:
    """What the heatmap shows: the current tick, or the mean of the span's ticks held in memory
    (saying how many, when fewer than the span's ticks)."""
    if span == 1:
        return "current tick"
    wanted = min(span, index + 1)
    held = len(experts) if experts is not None and np.ndim(experts) == 3 else 0
    return f"mean of last {wanted} ticks" if held >= wanted else f"mean of {held} of last {wanted} ticks"


class ExpertHeatmap(LinesWidget):
    """Tokens routed to each expert (columns) of each layer (rows) in the current tick or span."""

    needs = ("experts",)

    def show(self, frame: Frame) -> None:
        """The frame's experts: one tick's [layers, experts], or a span's [ticks, layers, experts]
        stack (its mean is drawn; its figures are means over (tick, layer) cells, as summary gives
        them)."""
        counts = frame.experts
        what = heat_label(frame.heat_span, frame.index, counts)
        self.border_subtitle = what
        if counts is None:
            self.set_text(Text("no expert load for this tick", style="dim italic"))
            return
        stack = np.asarray(counts, dtype=np.float64)
        counts = stack.mean(axis=0) if stack.ndim == 3 else stack
        if counts.ndim != 2 or counts.size == 0:
            self.set_text(Text(f"expert load of unexpected shape {counts.shape}", style="red"))
            return
        width, height = self.size.width, self.size.height
        # The per-layer line, expert numbers and the colour scale only where there is room for
        # them beside a readable map.
        roomy = height >= 12
        stats = stats_text(expert_stats(stack), span=frame.heat_span > 1, per_layer=roomy)
        footer = text_lines(self.app.console, stats, width)
        if roomy:
            footer.insert(0, legend(float(counts.max()), width))
        rows = max(height - len(footer), 1)
        self.set_lines(heatmap(counts, width, rows, labels=rows >= 5) + footer)
