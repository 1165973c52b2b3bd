"""Pipeline stages x time for one tick: compute cells, warmup, drain and bubbles.

The timeline is modelled (one device ran the cells in turn; shown as they would run on one device
per stage) or measured (one process per stage, on rank 0's clock): the panel says which.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.strip import Strip

from tracer.events import StageEvent
from tui.state import stage_stats
from tui.widgets.lines import LinesWidget, runs
from tui.widgets.panel import Frame

# Micro-batches alternate colours so neighbouring cells stay apart.
CELL_COLORS = ("#4e9fd1", "#7fc97f", "#beaed4", "#fdc086", "#f0027f", "#bf5b17")
WARMUP = ("╌", "#5f87af")
DRAIN = ("╌", "#af5f87")
BUBBLE = ("░", "#d75f5f")
GUTTER = 4


def gantt(stages: StageEvent, width: int, height: int) -> list[Strip]:
    """Stages down (as many lines each as fit; stages past the height left out), time across,
    and where there is room a last line with the time scale and what the glyphs mean."""
    start = np.asarray(stages.modelled_start_ns, dtype=np.int64)
    end = np.asarray(stages.modelled_end_ns, dtype=np.int64)
    cols = width - GUTTER
    if start.size == 0 or cols <= 0 or height <= 0:
        return []
    t0, t1 = int(start.min()), int(end.max())
    span = max(t1 - t0, 1)
    axis = height > start.shape[0]
    per_stage = max((height - axis) // start.shape[0], 1)
    lines = []
    for s in range(min(start.shape[0], height)):
        row = [(" ", _style(""))] * cols
        first = int((start[s].min() - t0) * cols / span)
        last = int(np.ceil((end[s].max() - t0) * cols / span))
        row[:first] = [_cell(WARMUP)] * first
        row[last:] = [_cell(DRAIN)] * (cols - last)
        row[first:last] = [_cell(BUBBLE)] * (last - first)
        for m in range(start.shape[1]):
            a = int((start[s, m] - t0) * cols / span)
            b = max(int(np.ceil((end[s, m] - t0) * cols / span)), a + 1)
            row[a:b] = [_cell(("█", CELL_COLORS[m % len(CELL_COLORS)]))] * (b - a)
        for i in range(per_stage):
            gutter = f"S{s:<2} " if i == per_stage // 2 else " " * GUTTER
            lines.append(runs([(c, _style("dim")) for c in gutter] + row[:cols]))
    if axis:
        lines.append(runs(key(span, cols)))
    return lines


def key(span_ns: int, cols: int) -> list[tuple[str, Style]]:
    """The time scale under the rows (0 to the tick's makespan) with the glyphs' meaning."""
    dim = _style("dim")
    end = f"{span_ns / 1e6:.2f} ms"
    parts = [
        ("micro-batch ", dim),
        ("█", _style(CELL_COLORS[0])),
        ("█", _style(CELL_COLORS[1])),
        (" warmup ", dim),
        _cell(WARMUP),
        (" drain ", dim),
        _cell(DRAIN),
        (" bubble ", dim),
        _cell(BUBBLE),
    ]
    legend = sum(len(text) for text, _ in parts)
    cells = [(c, dim) for c in " " * GUTTER + "0"]
    if cols - 1 - len(end) >= legend + 2:
        pad = cols - 1 - len(end) - legend
        cells += [(" ", dim)] * (pad // 2) + [(c, style) for text, style in parts for c in text]
        cells += [(" ", dim)] * (pad - pad // 2)
    else:
        cells += [(" ", dim)] * max(cols - 1 - len(end), 0)
    return cells + [(c, dim) for c in end]


@lru_cache(maxsize=64)
def _style(spec: str) -> Style:
    return Style.parse(spec) if spec else Style()


def _cell(glyph: tuple[str, str]) -> tuple[str, Style]:
    return glyph[0], _style(glyph[1])


class StageGantt(LinesWidget):
    """The modelled one-device-per-stage timeline of the current tick."""

    def show(self, frame: Frame) -> None:
        stages = frame.stages
        if stages is None:
            self.border_subtitle = ""
            self.set_text(Text("no stage timings in this trace / tick", style="dim italic"))
            return
        stats = stage_stats(stages)
        kind = "modelled" if stages.modelled else "measured"
        self.border_subtitle = (
            f"{kind} · {stats.makespan_ns / 1e6:.2f} ms · idle {stats.idle_share:.0%} "
            f"(warmup {stats.warmup_ns / 1e6:.2f} drain {stats.drain_ns / 1e6:.2f} "
            f"bubble {stats.bubble_ns / 1e6:.2f} ms)"
        )
        self.set_lines(gantt(stages, self.size.width, self.size.height))
