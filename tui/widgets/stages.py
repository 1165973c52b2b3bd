"""Pipeline stages x time for one tick: compute cells, warmup, drain and bubbles."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.widgets import Static

from tracer.events import StageEvent
from tui.state import stage_stats
from tui.widgets.panel import Panel

# Micro-batches alternate colours so neighbouring cells stay apart.
CELL_COLORS = ("#4e9fd1", "#7fc97f", "#beaed4", "#fdc086", "#f0027f", "#bf5b17")
WARMUP = ("╌", "#5f87af")
DRAIN = ("╌", "#af5f87")
BUBBLE = ("░", "#d75f5f")
GUTTER = 4


def gantt(stages: StageEvent, width: int, height: int) -> Text:
    """One row per stage (pooled if there are more stages than rows), time across."""
    start = np.asarray(stages.modelled_start_ns, dtype=np.int64)
    end = np.asarray(stages.modelled_end_ns, dtype=np.int64)
    text = Text(no_wrap=True, overflow="crop")
    cols = width - GUTTER
    if start.size == 0 or cols <= 0 or height <= 0:
        return text
    t0, t1 = int(start.min()), int(end.max())
    span = max(t1 - t0, 1)
    for s in range(min(start.shape[0], height)):
        row = [(" ", "")] * cols
        first = int((start[s].min() - t0) * cols / span)
        last = int(np.ceil((end[s].max() - t0) * cols / span))
        row[:first] = [WARMUP] * first
        row[last:] = [DRAIN] * (cols - last)
        row[first:last] = [BUBBLE] * (last - first)
        for m in range(start.shape[1]):
            a = int((start[s, m] - t0) * cols / span)
            b = max(int(np.ceil((end[s, m] - t0) * cols / span)), a + 1)
            row[a:b] = [("█", CELL_COLORS[m % len(CELL_COLORS)])] * (b - a)
        text.append(f"S{s:<2} ", style="dim")
        for char, color in row[:cols]:
            text.append(char, style=color)
        if s + 1 < min(start.shape[0], height):
            text.append("\n")
    return text


class StageGantt(Panel, Static):
    """The modelled one-device-per-stage timeline of the current tick."""

    def show(self, stages: StageEvent | None) -> None:
        if stages is None:
            self.border_subtitle = ""
            self.update(Text("no stage timings in this trace / tick", style="dim italic"))
            return
        stats = stage_stats(stages)
        kind = "modelled" if stages.modelled else "measured"
        self.border_subtitle = (
            f"{kind} · {stats.makespan_ns / 1e6:.2f} ms · idle {stats.idle_share:.0%} "
            f"(warmup {stats.warmup_ns / 1e6:.2f} drain {stats.drain_ns / 1e6:.2f} "
            f"bubble {stats.bubble_ns / 1e6:.2f} ms)"
        )
        self.update(gantt(stages, self.size.width, self.size.height))
